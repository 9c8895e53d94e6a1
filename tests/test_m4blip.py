"""M4-BLIP at tiny scale: part shapes, FCA targets, the grouped sampler, ablations, the LLM head, frozen parts,
weight loading and a short overfit."""
import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from forgrepro.methods.m4blip import (M4BLIP_ABLATIONS, M4BLIP_PRESETS, GroupedIdBatchSampler, LocalAdapter, M4BlipTask,
                                      M4BlipWeights, MLGFusion, build_m4blip, fca_batch_targets, fca_loss, m4blip_config,
                                      m4blip_loss, random_m4blip_batch)
from forgrepro.models.llm import wordpiece_tokenizer
from forgrepro.models.qformer import QFORMER_PRESETS, QFormer
from forgrepro.task import Progress

PROGRESS = Progress(epoch=1, step=3, steps_per_epoch=10)


@pytest.fixture(autouse=True)
def one_thread():
    "Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOMLY.*")
        warnings.filterwarnings("ignore", message=".*WordPiece stands in.*")
        yield
    torch.set_num_threads(n)


def _model(ablation="full", overrides=None):
    torch.manual_seed(0)
    cfg = m4blip_config("tiny", ablation, overrides)
    return cfg, build_m4blip(cfg)


@pytest.fixture(scope="module")
def batch():
    return random_m4blip_batch(8)


# ---------------------------------------------------------------- parts

def test_part_shapes(batch):
    cfg, model = _model()
    model.eval()
    B, L = batch.input_ids.shape
    g = model.encode_global(batch.image)
    test_n = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    assert g.shape == (B, 1 + test_n, cfg.vision.width)
    l_tok, l_mask = model.encode_local(batch)
    assert l_tok.shape[0] == B and l_tok.shape[2] == cfg.vision.width and l_mask.shape == l_tok.shape[:2]
    assert l_mask[:, 0].all()                                   # the null token is always visible
    hw = (l_tok.shape[1] - 1) // batch.faces.shape[1]
    assert torch.equal(l_mask[:, 1:], batch.face_mask.bool().repeat_interleave(hw, 1))   # a face's tokens follow its mask
    q = cfg.qformer.num_query_tokens
    og = model.global_qformer(g, None, batch.input_ids, batch.attention_mask)
    ol = model.local_qformer(l_tok, l_mask, batch.input_ids, batch.attention_mask)
    assert og.queries.shape == ol.queries.shape == (B, q, cfg.qformer.hidden_size)
    assert og.text.shape == (B, L, cfg.qformer.hidden_size)
    fused = model.fusion(ol.queries, og.queries, (og.text + ol.text) / 2)
    assert fused.queries.shape == (B, 2 * q, cfg.qformer.hidden_size)
    assert fused.llm_tokens.shape == (B, q, 2 * cfg.qformer.hidden_size)
    out = model(batch)
    assert out.logits_bin.shape == (B, 2) and out.logits_multi.shape == (B, 4) and out.box.shape == (B, 4)
    assert out.logits_tok.shape == (B, L - 1, 2)
    assert out.logits_bin_local.shape == (B, 2) and out.logits_multi_global.shape == (B, 4)
    assert out.p_fake_llm.shape == (B,) and out.fca is None and out.llm.logits is None
    assert ((out.box >= 0) & (out.box <= 1)).all()
    # values: the forward is the documented assembly of the parts called above (eval mode: no dropout)
    with torch.no_grad():
        torch.testing.assert_close(out.logits_bin, model.itm_head(fused.pooled))
        torch.testing.assert_close(out.logits_multi, model.cls_head(fused.pooled))
        torch.testing.assert_close(out.logits_tok, model.token_head(fused.text))
        torch.testing.assert_close(out.logits_bin_local, model.local_bin_head(ol.queries.mean(1)))
        torch.testing.assert_close(out.logits_multi_global, model.global_multi_head(og.queries.mean(1)))
        torch.testing.assert_close(fused.pooled, fused.queries.mean(1))
        torch.testing.assert_close(fused.llm_tokens, torch.cat([fused.queries[:, :q], fused.queries[:, q:]], -1))


def test_local_adapter_and_fusion_shapes():
    torch.manual_seed(0)
    ad = LocalAdapter(12, 8)
    tok, fmask, boxes = torch.randn(3, 2 * 4, 12), torch.tensor([[1.0] * 8, [1.0] * 4 + [0.0] * 4, [0.0] * 8]), torch.rand(3, 2, 4)
    x, m = ad(tok, fmask, boxes, num_faces=2)
    assert x.shape == (3, 9, 8) and m.shape == (3, 9) and m.dtype == torch.bool
    with torch.no_grad():                                      # [null ; LN(proj(tokens)) + box embedding of its face]
        assert torch.equal(x[:, 0], ad.null_token[0].expand(3, -1)) and torch.equal(m[:, 1:], fmask.bool())
        assert m[:, 0].all()
        torch.testing.assert_close(x[:, 1:], ad.norm(ad.proj(tok)) + ad.box_embed(boxes).repeat_interleave(4, 1))
    fu = MLGFusion(8, 2, "global").eval()
    o = fu(None, torch.randn(3, 4, 8), torch.randn(3, 5, 8))
    assert o.queries.shape == (3, 4, 8) and o.llm_tokens.shape == (3, 4, 8) and fu.local_from_global is None


def test_qformer_text_only_ignores_padding():
    qf = QFormer(QFORMER_PRESETS["tiny"]).eval()
    ids = torch.tensor([[101, 2054, 2003, 0, 0]])
    am = (ids > 0).long()
    a = qf.encode_text(ids, am)
    b = qf.encode_text(ids.masked_fill(am == 0, 777), am)
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=1e-5, rtol=1e-5)


def test_faceless_images_are_finite(batch):
    "With no face the local branch sees only its null token: finite losses, and the face pixels cannot matter."
    _, model = _model()
    model.train()
    b = replace(batch, face_mask=torch.zeros_like(batch.face_mask))
    lo = m4blip_loss(model(b), b, PROGRESS, model.cfg)
    assert torch.isfinite(lo.total) and all(torch.isfinite(v) for v in lo.parts.values())
    model.eval()
    with torch.no_grad():
        a, c = model(b), model(replace(b, faces=torch.randn_like(b.faces)))
    torch.testing.assert_close(a.logits_bin_local, c.logits_bin_local)
    torch.testing.assert_close(a.logits_bin, c.logits_bin)
    with torch.no_grad(): d = model(batch)                     # with faces visible, they do
    assert not torch.allclose(a.logits_bin_local, d.logits_bin_local)


def test_missing_faces_raise(batch):
    _, model = _model()
    with pytest.raises(ValueError, match="face crops"):
        model(replace(batch, faces=None))


# ---------------------------------------------------------------- FCA

def test_fca_targets_on_handmade_batch(batch):
    # news 1000: orig, FS, TS, FA&TA (rows 0-3); news 1001: the same four (rows 4-7)
    t = fca_batch_targets(batch)
    assert t.anchors.tolist() == [True, False, False, False] * 2
    B = 8
    v2t, v2v, t2v, t2t = t.v2x[:, :B], t.v2x[:, B:], t.t2x[:, :B], t.t2x[:, B:]
    # image anchor 0: the FS record's caption is the original caption -> masked; other news' texts all kept
    assert v2t[0].tolist() == [True, False, True, True] + [True] * 4
    # ... pushed away from its forged images (FS, FA&TA) only, never from another news item
    assert v2v[0].tolist() == [False, True, False, True] + [False] * 4
    # text anchor 0: the TS record's image is the original image -> masked
    assert t2v[0].tolist() == [True, True, False, True] + [True] * 4
    assert t2t[0].tolist() == [False, False, True, True] + [False] * 4
    assert t2t[4].tolist() == [False] * 4 + [False, False, True, True]
    assert not v2v[1:4].any() and not t2t[1:4].any()            # forgeries are not anchors


def test_fca_pushes_originals_from_forgeries(batch):
    t = fca_batch_targets(batch)
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(8, 16), dim=-1), F.normalize(torch.randn(8, 16), dim=-1)
    assert torch.isfinite(fca_loss(img, txt, t, 0.1))
    near, far = img.clone(), img.clone()
    near[1] = F.normalize(img[0] + 0.01 * torch.randn(16), dim=0)   # a forged image close to its original ...
    far[1] = -img[0]
    assert fca_loss(near, txt, t, 0.1) > fca_loss(far, txt, t, 0.1)   # ... costs more than a distant one


def test_fca_queue_adds_negatives(batch):
    _, model = _model(overrides={"fca_queue_size": 16})
    model.train()
    out = model(batch)
    assert out.fca.text_queue.shape == (32, 16) and set(out.fca.image_queue) == {"global", "local"}
    assert int(model.text_queue.ptr) == 8
    assert torch.equal(model.text_queue.queue[:, :8], out.fca.text.detach().T)   # this batch enqueued after the snapshot
    assert not torch.equal(out.fca.text_queue[:, :8], model.text_queue.queue[:, :8])
    lo = m4blip_loss(out, batch, PROGRESS, model.cfg)
    t = fca_batch_targets(batch)
    with_queue = torch.stack([fca_loss(v, out.fca.text, t, out.fca.temp, out.fca.image_queue[k], out.fca.text_queue)
                              for k, v in out.fca.image.items()]).mean()
    without = torch.stack([fca_loss(v, out.fca.text, t, out.fca.temp) for v in out.fca.image.values()]).mean()
    torch.testing.assert_close(lo.parts["fca"], with_queue)
    assert lo.parts["fca"].item() > without.item()              # the queued negatives add to the softmax denominators


# ---------------------------------------------------------------- sampler

def test_sampler_groups_ids():
    rng = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 6, (60,), generator=rng).tolist()                 # DGM4: up to 5 records per id
    ids = [f"n{k}" for k, s in enumerate(sizes) for _ in range(s)]
    perm = torch.randperm(len(ids), generator=rng).tolist()
    ids = [ids[i] for i in perm]                                                # records of an id are scattered
    smp = GroupedIdBatchSampler(ids, batch_size=16, seed=3)
    batches = list(smp)
    assert sorted(i for b in batches for i in b) == list(range(len(ids)))
    assert all(len(b) == 16 for b in batches[:-1])
    where = {}
    for bi, b in enumerate(batches):
        for i in b: where.setdefault(ids[i], set()).add(bi)
    split = sum(len(v) > 1 for v in where.values())
    assert split <= len(batches) - 1                                            # only at batch boundaries
    for k, v in where.items():
        if len(v) > 1: assert len(v) == 2 and max(v) - min(v) == 1
    smp.set_epoch(1)
    assert list(smp) != batches
    assert GroupedIdBatchSampler(ids, 16, seed=3).__iter__().__next__() == batches[0]   # deterministic per epoch
    r0, r1 = (list(GroupedIdBatchSampler(ids, 16, seed=3, num_replicas=2, rank=r)) for r in (0, 1))
    assert len(r0) == len(r1) and not {i for b in r0 for i in b} & {i for b in r1 for i in b}


def test_task_sampler_follows_config():
    from forgrepro.task import Task
    assert isinstance(M4BlipTask(), Task) and M4BlipTask.name == "m4blip"
    smp = M4BlipTask(m4blip_config("tiny")).batch_sampler([1, 2, 1, 2], 2)
    assert isinstance(smp, GroupedIdBatchSampler)
    assert sorted(sorted(b) for b in smp) == [[0, 2], [1, 3]]    # each id's records in one batch
    assert M4BlipTask(m4blip_config("tiny", overrides={"group_by_id": False})).batch_sampler([1, 1, 2], 2) is None


# ---------------------------------------------------------------- ablations

@pytest.mark.parametrize("ablation", list(M4BLIP_ABLATIONS))
def test_each_ablation_trains_a_step(ablation, batch):
    cfg, model = _model(ablation)
    model.train()
    task = M4BlipTask(cfg)
    opt = torch.optim.AdamW(task.param_groups(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = model(batch)
    lo = task.loss(out, batch, PROGRESS)
    w = cfg.loss
    weight = {"bic": w.bic, "mlc": w.mlc, "bbox": w.bbox, "giou": w.giou, "tmg": w.tmg, "fca": w.fca, "moco": w.fca,
              "ld": w.ld, "lv": w.lv, "llm": w.llm}
    torch.testing.assert_close(lo.total, sum(weight[k] * v for k, v in lo.parts.items()))
    torch.testing.assert_close(lo.parts["bic"], F.cross_entropy(out.logits_bin, batch.label))
    torch.testing.assert_close(lo.parts["mlc"], F.binary_cross_entropy_with_logits(out.logits_multi, batch.multi_label))
    opt.zero_grad(); lo.total.backward(); opt.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any(n.startswith("itm_head") for n in changed)
    expected = {"full": {"fca", "ld", "lv", "llm"}, "wo_fca": {"moco", "ld", "lv", "llm"},
                "wo_task_losses": {"fca", "llm"}, "local_only": {"fca", "ld", "llm"},
                "global_only": {"fca", "lv", "llm"}, "wo_llm": {"fca", "ld", "lv"}}[ablation]
    assert set(lo.parts) == {"bic", "mlc", "bbox", "giou", "tmg"} | expected


def test_moco_teacher_and_queues(batch):
    _, model = _model("wo_fca")
    model.train()
    w0 = model.text_proj_m.weight.clone()
    out = model(batch)
    assert set(out.moco_sims) == {"global", "local"}
    assert out.moco_sims["global"].a2b.shape == (8, 8 + model.cfg.moco_queue_size)
    assert int(model.text_queue.ptr) == 8
    lo = m4blip_loss(out, batch, PROGRESS, model.cfg)
    lo.total.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.split(".")[0].endswith("_m"))
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    model(batch)                                                  # EMA moves the teacher towards the student
    assert not torch.equal(model.text_proj_m.weight, w0)


# ---------------------------------------------------------------- LLM head

def test_p_fake_llm_is_softmax_over_tokenizer_choice_ids(batch):
    _, model = _model()
    model.eval()
    captured = {}
    def keep_args(module, args, output):
        captured["args"] = args
    model.llm_head.register_forward_hook(keep_args)
    out = model(batch)
    p = out.p_fake_llm
    assert ((p >= 0) & (p <= 1)).all()
    visual, captions = captured["args"][0], captured["args"][1]
    tok = wordpiece_tokenizer()
    a_id, b_id = tok.convert_tokens_to_ids(["a", "b"])                # lower-cased "A." / "B." answers
    head, builder = model.llm_head, model.llm_head.builder
    with torch.no_grad():
        prompt = builder.build(captions)
        emb = head.lm.embed
        n = len(batch)
        seq = torch.cat([emb(builder.prefix_ids)[None].expand(n, -1, -1), head.proj(visual),
                         emb(builder.middle_ids)[None].expand(n, -1, -1), emb(prompt.ids)], 1)
        logits = head.lm.model(inputs_embeds=seq).logits               # plain LlamaForCausalLM
        pos = len(builder.prefix_ids) + visual.shape[1] + len(builder.middle_ids) + prompt.question_len - 1
        ref = logits[torch.arange(n), pos][:, [a_id, b_id]].softmax(-1)[:, 0]
    torch.testing.assert_close(p, ref, atol=1e-5, rtol=1e-5)


def test_llm_labels_are_the_answers(batch):
    _, model = _model()
    model.train()
    out = model(batch)
    builder = model.llm_head.builder
    for row, y in zip(out.llm.labels, batch.label.tolist()):
        assert row[row != -100].tolist() == builder.answer_ids[y]


# ---------------------------------------------------------------- frozen parts

def test_frozen_parts_get_no_grads(batch):
    _, model = _model(overrides={"freeze_vision": True, "llm.freeze": True})   # as at paper scale
    model.train()
    assert not model.global_encoder.training                     # the frozen ViT stays in eval mode
    lo = m4blip_loss(model(batch), batch, PROGRESS, model.cfg)
    lo.total.backward()
    assert all(p.grad is None for p in model.global_encoder.parameters())
    assert all(p.grad is None for p in model.llm_head.lm.parameters())
    for trained in (model.llm_head.proj.weight, model.global_qformer.query_tokens,        # the projection is trained
                    model.face_encoder.backbone.conv_stem.weight):
        assert trained.grad is not None and trained.grad.abs().sum() > 0
    trainable = {id(p) for g in M4BlipTask(model.cfg).param_groups(model) for p in g["params"]}
    assert not any(id(p) in trainable for p in model.global_encoder.parameters())
    assert not any(id(p) in trainable for p in model.llm_head.lm.parameters())


# ---------------------------------------------------------------- weights

def test_local_weights_load_and_missing_ones_warn(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    for var in ("FORGREPRO_BLIP2", "FORGREPRO_FACE_B4", "FORGREPRO_VICUNA", "FORGREPRO_VICUNA_TOKENIZER"):
        monkeypatch.delenv(var, raising=False)
    cfg = M4BLIP_PRESETS["tiny"]
    torch.manual_seed(1)
    src = build_m4blip(cfg)
    ckpt = {"query_tokens": src.global_qformer.query_tokens.detach()}
    ckpt.update({f"qformer.{k}": v for k, v in src.global_qformer.model.state_dict().items() if "position_ids" not in k})
    ckpt.update({f"vision_model.{k}": v for k, v in src.global_encoder.model.state_dict().items()})
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(tmp_path / "blip2.safetensors"))
    src.llm_head.lm.model.save_pretrained(tmp_path / "llm")
    torch.manual_seed(2)
    with pytest.warns(UserWarning, match="EfficientNet-b4.*RANDOMLY"):
        model = build_m4blip(cfg, M4BlipWeights(blip2=str(tmp_path / "blip2.safetensors"), llm=str(tmp_path / "llm")),
                             llm_tokenizer=wordpiece_tokenizer())
    for q in (model.global_qformer, model.local_qformer):             # both branches start from BLIP-2's Q-Former
        torch.testing.assert_close(q.query_tokens, src.global_qformer.query_tokens)
    torch.testing.assert_close(model.global_encoder.model.embeddings.patch_embedding.weight,
                               src.global_encoder.model.embeddings.patch_embedding.weight)
    torch.testing.assert_close(model.llm_head.lm.model.lm_head.weight, src.llm_head.lm.model.lm_head.weight)
    with pytest.raises(FileNotFoundError):
        build_m4blip(cfg, M4BlipWeights(blip2=str(tmp_path / "nope.safetensors")))


# ---------------------------------------------------------------- learning

def test_overfits_one_batch(batch):
    cfg, model = _model()
    model.train()
    task = M4BlipTask(cfg)
    opt = torch.optim.AdamW(task.param_groups(model))
    first = None
    for i in range(30):
        lo = task.loss(model(batch), batch, Progress(epoch=1, step=i, steps_per_epoch=10))
        opt.zero_grad(); lo.total.backward(); opt.step()
        first = first or lo.log_dict()
    last = lo.log_dict()
    assert last["loss"] < 0.75 * first["loss"], (first, last)
    assert last["bic"] < 0.3 * first["bic"] and last["ld"] < 0.5 * first["ld"], (first, last)
    assert last["tmg"] < 0.3 * first["tmg"] and last["fca"] < 0.5 * first["fca"], (first, last)
    assert last["llm"] < first["llm"] - 1.0, (first, last)        # the tiny (random, trainable) LLM learns the answers
    model.eval()
    with torch.no_grad():
        out = model(batch)
    p = out.logits_bin.softmax(-1)[:, 1]
    assert p[batch.label == 1].min() > p[batch.label == 0].max()  # eval-mode P(fake) ranks every fake above every real


# ---------------------------------------------------------------- benchmark

def test_benchmark_smoke_and_cpu_skip(tmp_path, load_benchmark):
    bench = load_benchmark("bench_m4blip")
    if not torch.cuda.is_available():
        assert bench.main([]) == {"skipped": True}
    res = bench.main(["--smoke", "--json", str(tmp_path / "bench.json")])
    assert (tmp_path / "bench.json").exists()
    assert res["step_samples_per_s"] > 0 and 0 < res["bound_matched"] <= res["bound_issue"]
    assert set(res["block_samples_per_s"]) == {"vit_fwd", "effnet_train", "qformer_global", "qformer_local",
                                                "qformer_text", "llm_fwd", "llm_fwd_bwd_input"}


def test_fit_keeps_news_groups_together():
    "fit's sampler receives M4-BLIP's news ids, so an original and its manipulations share a batch."
    from types import SimpleNamespace
    from forgrepro.train import EpochBatchSampler
    ds = SimpleNamespace(records=[SimpleNamespace(id=i // 3) for i in range(24)])
    groups = M4BlipTask(m4blip_config("tiny")).sample_groups(ds)
    assert groups == [i // 3 for i in range(24)]
    assert M4BlipTask(m4blip_config("tiny", overrides={"group_by_id": False})).sample_groups(ds) is None
    for key in EpochBatchSampler(24, 6, seed=1, groups=groups):
        ids = [groups[i] for i in key.indices]
        assert all(ids.count(g) == 3 for g in set(ids))   # whole groups only (3 divides 6)
