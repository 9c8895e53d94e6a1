"""forgrepro.metrics.mmtt against restatements of the official ForgeryTalker evaluation code.

`_official_*` helpers restate, from reading them, `scripts/evaluation/evaluate_metrics.py` (text + masks),
`lavis/tasks/pycocoeval.py` (METEOR), `lavis/tasks/captioning.py::valid_step` (in-training mask metrics) and
`scripts/data_preparation/to_mutilabel.py` (region regex) of NattyLianJc/Generating-Attribution-Reports.
"""
import math
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from forgrepro.data.mmtt import FACIAL_SYNONYMS as _REGION_SYNONYMS, REGIONS as _REGIONS
from forgrepro.metrics.mmtt import (SPICE_NOTE, stop_meteor, _caption_to_multilabel,
                                    binarize_gt_mask, caption_metrics, load_gt_mask, mask_metrics,
                                    official_mask_metrics, plm, region_f1, resize_mask_nearest,
                                    summarize_mask_metrics, training_mask_metrics)

torch.set_num_threads(1)
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")

REFS = {
    "a1": "The eyes look blurred and the skin around them is unnaturally smooth.",
    "b2": "The mouth was replaced; the teeth are misaligned and the lips lack texture.",
    "c3": "Hair strands at the forehead blend into the background.",
    7: "The nose is asymmetric, with a shadow that does not match the lighting.",
}
PREDS = {
    "a1": "The eyes are blurred, and the skin is too smooth.",
    "b2": "The mouth looks edited; the teeth are odd.",
    "c3": "The hair near the forehead blends into the background.",
    7: "The nose looks natural.",
}


# ---------------------------------------------------------------- captions
def _official_text_metrics(gts_text, res_text, meteor=True):
    """evaluate_metrics.py::evaluate_text (+ Meteor as in lavis/tasks/pycocoeval.py)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts_text), tok.tokenize(res_text)
    scorers = [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]
    if meteor:
        scorers.append((Meteor(), "METEOR"))
    out = {}
    for scorer, method in scorers:
        score, _ = scorer.compute_score(gts, res)
        if method == "METEOR": stop_meteor(scorer)
        if isinstance(method, list):
            out.update({m: float(s) for s, m in zip(score, method)})
        else:
            out[method] = float(score)
    return out


@needs_java
def test_caption_metrics_match_official_pipeline_with_meteor():
    ours = caption_metrics(PREDS, REFS)
    official = _official_text_metrics({k: [{"caption": v}] for k, v in REFS.items()},
                                      {k: [{"caption": v}] for k, v in PREDS.items()})
    for a, b in [("BLEU-1", "Bleu_1"), ("BLEU-2", "Bleu_2"), ("BLEU-3", "Bleu_3"), ("BLEU-4", "Bleu_4"),
                 ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE_L"), ("CIDEr", "CIDEr")]:
        assert ours[a] == pytest.approx(100 * official[b], rel=1e-12), a
    assert 0 < ours["METEOR"] < 100 and ours["SPICE"] is None and ours["N"] == 4
    assert "download" in SPICE_NOTE


@needs_java
def test_identical_captions_score_full_marks_including_meteor():
    m = caption_metrics(REFS, REFS)
    for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "METEOR"):
        assert m[k] == pytest.approx(100, abs=1e-5), k
    assert m["CIDEr"] > 100  # CIDEr-D of exact copies over distinct images is well above 1 (×100)


@needs_java
def test_hand_computed_bleu1_and_rouge_l():
    m = caption_metrics({0: "the eyes are blurred"}, {0: ["the eyes are sharp"]}, meteor=False)
    # 3 of 4 unigrams match, equal lengths (no brevity penalty); LCS 3 of 4 words both ways
    assert m["BLEU-1"] == pytest.approx(75, abs=1e-5)
    assert m["ROUGE-L"] == pytest.approx(75)
    assert m["CIDEr"] == 0.0  # single-image corpus: every n-gram has idf log(1/1) = 0


@needs_java
def test_newlines_and_multiple_references():
    a = caption_metrics({1: "the eyes\nare blurred", 2: "a b c"}, {1: "the eyes are blurred", 2: "a b c"}, meteor=False)
    assert a["BLEU-4"] == pytest.approx(100, abs=1e-5)  # the newline did not shift caption 2 onto id 1
    multi = caption_metrics({1: "the nose is odd"}, {1: ["a totally different text", "the nose is odd"]}, meteor=False)
    assert multi["BLEU-1"] == pytest.approx(100, abs=1e-5) and multi["ROUGE-L"] == pytest.approx(100)


@needs_java
def test_id_mismatch_is_an_error_unless_common_ids_only():
    with pytest.raises(ValueError, match="missing predictions"):
        caption_metrics({"a1": "x"}, REFS, meteor=False)
    with pytest.raises(ValueError, match="unexpected predictions"):
        caption_metrics({**PREDS, "zz": "x"}, REFS, meteor=False)
    sub = caption_metrics({"a1": PREDS["a1"], "zz": "x"}, REFS, meteor=False, common_ids_only=True)
    alone = caption_metrics({"a1": PREDS["a1"]}, {"a1": REFS["a1"]}, meteor=False)
    assert sub == alone and sub["N"] == 1


# ---------------------------------------------------------------- masks
def _official_evaluate_masks(pred_path, gt_path):
    """evaluate_metrics.py::evaluate_masks."""
    gt_img = Image.open(gt_path).convert("L")
    gt = np.array(gt_img) > 127
    pred = np.array(Image.open(pred_path).convert("L").resize(gt_img.size, Image.NEAREST)) > 127
    inter, union = np.logical_and(pred, gt).sum(), np.logical_or(pred, gt).sum()
    ps, gs = pred.sum(), gt.sum()
    iou = 1.0 if union == 0 else float(inter / union)
    precision = float(inter / ps) if ps > 0 else (1.0 if gs == 0 else 0.0)
    recall = float(inter / gs) if gs > 0 else (1.0 if ps == 0 else 0.0)
    return iou, precision, recall


def _official_save_mask(prob: torch.Tensor, path):
    """evaluate.py::save_mask: (p > 0.5) * 255 as an 8-bit PNG."""
    Image.fromarray((prob.numpy() > 0.5).astype(np.uint8) * 255, mode="L").save(path)


def test_official_mask_protocol_matches_file_based_official(tmp_path):
    g = torch.Generator().manual_seed(0)
    sizes = [(512, 512), (517, 300), (224, 224), (90, 100), (512, 512), (333, 777)]  # PIL (W, H)
    probs = torch.rand(len(sizes), 224, 224, generator=g)
    probs = torch.nn.functional.avg_pool2d(probs[:, None], 15, 1, 7)[:, 0]  # blobby masks
    probs[3] = 0.2  # empty prediction
    gts, official = [], []
    for i, (w, h) in enumerate(sizes):
        gt = np.zeros((h, w), np.uint8)
        if i != 4:  # image 4: empty GT (an untouched face)
            gt[h // 4: 3 * h // 4, w // 5: w // 2] = 255
            gt[:10, :10] = 120  # grey below the 127 cut
        gt_path, pred_path = tmp_path / f"gt{i}.png", tmp_path / f"pred{i}.png"
        Image.fromarray(gt, mode="L").save(gt_path)
        _official_save_mask(probs[i], pred_path)
        official.append(_official_evaluate_masks(pred_path, gt_path))
        gts.append(load_gt_mask(gt_path))
    ours = official_mask_metrics(probs, gts)
    np.testing.assert_allclose(torch.stack([ours["iou"], ours["precision"], ours["recall"]], 1).numpy(),
                               np.array(official), rtol=0, atol=1e-12)
    summary = summarize_mask_metrics(ours)
    assert summary["mIoU"] == pytest.approx(100 * np.mean([o[0] for o in official]))
    # logits give the same decisions
    logit_res = official_mask_metrics(torch.logit(probs.clamp(1e-6, 1 - 1e-6)), gts, from_logits=True)
    assert torch.equal(logit_res["iou"], ours["iou"])


def test_resize_mask_nearest_is_pil_exact():
    rng = np.random.default_rng(1)
    for _ in range(60):
        h, w = rng.integers(1, 240, 2)
        H, W = rng.integers(1, 900, 2)
        m = rng.integers(0, 256, (h, w)).astype(np.uint8)
        pil = np.array(Image.fromarray(m, mode="L").resize((int(W), int(H)), Image.NEAREST))
        ours = resize_mask_nearest(torch.from_numpy(m)[None], (int(H), int(W)))[0].numpy()
        np.testing.assert_array_equal(ours, pil)


def test_mask_empty_rules():
    z, o = torch.zeros(1, 4, 4, dtype=torch.bool), torch.ones(1, 4, 4, dtype=torch.bool)
    both_empty = mask_metrics(z, z)
    assert [v.item() for v in both_empty.values()] == [1.0, 1.0, 1.0]
    miss = mask_metrics(z, o)  # nothing predicted on a forged face
    assert [v.item() for v in miss.values()] == [0.0, 0.0, 0.0]
    false_alarm = mask_metrics(o, z)  # something predicted on an untouched face
    assert [v.item() for v in false_alarm.values()] == [0.0, 0.0, 0.0]
    assert math.isnan(summarize_mask_metrics(mask_metrics(z[:0], z[:0]))["mIoU"])


def test_mask_inputs_are_validated():
    with pytest.raises(ValueError, match="differ in shape"):
        mask_metrics(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(TypeError, match="bool or uint8"):
        binarize_gt_mask(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="2 predictions but 1 GT masks"):
        official_mask_metrics(torch.zeros(2, 4, 4), [np.zeros((4, 4), np.uint8)])
    assert binarize_gt_mask(Image.new("RGB", (3, 2), (200, 200, 200))).all()  # RGB read as 'L'


def _official_training_metrics(pred, true_mask, thresholds=(0.1, 0.3, 0.5, 0.7, 0.9)):
    """captioning.py::valid_step segmentation block (iou with SMOOTH, DiceCoeff per example, pooled P/R)."""
    eiou = edice = ep = er = 0.0
    for th in thresholds:
        gt, vp = (true_mask > th).float(), (pred > th).float()
        a, b = vp.numpy().astype("int32"), gt.numpy().astype("int32")
        eiou += (((a & b).sum((1, 2)) + 1e-6) / ((a | b).sum((1, 2)) + 1e-6)).mean()
        s = 0.0
        for inp, tar in zip(vp, gt):
            inter = torch.dot(inp.view(-1), tar.view(-1))
            s += ((2 * inter.float() + 1e-4) / (inp.sum() + tar.sum() + 1e-4)).item()
        edice += s / len(vp)
        tp, fp, fn = (vp * gt).sum().item(), (vp * (1 - gt)).sum().item(), ((1 - vp) * gt).sum().item()
        ep += tp / (tp + fp + 1e-8)
        er += tp / (tp + fn + 1e-8)
    n = len(thresholds)
    return {"eiou": eiou / n, "edice": edice / n, "precision": ep / n, "recall": er / n}


def test_training_mask_metrics_match_official_loops():
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(6, 32, 32, generator=g)
    gt = (torch.rand(6, 32, 32, generator=g) > 0.6).float()
    gt[0] = 0  # an untouched face
    ours, official = training_mask_metrics(pred, gt), _official_training_metrics(pred, gt)
    for k in official:
        assert ours[k] == pytest.approx(official[k], rel=1e-5), k


# ---------------------------------------------------------------- regions, PLM, region F1
def _official_extract_keywords(caption):
    """to_mutilabel.py::extract_keywords + keywords_to_multilabel."""
    found = []
    for feature, synonyms in _REGION_SYNONYMS.items():
        for synonym in synonyms:
            if re.search(r"\b" + re.escape(synonym) + r"\b", caption, re.IGNORECASE):
                found.append(feature)
                break
    return [int(r in found) for r in _REGIONS]


CAPTIONS = [
    "The EYES are blurred; the eyebrows look painted and the pupils differ.",
    "Facial hair was added: the beard and moustache have no texture.",
    "Fine lines and creases on the forehead; the frontal area is smooth.",
    "eyeliner, lipstick and earrings only",  # no whole-word match
    "Buccal region and malar fat look odd; the oral cavity is dark.",
    "Teeth, tongue, jaw and chin were inpainted; dimples vanished; a scar and freckles remain.",
    "Hair strands, locks and tresses; nasal bridge; ears and pinnae; skin epidermis; vision.",
    "",
]


def test_region_regex_matches_official_keyword_loop():
    ours = _caption_to_multilabel(CAPTIONS)
    assert ours.shape == (len(CAPTIONS), 21)
    assert ours.tolist() == [_official_extract_keywords(c) for c in CAPTIONS]
    assert ours[3].sum() == 0 and ours[4, _REGIONS.index("mouth")] == ours[4, _REGIONS.index("cheek")] == 1


def test_plm_hand_computed_and_inputs():
    refs = ["the eyes and the skin look fake", "the mouth was edited", "nothing named here"]
    preds = ["the eye and the nose are odd", "the mouth and the cheeks are edited", "the hair"]
    assert plm(preds, refs) == pytest.approx(100 * 2 / 3)
    ref_vec, pred_vec = _caption_to_multilabel(refs), _caption_to_multilabel(preds)
    assert plm(pred_vec, ref_vec) == plm(preds, refs) == plm(pred_vec.bool(), refs)  # vectors or captions
    assert plm({1: preds[0], 2: preds[1]}, {2: refs[1], 1: refs[0]}) == pytest.approx(100 * 2 / 3)  # aligned by id
    assert math.isnan(plm(["eye"], ["no region"]))
    with pytest.raises(ValueError, match="ids differ"):
        plm({1: "eye"}, {2: "eye"})


def test_region_f1_matches_sklearn_when_every_region_is_defined():
    g = torch.Generator().manual_seed(3)
    gt = (torch.rand(300, 21, generator=g) < 0.3).long()
    probs = (gt * 0.4 + torch.rand(300, 21, generator=g) * 0.7).clamp(0, 1)
    ours = region_f1(probs, gt, threshold=0.5, scale=1.0)
    pred = (probs > 0.5).long().numpy()
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(gt.numpy(), pred, average=avg, zero_division=np.nan)
        assert (ours[f"{avg}_P"], ours[f"{avg}_R"], ours[f"{avg}_F1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert ours["micro_R"] == pytest.approx(plm((probs > 0.5), gt) / 100)  # PLM = micro recall of regions


def test_region_f1_leaves_out_undefined_regions_from_macro():
    gt = torch.zeros(2, 21, dtype=torch.long)
    gt[:, 0] = 1
    pred = gt.clone()
    pred[0, 1] = 1  # a false alarm on a region no image has
    m = region_f1(pred, gt, scale=1.0)
    assert m["F1_eye"] == 1.0 and m["F1_pupil"] == 0.0 and math.isnan(m["F1_nose"])
    assert m["macro_F1"] == pytest.approx(0.5) and m["macro_R"] == 1.0  # nose..dimple (0/0) excluded
    with pytest.raises(ValueError, match="threshold probabilities first"):
        region_f1(torch.full((2, 21), 0.3), gt)
