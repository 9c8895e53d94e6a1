"""Golden fixtures from the official HAMMER (`rshaojimmy/MultiModal-DeepFake`) and ASAP (`CriliasMiller/ASAP`) code.

Run through `scripts/make_official_fixtures.py` (its docstring has the environment). The official models run
UNMODIFIED, imported from the checkout; the only patches are environmental and listed here:

- `BertForTokenClassification.from_pretrained(name, config=...)` builds the class from the config (no hub download);
  token ids are fed directly (no tokenizer).
- `models.HAMMER.VisionTransformer` / `models.ASAP.VisionTransformer` are called with the reduced width, depth, heads
  and MLP ratio (the constructors hard-code ViT-B/16); every other argument is the official one.
- `torch.distributed`: a 1-process gloo group for `concat_all_gather`.
- Dropout probabilities are 0 in the reduced BERT config (the ViT's are 0 already), so training-mode passes are
  deterministic; data augmentation is not involved (inputs are tensors).
- Per-term losses and intermediates are the official `forward`'s own local variables, read at its return through
  `sys.settrace` (`common.RecordLocals`); the returned losses are checked to be the same tensors.

Reduced configuration (both): ViT depth 2, width 48, 4 heads, MLP ratio 2, patch 16; BERT 4 layers (fusion from
layer 2), width 48, 4 heads, FFN 96, vocabulary 128; contrastive width 16, queue 32 (pointer at 16), momentum 0.8,
alpha 0.4, token momentum on (`train.sh`). The official local branch hard-codes 12 attention heads, hence width 48
(not 64). HAMMER runs at 64 px; ASAP at 256 px, because its dataset code (`dataset/dataset.py::get_res_pos`,
`get_res_pos_Attention`) rasterises the MGCA and PMM targets on a hard-coded 256 px / 16 px grid, and we take those
targets from the official functions (ASAP's 257-token intermediates are saved for two samples, to keep the file
small). Images: 64 px uint8 in the file, (u8/255 − 0.5)/0.25, nearest-upsampled ×4 for ASAP.

Weights: the official init, then `common.perturb_` (seeded; LayerNorms, biases, position embeddings non-trivial),
momentum teachers = student + noise (`common.perturb_teacher_`), queues = fixed unit columns, temp 0.2,
ASAP UtilsB/UtilsC 0.6/0.35. One batch of 8: two pristine, face swap, face attribute, text swap, text attribute,
face swap + text swap, face attribute + text attribute.

Saved per method (`<out>/hammer.safetensors`, `<out>/asap.safetensors`): `state/<official key>` (the complete
official state dict, queues and momentum encoders included), `input/*`, `eval/*` (test-time outputs and
intermediates), `train/*` (training-mode outputs), `loss/*` (every loss term, and `total` as `train.py` weights them),
`after/*` (queues, pointer and three teacher tensors after the step); the metadata holds the configs, labels, token
positions and environment. `<out>/hammer_paper_keys.json`, `<out>/asap_paper_keys.json`: every key of the full-size
official models (parameters on the meta device) with its shape.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from .common import (RecordLocals, fill_unit_columns_, official_checkout, parameters_on_meta, patched, perturb_,
                     perturb_teacher_, save_fixture, single_process_group)

PACKAGES = ("models", "tools", "dataset", "optim", "scheduler", "utils")
TEACHERS = ("visual_encoder_m.", "vision_proj_m.", "text_encoder_m.", "text_proj_m.")

BERT_REDUCED = {
    "architectures": ["BertForTokenClassification"], "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0, "hidden_size": 48, "initializer_range": 0.02, "intermediate_size": 96,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 4,
    "num_hidden_layers": 4, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 128, "fusion_layer": 2,
    "encoder_width": 48,
}
VIT_REDUCED = {"embed_dim": 48, "depth": 2, "num_heads": 4, "mlp_ratio": 2}
CONFIG_REDUCED = {"vision_width": 48, "embed_dim": 16, "temp": 0.07, "queue_size": 32, "momentum": 0.8,
                  "alpha": 0.4, "label_smoothing": 0.0, "loss_MAC_wgt": 0.1, "loss_BIC_wgt": 1, "loss_bbox_wgt": 0.1,
                  "loss_giou_wgt": 0.1, "loss_TMG_wgt": 1, "loss_MLC_wgt": 1}
IMAGE_RES = {"hammer": 64, "asap": 256}
QUEUE_PTR, TEMP, UTILS_B, UTILS_C, ALPHA = 16, 0.2, 0.6, 0.35, 0.4

# The batch: fake_cls strings, text lengths (with [CLS], no [SEP]), fake token positions (after [CLS]) and the fake
# face box (x, y, w, h) in pixels of the 256 px training image (dataset.py after its resize).
LABELS = ["orig", "face_swap", "face_attribute", "text_swap", "text_attribute", "face_swap&text_swap",
          "face_attribute&text_attribute", "orig"]
TEXT_LEN = [12, 9, 7, 12, 10, 8, 11, 6]
CAPTION_LEN = [10, 7, 9, 5, 10, 8, 6, 9]
EXPLANATION_LEN = [14, 11, 8, 13, 9, 14, 12, 10]
FAKE_TOKENS = [[], [], [], [2, 3, 4, 5], [1, 6], [0, 1, 2], [3, 8], []]
BOXES = {1: (37.3, 52.9, 80.4, 101.7), 2: (120.6, 20.2, 60.1, 70.8), 5: (5.5, 140.3, 110.2, 90.9),
         6: (180.7, 170.1, 70.6, 80.3)}
CLS_ID, SEED = 101, 1234
# ASAP's (B, 257, 48) image-token intermediates are saved for two samples only (fixture size); every token of every
# sample still reaches the saved fusion states, boxes and per-patch PMM logits.
EVAL_TOKEN_ROWS = {"hammer": None, "asap": [0, 5]}


def image_from_u8(u8: torch.Tensor, image_res: int) -> torch.Tensor:
    "The float image fed to both models: (u8/255 − 0.5)/0.25, nearest-upsampled from 64 px to `image_res`."
    x = (u8.to(torch.float32) / 255.0 - 0.5) / 0.25
    f = image_res // u8.shape[-1]
    return x.repeat_interleave(f, dim=-1).repeat_interleave(f, dim=-2) if f > 1 else x


def _ids(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    "[CLS] + random word ids, 0-padded, as `text_input_adjust` leaves them (no [SEP])."
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(3, BERT_REDUCED["vocab_size"], (len(lengths), L), generator=g) * mask
    ids[:, 0] = CLS_ID
    return ids, mask


def make_batch(image_res: int) -> dict:
    "The fixed batch as tensors / lists (boxes as `dataset.py` turns pixel boxes into normalised cxcywh)."
    g = torch.Generator().manual_seed(SEED)
    u8 = torch.randint(0, 256, (len(LABELS), 3, 64, 64), generator=g, dtype=torch.uint8)
    ids, mask = _ids(TEXT_LEN, SEED + 1)
    cap_ids, cap_mask = _ids(CAPTION_LEN, SEED + 2)
    exp_ids, exp_mask = _ids(EXPLANATION_LEN, SEED + 3)
    box = torch.zeros(len(LABELS), 4)
    for i, (x, y, w, h) in BOXES.items():  # dataset.py::__getitem__, with W = H = image_res = 256
        cx, cy = x + 1 / 2 * w, y + 1 / 2 * h
        box[i] = torch.tensor([cx / 256, cy / 256, w / 256, h / 256], dtype=torch.float)
    for i, pos in enumerate(FAKE_TOKENS): assert all(p < TEXT_LEN[i] - 1 for p in pos)
    return dict(image_u8=u8, image=image_from_u8(u8, image_res), input_ids=ids, attention_mask=mask,
                caption_ids=cap_ids, caption_mask=cap_mask, explanation_ids=exp_ids, explanation_mask=exp_mask,
                fake_image_box=box)


def _environment(checkout: Path) -> dict:
    import timm
    import transformers
    sha = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"official_commit": sha or "unknown", "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "timm": timm.__version__}


def _build_official(kind: str, config: dict, bert: dict, vit_override: dict | None, tmp: Path):
    "Construct the official model class (`models.HAMMER.HAMMER` or `models.ASAP.ASAP`) with environment-only patches."
    import importlib
    mod = importlib.import_module(f"models.{kind.upper()}")
    xbert = importlib.import_module("models.xbert")
    bert_path = tmp / f"{kind}_bert.json"
    bert_path.write_text(json.dumps(bert))
    cfg = dict(config, bert_config=str(bert_path))
    args = SimpleNamespace(token_momentum=True)   # train.sh: --token_momentum

    def from_config(cls, name, config=None, **kwargs): return cls(config, **kwargs)   # no hub download

    vit = mod.VisionTransformer
    def reduced_vit(**kwargs): return vit(**{**kwargs, **(vit_override or {})})
    with patched(xbert.BertForTokenClassification, "from_pretrained", classmethod(from_config)), \
         patched(mod, "VisionTransformer", reduced_vit if vit_override else vit):
        kw = dict(init_deit=False) if kind == "hammer" else {}
        return getattr(mod, kind.upper())(args=args, config=cfg, text_encoder="bert-base-uncased", tokenizer=None, **kw)


def _prepare(model, kind: str) -> None:
    "Seeded non-trivial weights, teachers unlike the students, fixed queues, pointer at QUEUE_PTR."
    perturb_(model, SEED, skip=TEACHERS)
    perturb_teacher_(model.model_pairs, SEED + 7)
    with torch.no_grad():
        model.temp.fill_(TEMP)
        if kind == "asap": model.UtilsB.fill_(UTILS_B); model.UtilsC.fill_(UTILS_C)
        queues = ["image_queue", "text_queue"] + (["cap_queue", "prom_queue"] if kind == "asap" else [])
        for i, q in enumerate(queues): fill_unit_columns_(getattr(model, q), SEED + 100 + i)
        model.queue_ptr.fill_(QUEUE_PTR)


def _text(ids, mask): return SimpleNamespace(input_ids=ids.clone(), attention_mask=mask.clone())


def _res_pos(checkout_dataset_cls) -> tuple[torch.Tensor, torch.Tensor]:
    "MGCA (`get_res_pos_Attention`) and PMM (`get_res_pos`) patch targets from the official dataset code."
    n = len(LABELS)
    att, patch = torch.zeros(n, 256), torch.full((n, 256), -1.0)
    for i, (x, y, w, h) in BOXES.items():
        att[i] = checkout_dataset_cls.get_res_pos_Attention(None, x, y, w, h)
        patch[i] = checkout_dataset_cls.get_res_pos(None, x, y, w, h)
    return att, patch


def _out(prefix: str, values: dict) -> dict:
    return {f"{prefix}/{k}": v.detach().float() if v.is_floating_point() else v.detach() for k, v in values.items()}


def make_fixture(kind: str, checkout: Path, out: Path) -> Path:
    "Build the reduced official model, run it at test time and in training mode, save `<out>/<kind>.safetensors`."
    torch.manual_seed(SEED)
    image_res = IMAGE_RES[kind]
    config = dict(CONFIG_REDUCED, image_res=image_res)
    batch = make_batch(image_res)
    with tempfile.TemporaryDirectory() as d, official_checkout(checkout, PACKAGES), single_process_group(Path(d)):
        import importlib
        model = _build_official(kind, config, BERT_REDUCED, VIT_REDUCED, Path(d))
        _prepare(model, kind)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        text = _text(batch["input_ids"], batch["attention_mask"])
        image, box = batch["image"], batch["fake_image_box"]
        extra, inputs = (), dict(image_u8=batch["image_u8"], input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"], fake_image_box=box)
        if kind == "asap":
            DGM4_Dataset = importlib.import_module("dataset.dataset").DGM4_Dataset
            res_fake_pos, res_fake_pos_patch = _res_pos(DGM4_Dataset)
            cap, prom = _text(batch["caption_ids"], batch["caption_mask"]), _text(batch["explanation_ids"], batch["explanation_mask"])
            extra = (cap, prom, res_fake_pos, res_fake_pos_patch)
            inputs |= dict(caption_ids=batch["caption_ids"], caption_mask=batch["caption_mask"],
                           explanation_ids=batch["explanation_ids"], explanation_mask=batch["explanation_mask"],
                           res_fake_pos=res_fake_pos, res_fake_pos_patch=res_fake_pos_patch)
        fwd = type(model).forward

        # ---- test time (train.py / test.py: model.eval(), is_train=False)
        model.eval()
        with torch.no_grad(), RecordLocals(fwd) as rec:
            logits_real_fake, logits_multicls, output_coord, logits_tok = model(
                image, LABELS, _text(batch["input_ids"], batch["attention_mask"]), box, FAKE_TOKENS, *extra, is_train=False)
        ev = rec.last
        eval_out = dict(logits_real_fake=logits_real_fake, logits_multicls=logits_multicls, output_coord=output_coord,
                        logits_tok=logits_tok, image_embeds=ev["image_embeds"], text_embeds=ev["text_embeds"],
                        fusion=ev["output_pos"].last_hidden_state, local_feat_aggr=ev["local_feat_aggr"].squeeze(1),
                        local_feat_it_cross_attn=ev["local_feat_it_cross_attn"])
        rows = EVAL_TOKEN_ROWS[kind]
        if rows is not None:
            for k in ("image_embeds", "local_feat_it_cross_attn"): eval_out[k] = eval_out[k][rows]

        # ---- training mode (train.py: model.train(), alpha after epoch 0 = config alpha)
        model.train()
        with RecordLocals(fwd) as rec:
            returned = model(image, LABELS, _text(batch["input_ids"], batch["attention_mask"]), box, FAKE_TOKENS,
                             *extra, alpha=ALPHA)
        tr = rec.last
        names = ["loss_MAC", "loss_BIC", "loss_bbox", "loss_giou", "loss_TMG", "loss_MLC"]
        if kind == "asap":
            names[0] = "loss_vlc"; names.append("LossAnother")
        ret = dict(zip(names, returned))
        w = config
        total = (w["loss_MAC_wgt"] * ret[names[0]] + w["loss_BIC_wgt"] * ret["loss_BIC"] + w["loss_bbox_wgt"] * ret["loss_bbox"]
                 + w["loss_giou_wgt"] * ret["loss_giou"] + w["loss_TMG_wgt"] * ret["loss_TMG"] + w["loss_MLC_wgt"] * ret["loss_MLC"])
        if kind == "asap": total = total + 0.1 * ret["LossAnother"]      # asap/train.py l.160-166
        loss_keys = ["loss_i2t", "loss_t2i", "loss_i2i", "loss_t2t", "loss_MAC", "loss_BIC", "loss_MLC", "loss_bbox",
                     "loss_giou", "loss_TMG"]
        if kind == "asap":
            loss_keys += ["loss_i2c", "loss_c2i", "loss_c2c", "loss_i2p", "loss_p2i", "loss_p2p", "loss_eT", "loss_vlc",
                          "loss_mgca", "loss_IED", "loss_Patch", "LossAnother"]
        losses = {k.removeprefix("loss_"): tr[k] for k in loss_keys} | {"total": total}
        for k, v in ret.items(): assert torch.equal(v, tr[k]), k
        train_out = dict(logits_real_fake=tr["vl_output"], logits_multicls=tr["output_cls"], output_coord=tr["output_coord"],
                         logits_tok=tr["token_cls_output"].logits, logits_tok_m=tr["logits_m"],
                         sim_i2t=tr["sim_i2t"], sim_t2i=tr["sim_t2i"], sim_i2i=tr["sim_i2i"], sim_t2t=tr["sim_t2t"],
                         sim_i2t_m=tr["sim_i2t_m"], sim_t2i_m=tr["sim_t2i_m"], token_label=tr["token_label"],
                         multicls_label=tr["multicls_label"], itm_labels=tr["itm_labels"])
        if kind == "asap":
            train_out |= dict(logits_ied=tr["vl_output_m"], patch_logits=tr["patch_pre"].squeeze(2),
                              cross_logits=tr["pre_attentions_map"][:, 1:, :],
                              mgca_target=tr["attentionMapGT"].to(torch.uint8),     # 0/1
                              sim_i2c=tr["sim_i2c"], sim_c2i=tr["sim_c2i"], sim_c2c=tr["sim_c2c"],
                              sim_i2p=tr["sim_i2p"], sim_p2i=tr["sim_p2i"], sim_p2p=tr["sim_p2p"])
        after = {q: getattr(model, q) for q in ("image_queue", "text_queue", "queue_ptr")}
        if kind == "asap": after |= {q: getattr(model, q) for q in ("cap_queue", "prom_queue")}
        after |= {"visual_encoder_m.pos_embed": model.visual_encoder_m.pos_embed,
                  "text_proj_m.weight": model.text_proj_m.weight,
                  "text_encoder_m.classifier.6.weight": model.text_encoder_m.classifier[6].weight}
        meta = dict(config=config, bert_config=BERT_REDUCED, vit_override=VIT_REDUCED, labels=LABELS,
                    fake_token_pos=FAKE_TOKENS, boxes_xywh_256px={str(k): v for k, v in BOXES.items()}, alpha=ALPHA,
                    image="image = (image_u8/255 - 0.5)/0.25, nearest-upsampled to config.image_res",
                    token_momentum=True, queue_ptr=QUEUE_PTR, eval_token_rows=EVAL_TOKEN_ROWS[kind], seed=SEED, environment=_environment(checkout),
                    command=" ".join(sys.argv))
        tensors = {f"state/{k}": v for k, v in state.items()}
        tensors |= _out("input", inputs) | _out("eval", eval_out) | _out("train", train_out) | _out("loss", losses)
        tensors |= _out("after", after)
    path = out / f"{kind}.safetensors"
    size = save_fixture(path, tensors, meta)
    print(f"{kind}: {path} ({size / 1e6:.2f} MB, {len(state)} official keys, losses: "
          + ", ".join(f"{k}={float(v):.5f}" for k, v in losses.items()) + ")")
    return path


def paper_key_shapes(kind: str, checkout: Path, out: Path) -> Path:
    "Every key of the full-size official model (parameters on the meta device, its own configs) -> shape, as JSON."
    import yaml
    with tempfile.TemporaryDirectory() as d, official_checkout(checkout, PACKAGES):
        config = yaml.safe_load((checkout / "configs" / "train.yaml").read_text())
        bert = json.loads((checkout / "configs" / "config_bert.json").read_text())
        with parameters_on_meta():  # buffers (queues) are real; parameters take no memory
            model = _build_official(kind, config, bert, None, Path(d))
        assert all(p.is_meta for p in model.parameters())
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    path = out / f"{kind}_paper_keys.json"
    path.write_text(json.dumps({"official_commit": _environment(checkout)["official_commit"],
                                "config": {k: config[k] for k in ("image_res", "vision_width", "embed_dim", "queue_size")},
                                "bert_config": bert, "shapes": shapes}, indent=0, sort_keys=True) + "\n")
    print(f"{kind}: {path} ({len(shapes)} keys at the published size, "
          f"{sum(torch.Size(s).numel() for s in shapes.values()) / 1e6:.1f} M values)")
    return path


def make_hammer_fixtures(checkout: Path, out: Path) -> list[Path]:
    return [make_fixture("hammer", Path(checkout), Path(out)), paper_key_shapes("hammer", Path(checkout), Path(out))]


def make_asap_fixtures(checkout: Path, out: Path) -> list[Path]:
    return [make_fixture("asap", Path(checkout), Path(out)), paper_key_shapes("asap", Path(checkout), Path(out))]
