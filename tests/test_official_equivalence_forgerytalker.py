"""ForgeryTalker against the official code (github:NattyLianJc/Generating-Attribution-Reports, "DFF").

`tests/golden/official/forgerytalker.safetensors` holds the official model at a reduced configuration (state dict
with official key names, one fixed batch, and its outputs), written by `scripts/official_fixtures/forgerytalker.py`
from the unmodified official code; `forgerytalker_keys_paper.json` lists every official key and shape at the
published sizes. Here forgrepro loads that state with `load_official_forgerytalker_weights` (strict) and must give
the same outputs to 1e-5 (fp32) and the same generated ids.

forgrepro runs with its official-compatible switches (`official_forgerytalker_config`), each a documented deviation
of the default configuration: the official MLP mask decoder (default: SAM decoder on the patch grid), sigmoid
outputs fed to BCE-with-logits ("double sigmoid", seg and gate losses), the tag-gate mean over padded name tokens,
and the frozen FPN following model.train() (BatchNorm batch statistics in training mode).
"""
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from forgrepro.data.batch import MMTTBatch
from forgrepro.data.text import blip_pre_caption, bert_tokenizer
from forgrepro.losses import contrastive_loss, gate_loss, lm_loss, seg_loss
from forgrepro.methods.forgerytalker import ForgeryTalkerConfig, build_forgerytalker, forgerytalker_loss
from forgrepro.methods.forgerytalker_official import (OFFICIAL_NEVER_READ, export_official_forgerytalker_weights,
                                                      load_official_forgerytalker_weights, official_forgerytalker_config,
                                                      official_key_links)
from forgrepro.models.explainer import ExplainerConfig, GenerationSettings
from forgrepro.models.mask_decoder import MaskDecoderConfig
from forgrepro.models.prompter import PrompterConfig, TagGateConfig, fpn_loss
from forgrepro.models.qformer import QFormerConfig
from forgrepro.models.vision import EvaViTConfig

GOLDEN = Path(__file__).parent / "golden" / "official"
TOL = 1e-5


def maxdiff(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def close(name, ours, official, tol=TOL):
    assert ours.shape == official.shape, f"{name}: shape {tuple(ours.shape)} vs official {tuple(official.shape)}"
    d = maxdiff(ours, official)
    assert d <= tol, f"{name}: max |forgrepro - official| = {d:.3g} > {tol}"


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(GOLDEN / "forgerytalker.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["json"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return tensors, state, meta


@pytest.fixture(scope="module")
def tokenizers(golden, tmp_path_factory):
    "The fixture's tokenizers: a bert-base-uncased subset (+ LAVIS' [DEC]) and the small T5-style WordPiece."
    import copy
    from transformers import PreTrainedTokenizerFast
    _, _, meta = golden
    d = tmp_path_factory.mktemp("ft_tokenizers")
    (d / "vocab.txt").write_text("\n".join(meta["bert_vocab"]) + "\n", encoding="utf-8")
    (d / "t5.json").write_text(meta["t5_tokenizer"], encoding="utf-8")
    qtok = copy.deepcopy(bert_tokenizer(str(d / "vocab.txt"), verify=False))
    qtok.truncation_side = "left"
    qtok.add_special_tokens({"bos_token": "[DEC]"})          # LAVIS Blip2Base.init_tokenizer
    ltok = PreTrainedTokenizerFast(tokenizer_file=str(d / "t5.json"), pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    return qtok, ltok


def reduced_config(meta) -> ForgeryTalkerConfig:
    "forgrepro's config for the fixture's sizes, with the official-compatible switches."
    s, b, t5, f, md = meta["sizes"], meta["sizes"]["bert"], meta["sizes"]["t5"], meta["sizes"]["fpn"], meta["sizes"]["mask"]
    w = s["eva_width"]
    base = ForgeryTalkerConfig(
        vision=EvaViTConfig(image_size=s["image"], patch_size=14, width=w, depth=s["eva_depth"], heads=s["eva_heads"],
                            intermediate_size=int(w * s["eva_mlp_ratio"]), initializer_range=0.02, ln_vision_eps=1e-5),
        qformer=QFormerConfig(hidden_size=b["hidden_size"], num_layers=s["qformer_layers"], num_heads=b["num_attention_heads"],
                              intermediate_size=b["intermediate_size"], cross_attention_frequency=2, encoder_width=w,
                              num_query_tokens=s["num_query_token"], max_position_embeddings=b["max_position_embeddings"],
                              hidden_dropout=0.0, attention_dropout=0.0, max_txt_len=meta["max_txt_len"]),
        llm=ExplainerConfig(kind="t5", d_model=t5["d_model"], d_ff=t5["d_ff"], d_kv=t5["d_kv"], num_layers=t5["num_layers"],
                            num_decoder_layers=t5["num_decoder_layers"], num_heads=t5["num_heads"],
                            feed_forward_proj="gated-gelu", dropout=0.0, vocab_size=meta["t5_vocab_size"],
                            max_output_len=meta["max_output_txt_len"], tie_word_embeddings=False, dense_act_fn="gelu"),
        prompter=PrompterConfig(image_size=s["image"], patch_size=f["patch"], hidden_size=f["hidden"], num_layers=f["layers"],
                                num_heads=f["heads"], mlp_dim=f["mlp"], dropout=0.0, attention_dropout=0.0),
        mask_decoder=MaskDecoderConfig(hidden_size=w, mlp_dim=md["mlp_dim"], num_layers=md["depth"], num_heads=md["num_heads"],
                                       out_size=s["image"], prompt_heads=s["prompt_heads"]),
        tag_gate=TagGateConfig(hidden_size=b["hidden_size"], num_layers=b["num_hidden_layers"], num_heads=b["num_attention_heads"],
                               intermediate_size=b["intermediate_size"], cross_attention_heads=s["gate_heads"], dropout=0.0),
        frozen_llm_dtype=None)
    return official_forgerytalker_config(base)


def build(golden, tokenizers, objective="finetune"):
    tensors, state, meta = golden
    qtok, ltok = tokenizers
    model = build_forgerytalker(replace(reduced_config(meta), objective=objective), llm_tokenizer=ltok,
                                qformer_tokenizer=qtok, load_weights=False)
    report = load_official_forgerytalker_weights(model, state, strict=True, where="forgerytalker.safetensors")
    return model, report


def batch_of(tensors, meta) -> MMTTBatch:
    return MMTTBatch(image=tensors["input.image"], mask=tensors["input.mask"], multilabel=tensors["input.multilabel"],
                     meta=[{"image_id": f"img{i}", "caption": c} for i, c in enumerate(meta["captions"])])


def test_fixture_texts_are_preprocessed(golden):
    _, _, meta = golden
    assert all(blip_pre_caption(c) == c for c in meta["captions"])   # official samples pass through `blip_caption`


def test_every_official_key_is_used(golden, tokenizers):
    _, state, _ = golden
    model, report = build(golden, tokenizers)
    assert not report.missing
    assert set(report.loaded) | set(report.ignored) == set(state)
    never = {k for k in state if any(re.fullmatch(p, k) for p in OFFICIAL_NEVER_READ)}
    assert never == {"Qformer.bert.embeddings.position_ids", "seg_proj.weight", "seg_proj.bias",
                     "bert_model.pooler.dense.weight", "bert_model.pooler.dense.bias"}
    stage1_only = {k for k in state if k.startswith(("mlm_head.", "text_proj."))}   # pre-training heads
    assert set(report.ignored) == never | stage1_only
    pre, report_pre = build(golden, tokenizers, "pretrain")
    assert not report_pre.missing and stage1_only <= set(report_pre.loaded)


def test_export_gives_the_official_state(golden, tokenizers):
    _, state, _ = golden
    model, report = build(golden, tokenizers)
    exported = export_official_forgerytalker_weights(model)
    assert set(exported) == set(report.loaded)
    for k, v in exported.items(): assert torch.equal(v, state[k]), k


def test_fpn(golden, tokenizers):
    tensors, _, meta = golden
    model, _ = build(golden, tokenizers)
    fpn = model.region_source.prompter
    image, labels = tensors["input.image"], tensors["input.multilabel"]
    with torch.no_grad():
        close("FPN logits (eval)", fpn.eval()(image).logits, tensors["fpn.eval.logits"])
        logits = fpn.train()(image).logits
    close("FPN logits (train, BatchNorm batch statistics)", logits, tensors["fpn.train.logits"])
    lo = fpn_loss(logits, labels, neg_weight=0.2, variant="official")
    for term in ("bce", "focal", "dice", "jaccard"): close(f"FPN {term}", lo.parts[term], tensors[f"fpn.train.{term}"])
    # the official value adds 0.5 * a CE computed under no_grad on the middle block's logits (`features_loss`): a
    # constant for the gradient that forgrepro does not compute, so only the 4-term half is compared
    mean4 = sum(tensors[f"fpn.train.{t}"] for t in ("bce", "focal", "dice", "jaccard")) / 4
    close("FPN loss (gradient-carrying part)", lo.total, 0.5 * mean4)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_stage2(golden, tokenizers, mode):
    tensors, _, meta = golden
    p = f"finetune.{mode}."
    model, _ = build(golden, tokenizers)
    model.train(mode == "train"); model.generate_in_eval = False
    assert model.region_source.training == (mode == "train")        # official: the FPN follows model.train()
    batch = batch_of(tensors, meta)
    with torch.set_grad_enabled(mode == "train"):
        out = model(batch)
        image_embeds = model.encode_image(batch.image)
        prompts = model.prompt_tokenizer.instructions(out.regions)
        hidden = model.query(image_embeds, prompts.qformer)
        tokens = model.region_prompt_encoder(model.llm.embed(prompts.labels.input_ids), image_embeds)
    assert out.instructions == meta[p + "prompts"]
    assert [" ".join(n) for n in map(model.prompt_tokenizer.region_names, out.regions)] == meta[p + "labels"]
    close("vision tokens", image_embeds, tensors[p + "vision"])
    close("FPN logits", out.fpn_logits, tensors[p + "fpn_logits"])
    close("Q-Former hidden states", hidden, tensors[p + "qformer_hidden"])
    close("projected queries (t5_proj)", model.language_projection(hidden[:, : model.query_tokens.shape[1]]),
          tensors[p + "qformer_features"])
    close("T5 logits", out.lm_logits, tensors[p + "t5_logits"])
    close("region prompt tokens", tokens[:, 1:], tensors[p + "prompt_tokens"])
    close("mask logits", out.mask_logits[:, 0], tensors[p + "mask_logits"])
    close("mask probabilities (seg_out)", torch.sigmoid(out.mask_logits[:, 0]), tensors[p + "seg_out"])
    lo = forgerytalker_loss(out, batch, model_loss_weights(golden))
    close("LM loss", lo.parts["lm"], tensors[p + "lm_loss"])
    close("seg loss", lo.parts["seg"], tensors[p + "seg_loss"])
    close("gate loss", lo.parts["gate"], tensors[p + "gate_loss"])
    close("stage-2 loss", lo.total, tensors[p + "loss"])


def model_loss_weights(golden):
    return reduced_config(golden[2]).loss


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_generation(golden, tokenizers, search):
    tensors, _, meta = golden
    model, _ = build(golden, tokenizers)
    model.eval()
    s = meta[f"generate.{search}.settings"]
    gen = GenerationSettings(num_beams=s["num_beams"], max_len=s["max_length"], min_len=s["min_length"],
                             repetition_penalty=s["repetition_penalty"], length_penalty=s["length_penalty"])
    with torch.no_grad():
        image_embeds, rp, prompts, prefix = model._context(tensors["input.image"], None)
        ids = model.llm.generate(prefix, prompts.llm, gen)
        mask_logits = model.predict_mask(image_embeds, prompts.labels)
    official = tensors[f"generate.{search}.ids"]
    assert ids.shape == official.shape and torch.equal(ids, official), f"{search} ids differ:\n{ids}\n{official}"
    assert model.prompt_tokenizer.decode(ids) == meta[f"generate.{search}.texts"]
    close("mask logits (generate)", mask_logits[:, 0], tensors[f"generate.{search}.mask_logits"])
    close("seg_out (generate)", torch.sigmoid(mask_logits[:, 0]), tensors[f"generate.{search}.seg_out"])


def test_pretraining(golden, tokenizers):
    tensors, _, meta = golden
    model, _ = build(golden, tokenizers, "pretrain")
    model.train()
    batch = batch_of(tensors, meta)
    out = model(batch)
    lo = forgerytalker_loss(out, batch, model_loss_weights(golden))
    close("MLM loss", lo.parts["mlm"], tensors["pretrain.mlm_loss"])
    close("LM loss (copy task)", lo.parts["lm"], tensors["pretrain.lm_loss"])
    close("seg loss", lo.parts["seg"], tensors["pretrain.seg_loss"])
    close("contrastive loss", lo.parts["contrastive"], tensors["pretrain.contrastive_loss"])
    close("pre-training loss", lo.total, tensors["pretrain.loss"])
    close("mask logits", out.mask_logits[:, 0], tensors["pretrain.mask_logits"])


def test_published_size_key_map(golden):
    "Every official key of the published model maps onto forgrepro's paper-size model, shapes equal (meta device)."
    from forgrepro.data.prompts import load_qformer_tokenizer
    from transformers import PreTrainedTokenizerFast
    import tempfile
    keys = json.loads((GOLDEN / "forgerytalker_keys_paper.json").read_text())["keys"]
    _, _, meta = golden
    with tempfile.TemporaryDirectory() as d:   # any T5-style tokenizer: the vocabulary is Flan-T5's 32128 rows
        (Path(d) / "t5.json").write_text(meta["t5_tokenizer"], encoding="utf-8")
        ltok = PreTrainedTokenizerFast(tokenizer_file=str(Path(d) / "t5.json"), pad_token="<pad>", eos_token="</s>",
                                       unk_token="<unk>")
    shapes = {}
    for objective in ("finetune", "pretrain"):   # the pre-training heads exist only in the pre-training model
        with torch.device("meta"):
            model = build_forgerytalker(replace(official_forgerytalker_config(), objective=objective), llm_tokenizer=ltok,
                                        qformer_tokenizer=load_qformer_tokenizer(), load_weights=False)
        for link in official_key_links(model): shapes |= dict(zip(link.official, link.official_shapes))
    never = {k for k in keys if any(re.fullmatch(p, k) for p in OFFICIAL_NEVER_READ)}
    assert not set(shapes) - set(keys), sorted(set(shapes) - set(keys))[:10]
    assert set(keys) - set(shapes) == never, sorted(set(keys) - set(shapes) - never)[:10]
    bad = {k: (keys[k]["shape"], shapes[k]) for k in shapes if list(shapes[k]) != keys[k]["shape"]}
    assert not bad, bad
    assert len(keys) == 2253 and len(never) == 5
