"""ForgeryTalker (MMTT): shape contracts of every part, losses on hand values, instruction template, gradient flow,
generation, ablations, tokenizer/FPN round trips, paper-scale geometry (meta device) and a short overfit run."""
import math
import warnings
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from forgrepro.data.batch import MMTTBatch
from forgrepro.data.mmtt import REGIONS
from forgrepro.data.prompts import PromptTokenizer, instruction_text, load_qformer_tokenizer, train_explanation_tokenizer
from forgrepro.evaluators import MMTTEvaluator
from forgrepro.losses import contrastive_loss, gate_loss, lm_loss, seg_loss
from forgrepro.methods.forgerytalker import (
    ABLATIONS, FPNTask, ForgeryTalkerOutput, ForgeryTalkerTask, ablation_config, build_forgerytalker, forgerytalker_loss,
    forgerytalker_paper, forgerytalker_tiny, fpn_tiny)
from forgrepro.models.explainer import DecoderOnlyExplainer, ExplainerConfig, GenerationSettings, T5Explainer, build_llm
from forgrepro.models.prompter import FPNRegions, GroundTruthRegions, NoRegions, TagGate
from forgrepro.models.mask_decoder import MaskDecoderConfig, MLPMaskDecoder, RegionPromptEncoder, SamGridMaskDecoder
from forgrepro.models.prompter import ForgeryPrompter, PrompterConfig, dice_loss, fpn_loss, weighted_bce
from forgrepro.task import Progress

torch.set_num_threads(1)
S = 64  # tiny image side

CAPTION_TEMPLATES = ["The {r} looks blurred and unnatural.", "The {r} has a visible seam at its border.",
                     "The colour of the {r} does not match the rest of the face."]


def make_batch(B=4, seed=0, n_regions=1):
    g = torch.Generator().manual_seed(seed)
    ml = torch.zeros(B, 21)
    for b in range(B): ml[b, torch.randperm(21, generator=g)[:n_regions]] = 1
    mask = torch.zeros(B, 1, S, S)
    for b in range(B):
        y, x = torch.randint(0, S // 2, (2,), generator=g).tolist()
        mask[b, :, y:y + S // 2, x:x + S // 2] = 1
    caps = [CAPTION_TEMPLATES[b % 3].format(r=" and ".join(REGIONS[j] for j in ml[b].nonzero().flatten()))
            for b in range(B)]
    return MMTTBatch(image=torch.randn(B, 3, S, S, generator=g), mask=mask, multilabel=ml,
                     meta=[{"image_id": f"s{seed}_{b}", "caption": c} for b, c in enumerate(caps)])


@pytest.fixture(scope="module")
def qtok():
    return load_qformer_tokenizer()


@pytest.fixture(scope="module")
def ltok():
    caps = [t.format(r=r) for t in CAPTION_TEMPLATES for r in REGIONS] + ["eye and lip", "nose and skin"]
    return train_explanation_tokenizer(caps, vocab_size=400)


def build(cfg, ltok, qtok):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_forgerytalker(cfg, llm_tokenizer=ltok, qformer_tokenizer=qtok)


# ---------------------------------------------------------------------------------------------------- template
def test_instruction_template_with_and_without_regions():
    official = ("The following facial areas may have been modified by AI: nose, skin. These areas might have been "
                "manipulated either by replacing the entire face or by altering specific facial features. Please "
                "identify these areas and describe why they appear unnatural.")
    assert instruction_text(["nose", "skin"]) == official
    assert instruction_text([]) == official.replace(": nose, skin", "")


def test_prompt_tokenizer_regions_in_order(qtok, ltok):
    pt = PromptTokenizer(qtok, ltok)
    r = torch.zeros(2, 21, dtype=torch.bool)
    r[0, [REGIONS.index("skin"), REGIONS.index("eye")]] = True
    p = pt.instructions(r)
    assert p.texts == [instruction_text(["eye", "skin"]), instruction_text([])]  # multilabel order, not insertion
    assert ltok.decode(p.labels.input_ids[0], skip_special_tokens=True) == "eye skin"


# ---------------------------------------------------------------------------------------------------- FPN
def test_fpn_shapes_and_conv_injection():
    cfg = fpn_tiny().prompter
    fpn = ForgeryPrompter(cfg).eval()
    x = torch.randn(2, 3, S, S)
    out = fpn(x)
    assert out.logits.shape == (2, 21) and out.regions().shape == (2, 21)
    # the conv branches feed the first blocks: a branch-1 change moves the logits
    base = out.logits.clone()
    with torch.no_grad(): fpn.coord_conv_branch[0].conv.weight.mul_(3)
    assert not torch.allclose(base, fpn(x).logits)


def test_fpn_loss_hand_values():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    sp = lambda v: math.log1p(math.exp(v))  # softplus
    bce = (sp(-2.0) + 0.2 * sp(-1.0) + 0.2 * sp(0.0)) / 3  # omega = 0.2 on the two negatives
    assert weighted_bce(logits, y) == pytest.approx(bce, rel=1e-5)
    p = torch.sigmoid(logits)[0].tolist()
    dice = 1 - (2 * p[0] + 1) / (sum(p) + 1 + 1)
    assert dice_loss(logits, y) == pytest.approx(dice, rel=1e-5)
    assert fpn_loss(logits, y).total == pytest.approx(0.5 * (bce + dice), rel=1e-5)
    # omega = 1 recovers the plain BCE mean
    assert weighted_bce(logits, y, 1.0) == pytest.approx((sp(-2.0) + sp(-1.0) + sp(0.0)) / 3, rel=1e-5)
    assert set(fpn_loss(logits, y, variant="official").parts) == {"bce", "focal", "dice", "jaccard"}


# ---------------------------------------------------------------------------------------------------- mask branch
@pytest.mark.parametrize("kind", ["sam", "mlp"])
def test_mask_decoders_return_full_size_logits(kind):
    cfg = MaskDecoderConfig(kind=kind, hidden_size=32, mlp_dim=64, num_heads=2, out_size=S, num_prompt_tokens=22)
    dec = (SamGridMaskDecoder if kind == "sam" else MLPMaskDecoder)(cfg, in_dim=48)
    logits = dec(torch.randn(3, 64, 48), torch.randn(3, 22, 48))  # 8x8 patch grid, 22 prompt tokens
    assert logits.shape == (3, 1, S, S) and logits.dtype == torch.float32
    assert not ((logits >= 0) & (logits <= 1)).all()  # logits, not probabilities


def test_sam_decoder_uses_patch_grid_and_prompts():
    cfg = MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_heads=2, out_size=32)
    dec = SamGridMaskDecoder(cfg, in_dim=32).eval()
    p, q = torch.randn(1, 16, 32), torch.randn(1, 22, 32)
    base = dec(p, q)
    assert not torch.allclose(base, dec(p + 1, q)) and not torch.allclose(base, dec(p, q + 1))


def test_region_prompt_encoder_shape():
    enc = RegionPromptEncoder(llm_dim=20, vision_dim=32, num_heads=4)
    assert enc(torch.randn(2, 21, 20), torch.randn(2, 65, 32)).shape == (2, 22, 32)


# ---------------------------------------------------------------------------------------------------- main model
def test_part_shapes_tiny(ltok, qtok):
    model = build(forgerytalker_tiny(), ltok, qtok)
    cfg = forgerytalker_tiny()
    batch = make_batch(3)
    emb = model.encode_image(batch.image)
    n_patch = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    assert emb.shape == (3, 1 + n_patch, cfg.vision.width)
    rp = model.region_source(batch.image)
    prompts = model.prompt_tokenizer.instructions(rp.regions)
    hidden = model.query(emb, prompts.qformer)
    assert hidden.shape == (3, cfg.qformer.num_query_tokens + prompts.qformer.input_ids.shape[1], cfg.qformer.hidden_size)
    out = model(batch)
    assert out.mask_logits.shape == (3, 1, S, S)
    assert out.lm_logits.shape[:2] == out.lm_labels.shape and out.lm_logits.shape[0] == 3
    assert out.gate_probs.shape == (3, 21) and out.fpn_logits.shape == (3, 21)


def test_losses_hand_values():
    z, m = torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]])
    assert seg_loss(z, m) == pytest.approx((2 * math.log(2) + math.log(2)) / 2)
    assert gate_loss(torch.tensor([[0.9, 0.2]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[True, False]])) \
        == pytest.approx(-math.log(0.9))
    assert contrastive_loss(torch.eye(2), torch.eye(2), 0.5) == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)))
    assert lm_loss(torch.zeros(2, 3, 5), torch.tensor([[1, 2, -100], [0, -100, -100]])) == pytest.approx(math.log(5))


def test_gradients_only_reach_stage2_trainable_parts(ltok, qtok):
    cfg = replace(forgerytalker_tiny(), freeze_vision=True, freeze_llm=True)  # the paper's freezing, at tiny scale
    model = build(cfg, ltok, qtok)
    fpn_before = {k: v.clone() for k, v in model.region_source.state_dict().items()}
    batch = make_batch(3)
    opt = torch.optim.AdamW(ForgeryTalkerTask(cfg).param_groups(model), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        forgerytalker_loss(model(batch), batch, cfg.loss).total.backward()
        opt.step()
    for part in ("region_source", "vision_model", "llm"):
        assert all(p.grad is None for p in getattr(model, part).parameters()), part
    for k, v in model.region_source.state_dict().items():  # BatchNorm running stats too: the FPN stays in eval mode
        assert torch.equal(v, fpn_before[k]), k
    trained = ("qformer", "language_projection", "region_prompt_encoder", "mask_decoder", "tag_gate")
    for part in trained:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part
    assert model.query_tokens.grad is not None
    assert not model.region_source.training and not model.vision_model.training and model.qformer.training


def test_generation_returns_strings(ltok, qtok):
    model = build(forgerytalker_tiny(), ltok, qtok).eval()
    batch = make_batch(2)
    ex = model.explain(batch.image, generation=GenerationSettings(num_beams=2, max_len=6, min_len=2))
    assert len(ex.texts) == 2 and all(isinstance(t, str) for t in ex.texts)
    with torch.no_grad(): out = model(batch)
    assert len(out.explanations) == 2 and all(isinstance(t, str) for t in out.explanations)


def test_decoder_only_llm_trains_and_generates(ltok, qtok):
    cfg = ablation_config("tiny", "decoder_only_llm")
    model = build(cfg, ltok, qtok)
    assert isinstance(model.llm, DecoderOnlyExplainer)
    batch = make_batch(2)
    out = model(batch)
    n_target = model.prompt_tokenizer.targets(batch.captions, "cpu").attention_mask.sum()
    assert int((out.lm_labels != -100).sum()) == int(n_target)  # loss exactly on the explanation tokens
    forgerytalker_loss(out, batch, cfg.loss).total.backward()
    ex = model.eval().explain(batch.image, generation=GenerationSettings(num_beams=2, max_len=5, min_len=1))
    assert len(ex.texts) == 2


def test_decoder_only_position_ids_match_between_training_and_generation(ltok):
    """A left-padded instruction at generation must see the same positions as the packed training layout."""
    torch.manual_seed(0)
    llm = build_llm(ExplainerConfig(kind="llama", d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=None), ltok).eval()
    from forgrepro.data.batch import TextInput
    prefix = torch.randn(2, 3, 32)
    prompt = TextInput(torch.tensor([[5, 6, 7], [8, 0, 0]]), torch.tensor([[1, 1, 1], [1, 0, 0]]))
    greedy = GenerationSettings(num_beams=1, max_len=1, min_len=0, repetition_penalty=1.0)
    first = llm.generate(prefix, prompt, greedy)[:, 0]
    target = TextInput(first[:, None], torch.ones(2, 1, dtype=torch.long))
    logits, labels = llm(prefix, prompt, target)
    # the logit that predicts the first target token (teacher forcing) picks the greedily generated token
    pred = torch.stack([logits[b][labels[b] != -100][0].argmax() for b in range(2)])
    assert torch.equal(pred, first)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_configs_build_and_run(name, ltok, qtok):
    cfg = ablation_config("tiny", name)
    model = build(cfg, ltok, qtok)
    batch = make_batch(2)
    out = model(batch)
    lo = forgerytalker_loss(out, batch, cfg.loss)
    assert torch.isfinite(lo.total)
    expected = {"no_fpn": NoRegions, "gt_prompts": GroundTruthRegions, "pretrain": GroundTruthRegions,
                "pretrain_equal_weights": GroundTruthRegions}.get(name, FPNRegions)
    assert isinstance(model.region_source, expected)
    assert (out.mask_logits is None) == (name == "no_mask_decoder")
    if name.startswith("pretrain"): assert {"mlm", "contrastive"} <= set(lo.parts)


def test_prompts_switch_changes_instructions(ltok, qtok):
    batch = make_batch(3)
    gt = build(ablation_config("tiny", "gt_prompts"), ltok, qtok)(batch).instructions
    none = build(ablation_config("tiny", "no_fpn"), ltok, qtok)(batch).instructions
    assert none == [instruction_text([])] * 3
    assert gt == [instruction_text([r for r, v in zip(REGIONS, row) if v]) for row in batch.multilabel.bool().tolist()]


def test_stage1_checkpoint_feeds_stage2(tmp_path, ltok, qtok):
    fpn = FPNTask(fpn_tiny()).build_model().eval()
    with torch.no_grad():
        for p in fpn.parameters(): p.add_(0.01 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in fpn.state_dict().items()}, str(tmp_path / "model.safetensors"))
    cfg = replace(forgerytalker_tiny(), fpn_weights=str(tmp_path))
    model = build(cfg, ltok, qtok)
    x = torch.randn(2, 3, S, S)
    assert torch.allclose(model.region_source(x).logits, fpn(x).logits, atol=1e-6)


def test_tokenizer_path_round_trip(tmp_path, qtok):
    tok = train_explanation_tokenizer(["the eye is blurred", "the lip is red"], vocab_size=200, out_dir=tmp_path)
    model = build_forgerytalker(replace(forgerytalker_tiny(), llm_tokenizer=str(tmp_path), prompts="gt"),
                                qformer_tokenizer=qtok)
    assert model.prompt_tokenizer.llm_vocab_size == len(tok)
    with pytest.raises(ValueError, match="LLM tokenizer"):
        build_forgerytalker(replace(forgerytalker_tiny(), prompts="gt"), qformer_tokenizer=qtok)


def test_explanation_vocabulary_is_the_same_in_every_process(tmp_path):
    "The tiny vocabulary must not depend on a per-process hash seed (the WordPiece trainer's ids and merges did)."
    import subprocess, sys
    code = ("import sys; from forgrepro.data.prompts import train_explanation_tokenizer; "
            "train_explanation_tokenizer(['The lips look waxy.', 'A seam runs along the jaw; the eyes are glassy.'] * 5, "
            "out_dir=sys.argv[1])")
    files = []
    for i, seed in enumerate(("1", "2")):
        d = tmp_path / f"tok{i}"
        subprocess.run([sys.executable, "-c", code, str(d)], check=True, env={**__import__("os").environ, "PYTHONHASHSEED": seed})
        files.append((d / "tokenizer.json").read_bytes())
    assert files[0] == files[1]


def test_paper_scale_geometry_on_meta_device(ltok, qtok):
    with torch.device("meta"):
        model = build_forgerytalker(forgerytalker_paper(), llm_tokenizer=ltok, qformer_tokenizer=qtok,
                                    load_weights=False)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert 0.98e9 < n(model.vision_model) < 1.0e9             # EVA ViT-g/14: 986 M
    assert 2.7e9 < n(model.llm) < 2.9e9                       # Flan-T5-XL
    assert 0.6e9 < n(model.region_source) < 0.7e9             # ViT-H/14 FPN + conv branches
    assert model.query_tokens.shape == (1, 32, 768)
    assert model.llm.model.config.vocab_size == 32128 and model.llm.model.config.d_model == 2048
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}


def test_mmtt_evaluator_protocol(ltok, qtok):
    ev = MMTTEvaluator(caption_metrics=lambda p, r: {"CIDEr": 50.0, "BLEU-4": 10.0, "SPICE": None})
    model = build(replace(forgerytalker_tiny(), generation=GenerationSettings(num_beams=1, max_len=4, min_len=1)),
                  ltok, qtok).eval()
    batch = make_batch(3)
    with torch.no_grad(): out = model(batch)
    ev.update(out, batch); ev.update(out, batch)  # duplicates keep the first prediction
    m = ev.compute()
    assert m["agg_metrics"] == 60.0 and math.isnan(m["SPICE"]) and m["n_images"] == 3
    assert 0 <= m["IoU"] <= 100 and "region_F1" in m and "fpn_PLM" in m and "PLM" in m


def test_mmtt_evaluator_mask_protocol(ltok, qtok):
    """Mask scores follow forgrepro.metrics.mmtt: a perfect mask scores 100, an empty one on a non-empty GT 0."""
    batch = make_batch(2)
    regions = torch.zeros(2, 21, dtype=torch.bool)
    for logits, iou in ((torch.where(batch.mask > 0.5, 9.0, -9.0), 100.0), (torch.full_like(batch.mask, -9.0), 0.0)):
        ev = MMTTEvaluator(caption_metrics=lambda p, r: {"CIDEr": 1.0, "BLEU-4": 1.0})
        ev.update(ForgeryTalkerOutput(regions=regions, mask_logits=logits, explanations=batch.captions), batch)
        m = ev.compute()
        assert m["IoU"] == iou and m["Recall"] == iou and m["PLM"] == 100.0


def test_overfit_handful_of_samples(ltok, qtok):
    """A tiny model memorises 4 explanations: the teacher-forced LM loss falls well below its start and greedy
    generation reproduces the training explanations."""
    torch.manual_seed(0)
    cfg = replace(ablation_config("tiny", "gt_prompts"), lr=3e-3)
    cfg = replace(cfg, llm=replace(cfg.llm, dropout=0.0), qformer=replace(cfg.qformer, hidden_dropout=0.0, attention_dropout=0.0))
    model = build(cfg, ltok, qtok)
    batch = make_batch(4, seed=3)
    opt = torch.optim.AdamW(ForgeryTalkerTask(cfg).param_groups(model), lr=cfg.lr)
    first = None
    for step in range(80):
        out = model(batch)
        lo = forgerytalker_loss(out, batch, cfg.loss)
        opt.zero_grad(); lo.total.backward(); opt.step()
        first = first if first is not None else float(lo.parts["lm"].detach())
    final = float(lo.parts["lm"].detach())
    assert final < 0.1 and final < first / 20, (first, final)
    texts = model.eval().explain(batch.image, batch.multilabel,
                                 GenerationSettings(num_beams=1, max_len=30, min_len=1, repetition_penalty=1.0)).texts
    from forgrepro.data.text import blip_pre_caption as pre_caption
    assert sum(t == pre_caption(c) for t, c in zip(texts, batch.captions)) >= 3, texts


def test_benchmark_script_cpu_paths(capsys, load_benchmark):
    """The GPU benchmark skips cleanly without a GPU, and its code path runs end to end at tiny scale on the CPU."""
    bench = load_benchmark("bench_forgerytalker")
    if not torch.cuda.is_available():
        assert bench.main([]) == 0 and "SKIP" in capsys.readouterr().out
    assert bench.main(["throughput", "--allow-cpu", "--scale", "tiny", "--batch", "2", "--steps", "1", "--warmup", "0",
                       "--words", "8"]) == 0
    out = capsys.readouterr().out
    assert "ForgeryTalker stage-2 training step" in out and "sum of the 4 plain blocks" in out
    torch.set_num_threads(1)  # the benchmark may change the thread count


def _write_mmtt(root, n=(8, 4, 4), S=64, seed=0):
    "A minimal MMTT folder in the official layout: images, masks and `*-mutilabel.json` per split."
    import json
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    k = 0
    for split, count in zip(("train", "eval", "test"), n):
        recs = []
        for _ in range(count):
            region = REGIONS[k % 3]
            img = (rng.random((S, S, 3)) * 255).astype(np.uint8)
            mask = np.zeros((S, S), np.uint8); mask[: S // 2] = 255
            Image.fromarray(img).save(root / "img" / f"{k}.png"); Image.fromarray(mask).save(root / "img" / f"{k}_m.png")
            recs.append({"image_id": f"img_{k}", "img_path": f"img/{k}.png", "mask_path": f"img/{k}_m.png",
                         "caption": f"The {region} looks blurred.", "instance_id": str(k),
                         "multilabel": [int(r == region) for r in REGIONS]})
            k += 1
        (root / f"{split}-mutilabel.json").write_text(json.dumps(recs))
    return root


def test_forgerytalker_run_load_explain(tmp_path):
    """The registry entry point runs both stages, writes metrics.json / method.json, shares the FPN between rows,
    and the demo API loads the run and explains a PIL image."""
    import json
    import numpy as np
    from PIL import Image
    from forgrepro.evaluators import fast_caption_metrics
    from forgrepro.experiment import forgerytalker_run, load_forgerytalker
    from forgrepro.methods.forgerytalker import FORGERYTALKER_ABLATIONS
    from forgrepro.predict import explain
    root = _write_mmtt(tmp_path / "data")
    kw = dict(overrides={"generation.num_beams": 1, "generation.max_len": 8},
              train_overrides={"epochs": 1, "batch_size": 4, "fpn.epochs": 1, "fpn.batch_size": 4},
              caption_metrics=fast_caption_metrics, fpn_dir=tmp_path / "fpn")
    m = forgerytalker_run(root, tmp_path / "full", **kw)
    assert {"BLEU-4", "CIDEr", "SPICE", "IoU", "Precision", "Recall", "PLM", "region_F1"} <= set(m)
    assert m["SPICE"] is None and 0 <= m["IoU"] <= 100
    on_disk = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert on_disk["SPICE"] is None and on_disk["CIDEr"] == pytest.approx(m["CIDEr"])
    assert json.loads((tmp_path / "full" / "method.json").read_text())["method"] == "forgerytalker"
    z = np.load(tmp_path / "full" / "region_predictions.npz", allow_pickle=False)      # for the FPN confusion figure
    assert z["pred"].shape == z["gt"].shape and z["pred"].shape[1] == 21 and list(z["regions"]) == list(REGIONS)
    preds = json.loads((tmp_path / "full" / "predictions.json").read_text())
    assert len(preds) == z["pred"].shape[0] and all(isinstance(v, str) for v in preds.values())
    assert m["distinct_explanations"] == len(set(preds.values())) >= 1
    fpn_files = sorted((tmp_path / "fpn").rglob("model.safetensors"))
    stamp = [f.stat().st_mtime_ns for f in fpn_files]
    assert "no_mask_decoder" in FORGERYTALKER_ABLATIONS
    m2 = forgerytalker_run(root, tmp_path / "nomask", ablation="no_mask_decoder", **kw)
    assert "IoU" not in m2 and [f.stat().st_mtime_ns for f in fpn_files] == stamp  # the FPN was reused, not retrained
    m3 = forgerytalker_run(root, tmp_path / "nofpn", ablation="no_fpn", **kw)      # no FPN: its metrics are null
    assert "region_F1" in m3 and m3["region_F1"] is None and m3["fpn_PLM"] is None and m["region_F1"] is not None
    model, ltok, qtok = load_forgerytalker(tmp_path / "full")
    out = explain(model, Image.fromarray(np.zeros((50, 40, 3), np.uint8)))
    assert out["mask"].shape == (50, 40) and out["mask"].dtype == bool and isinstance(out["explanation"], str)
    assert set(out["regions"]) <= set(REGIONS) and len(out["region_probs"]) == 21


def test_param_groups_per_module_lr(ltok, qtok):
    "tiny: mask branch and vision encoder at their own lr, every trainable tensor in exactly one group; unset = one lr."
    cfg = forgerytalker_tiny()
    model = build(cfg, ltok, qtok)
    groups = ForgeryTalkerTask(cfg).param_groups(model)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(lr_of) == sum(len(g["params"]) for g in groups) == len(trainable)  # no duplicates, nothing left out
    for n, p in trainable:
        top = n.split(".", 1)[0]
        want = {"mask_decoder": cfg.mask_lr, "region_prompt_encoder": cfg.mask_lr, "vision_model": cfg.vision_lr}.get(top, cfg.lr)
        assert lr_of[id(p)] == want, n
    assert cfg.mask_lr != cfg.lr and cfg.vision_lr != cfg.lr
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("no_decay"))
    paper_like = replace(cfg, mask_lr=None, vision_lr=None)
    plain = ForgeryTalkerTask(paper_like).param_groups(model)
    assert [g["name"] for g in plain] == ["decay", "no_decay"] and {g["lr"] for g in plain} == {cfg.lr}
    assert (forgerytalker_paper().mask_lr, forgerytalker_paper().vision_lr) == (None, None)
