"""Golden fixtures from the official ForgeryTalker ("DFF") code at a reduced configuration.

Official code: github:NattyLianJc/Generating-Attribution-Reports (LAVIS-based), imported unmodified from a checkout
the user names (nothing of it is copied here). Model: `lavis/models/blip2_models/blip2_t5_instruct.py` (bt5i),
`lavis/models/mask_decoder.py`, `lavis/models/TwoWayTransformer.py`, `lavis/models/eva_vit.py`,
`lavis/models/blip2_models/Qformer.py`, `lavis/models/blip2_models/modeling_t5.py`, FPN `vit/models/modeling.py` +
`CoordConv.py`. Checked with checkout ff8b0e97f1fc (2026-04-20).

Environment (a separate venv; these exact versions worked, CPU only):

    python3.11 -m venv venv
    venv/bin/pip install torch==2.13.0                    # the local CPU wheel
    venv/bin/pip install transformers==4.33.2             # official requirements.txt (tokenizers 0.13.3)
    venv/bin/pip install timm==0.4.12 --no-deps           # eva_vit / dist_utils import timm
    venv/bin/pip install omegaconf==2.3.0 iopath==0.1.10 pandas pyyaml scipy ml_collections==0.1.1 pillow safetensors
    venv/bin/pip install fairscale==0.4.4 --no-deps       # imported by lavis/models/clip_vit.py (never run)
    venv/bin/python scripts/official_fixtures/forgerytalker.py --checkout PATH --out tests/golden/official/ \
        --bert-vocab .../bert-base-uncased/vocab.txt

(numpy 2.4.6, safetensors 0.8.0, huggingface-hub 0.36.2 came with them.)

Stubs (imports unrelated to the model code):
- `torchvision` (and every submodule) is a stub module whose attributes are dummy classes: the CPU torch wheel has no
  matching torchvision, and only timm's data transforms and LAVIS' download helpers import it.
- `lavis` and `lavis.models` are registered as bare packages (their `__init__` would import every dataset builder,
  processor and task: decord, webdataset, cv2, spacy, ...); `lavis.models.BaseModel` is set because
  `lavis/common/registry.py::register_model` imports it from there. Every module the model uses is the official file.

How the official model is built (`_assemble`): `Blip2T5Instruct.__init__` hardcodes the published widths (1408, 768,
224*224) and loads published weights (EVA-g, Flan-T5-XL, bert-base, the FPN), so the object is created with
`__new__` and its attributes are set in the order and with the classes of `__init__` (lines 92-189) at reduced sizes;
every forward method that runs is the official one, unmodified. Departures from `__init__`, all deliberate:
- the T5 stays fp32 (`__init__` casts the frozen T5 to bf16, which runs only under CUDA autocast);
- the FPN / T5 / tag BERT are random instead of loaded, dropout is 0 everywhere (deterministic training-mode losses);
- widths: EVA 32 wide, 2 blocks, 2 heads, 56 px (4x4 patches of 14); Q-Former and tag BERT 32 wide, 2 layers; Flan-T5
  layout (gated GELU, untied head, official `dense_act_fn='gelu'` override) 32 wide, 2+2 layers; mask decoder 32 wide
  with a 56x56 mask; FPN ViT 32 wide, 4 blocks (the official forward needs >= 4: it reads block `L // 2`).
- the BERT vocabulary is the subset of bert-base-uncased tokens that the fixture texts use, in their original order
  (WordPiece longest-match gives the same pieces as the full vocabulary); the T5 vocabulary is a small WordPiece built
  from the same texts. Both are stored in the fixture metadata.
Weights are seeded random, perturbed so every LayerNorm / BatchNorm, bias, position embedding, CLS / query / mask token
is non-trivial.

Outputs (safetensors; metadata holds JSON): `forgerytalker.safetensors` (state dict with official key names under
`state.`, inputs, every output / loss / intermediate) and `forgerytalker_keys_paper.json` (official key -> shape at the
published sizes, built on the meta device).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import subprocess
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import torch
from torch import nn

SIZE = 56          # image and mask side (4x4 EVA patches of 14)
BATCH = 3
CAPTIONS = [       # already in LAVIS `blip_caption` form (lower case, no . ! " ( ) * # : ; ~), so pre_caption is a no-op
    "the left eye looks blurred and the skin near the nose is too smooth, with unnatural lines around the lips",
    "the face appears natural, but the hair edge is jagged and the teeth show a mismatch in color",
    "the chin and jaw are distorted, the eyebrow texture repeats and the ear is missing detail",
]
GREEDY = dict(use_nucleus_sampling=False, num_beams=1, max_length=12, min_length=5)   # repetition 1.5, length 1.0 default
BEAM = dict(use_nucleus_sampling=False, num_beams=5, max_length=12, min_length=5)


# ---------------------------------------------------------------------------------------------------------------------
# importing the official modules
class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"): raise AttributeError(name)
        return _StubMeta(name, (object,), {})

    def __call__(cls, *a, **k): return cls


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"): raise AttributeError(name)
        return _StubMeta(name, (object,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots): self.roots = set(roots)

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots: return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        m = _StubModule(spec.name); m.__path__ = []; return m

    def exec_module(self, module): pass


def import_official(checkout: Path) -> types.SimpleNamespace:
    "The official modules, imported unmodified from `checkout` (stubs: torchvision; bare `lavis`/`lavis.models`)."
    checkout = Path(checkout).resolve()
    if not (checkout / "lavis/models/blip2_models/blip2_t5_instruct.py").exists():
        raise FileNotFoundError(f"{checkout}: not a Generating-Attribution-Reports checkout (no blip2_t5_instruct.py)")
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path): sys.meta_path.insert(0, _StubFinder(["torchvision"]))
    sys.path.insert(0, str(checkout))
    for name, sub in (("lavis", "lavis"), ("lavis.models", "lavis/models")):
        pkg = types.ModuleType(name); pkg.__path__ = [str(checkout / sub)]; sys.modules[name] = pkg
    base = importlib.import_module("lavis.models.base_model")
    sys.modules["lavis.models"].BaseModel = base.BaseModel
    imp = importlib.import_module
    return types.SimpleNamespace(
        checkout=checkout, eva=imp("lavis.models.eva_vit"), blip2=imp("lavis.models.blip2_models.blip2"),
        qformer=imp("lavis.models.blip2_models.Qformer"), t5=imp("lavis.models.blip2_models.modeling_t5"),
        mask=imp("lavis.models.mask_decoder"), twoway=imp("lavis.models.TwoWayTransformer"),
        fpn=imp("vit.models.modeling"), fpn_configs=imp("vit.models.configs"),
        bt5i=imp("lavis.models.blip2_models.blip2_t5_instruct"))


def official_regions(checkout: Path) -> list[str]:
    "The 21 region names, read from `self.multi_label = [...]` in the official `Blip2T5Instruct.__init__`."
    tree = ast.parse((Path(checkout) / "lavis/models/blip2_models/blip2_t5_instruct.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "multi_label"
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError("self.multi_label not found in blip2_t5_instruct.py")


# ---------------------------------------------------------------------------------------------------------------------
# tokenizers
def _instruction_texts(regions: list[str]) -> list[str]:
    "Every word the official instruction template can produce (read from the official source, not retyped)."
    src = (importlib.import_module("lavis.models.blip2_models.blip2_t5_instruct").__file__)
    tree = ast.parse(Path(src).read_text(encoding="utf-8"))
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
             and "facial areas may have been modified" in n.value]
    for js in ast.walk(tree):  # the f-string variant: take its literal parts
        if isinstance(js, ast.JoinedStr):
            parts = [v.value for v in js.values if isinstance(v, ast.Constant)]
            if any("facial areas may have been modified" in p for p in parts): texts.append(" ".join(parts))
    return texts + [", ".join(regions), " ".join(regions)]


def subset_bert_vocab(full_vocab: Path, texts: list[str]) -> list[str]:
    "bert-base-uncased tokens the texts use (+ specials), in their original order."
    from transformers import BertTokenizer
    full = BertTokenizer(str(full_vocab))
    used = {t for s in texts for t in full.tokenize(s)} | {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    vocab = [t for t in Path(full_vocab).read_text(encoding="utf-8").split("\n") if t in used]
    assert set(vocab) == used, sorted(used - set(vocab))
    return vocab


def t5_tokenizer_json(texts: list[str]) -> str:
    "A small WordPiece tokenizer with T5's special ids (<pad> 0, </s> 1, <unk> 2) appending </s>, as JSON."
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    norm = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    pre = pre_tokenizers.BertPreTokenizer()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))})
    chars = sorted({c for w in words for c in w})
    vocab = ["<pad>", "</s>", "<unk>"] + chars + ["##" + c for c in chars] + [w for w in words if len(w) > 1]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok.to_str()


# ---------------------------------------------------------------------------------------------------------------------
# assembling the official model
def reduced_sizes(bert_vocab: int) -> dict:
    return dict(image=SIZE, eva_width=32, eva_depth=2, eva_heads=2, eva_mlp_ratio=4.3637, num_query_token=4,
                bert=dict(vocab_size=bert_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, pad_token_id=0,
                          hidden_act="gelu", type_vocab_size=2, initializer_range=0.02),
                qformer_layers=2, t5=dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                                          dropout_rate=0.0), t5_extra_vocab=4,
                mask=dict(depth=2, mlp_dim=64, num_heads=2), prompt_heads=8, gate_heads=8,
                fpn=dict(patch=14, hidden=32, mlp=64, heads=2, layers=4, dropout=0.0))


def paper_sizes() -> dict:
    "Published sizes: EVA ViT-g/14, bert-base-uncased Q-Former and tag BERT, Flan-T5-XL, 1408 mask decoder, ViT-H/14."
    # bert-base-uncased / google/flan-t5-xl config.json values; EVA-g from `create_eva_vit_g`; FPN `get_h14_config`.
    return dict(image=224, eva_width=1408, eva_depth=39, eva_heads=1408 // 88, eva_mlp_ratio=4.3637, num_query_token=32,
                bert=dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, max_position_embeddings=512, hidden_dropout_prob=0.1,
                          attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12, pad_token_id=0, hidden_act="gelu",
                          type_vocab_size=2, initializer_range=0.02),
                qformer_layers=12, t5=dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
                                           num_heads=32, dropout_rate=0.1), t5_vocab=32128,
                mask=dict(depth=2, mlp_dim=2048, num_heads=8), prompt_heads=8, gate_heads=8,
                fpn=dict(patch=14, hidden=1280, mlp=5120, heads=16, layers=32, dropout=0.1))


def _fpn_config(mods, f: dict):
    "An `ml_collections` config shaped like `configs.get_h14_config()` (the released FPN) with the given sizes."
    cfg = mods.fpn_configs.get_h14_config()
    cfg.patches.size = (f["patch"], f["patch"]); cfg.hidden_size = f["hidden"]
    cfg.transformer.mlp_dim, cfg.transformer.num_heads, cfg.transformer.num_layers = f["mlp"], f["heads"], f["layers"]
    cfg.transformer.dropout_rate = f["dropout"]
    return cfg


def _assemble(mods, sizes: dict, *, bert_dir: Path | None, t5_dir: Path | None, regions: list[str],
              tokenizer_len: int | None = None):
    """`Blip2T5Instruct` with its attributes set as `__init__` (bt5i.py 90-189) sets them, at `sizes`.

    With `bert_dir`/`t5_dir` None (meta-device key listing) no tokenizer is built: `tokenizer_len` gives len(tokenizer).
    """
    from transformers import BertConfig, BertModel, BertTokenizer, T5TokenizerFast
    B2 = mods.bt5i.Blip2T5Instruct
    m = B2.__new__(B2); nn.Module.__init__(m)
    if bert_dir is not None:
        m.tokenizer = B2.init_tokenizer(truncation_side="left")   # reads ./model_parameter/bert-base-uncased (cwd)
        tok_len, tok_vocab = len(m.tokenizer), m.tokenizer.vocab_size
    else:
        tok_len, tok_vocab = tokenizer_len, sizes["bert"]["vocab_size"]
    visual = mods.eva.VisionTransformer(       # the arguments of `create_eva_vit_g`, widths from `sizes`
        img_size=sizes["image"], patch_size=14, use_mean_pooling=False, embed_dim=sizes["eva_width"],
        depth=sizes["eva_depth"], num_heads=sizes["eva_heads"], mlp_ratio=sizes["eva_mlp_ratio"], qkv_bias=True,
        drop_path_rate=0, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_checkpoint=False)
    m.visual_encoder, m.ln_vision = visual, mods.blip2.LayerNorm(visual.num_features)
    for _, p in m.visual_encoder.named_parameters(): p.requires_grad = False        # freeze_vit=True
    m.visual_encoder = m.visual_encoder.eval()
    m.visual_encoder.train = mods.blip2.disabled_train
    bert_cfg = BertConfig(**sizes["bert"])
    if bert_dir is not None:
        m.Qformer, m.query_tokens = B2.init_Qformer(sizes["num_query_token"], visual.num_features,
                                                    bert_folder=str(bert_dir), num_hidden_layers=sizes["qformer_layers"])
        m.Qformer.resize_token_embeddings(tok_len)                                  # qformer_text_input=True
    else:  # meta device: build at the resized vocabulary directly (resize copies weights)
        qc = BertConfig(**{**sizes["bert"], "vocab_size": tok_len, "num_hidden_layers": sizes["qformer_layers"]})
        qc.encoder_width, qc.add_cross_attention, qc.cross_attention_freq = visual.num_features, True, 2
        qc.query_length = sizes["num_query_token"]
        m.Qformer = mods.qformer.BertLMHeadModel(config=qc)
        m.query_tokens = nn.Parameter(torch.zeros(1, sizes["num_query_token"], qc.hidden_size))
    m.Qformer.cls = None
    if t5_dir is not None:
        m.t5_tokenizer = T5TokenizerFast.from_pretrained(str(t5_dir), truncation_side="left")
        m.t5_output_tokenizer = T5TokenizerFast.from_pretrained(str(t5_dir), truncation_side="right")
        t5_vocab = len(m.t5_tokenizer) + sizes["t5_extra_vocab"]
    else:
        t5_vocab = sizes["t5_vocab"]
    t5_config = mods.t5.T5Config(vocab_size=t5_vocab, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **sizes["t5"])
    t5_config.dense_act_fn = "gelu"                                                 # bt5i.py line 130
    m.t5_model = mods.t5.T5ForConditionalGeneration(t5_config)
    for _, p in m.t5_model.named_parameters(): p.requires_grad = False            # (the bf16 cast is skipped: fp32)
    hq, d, cv, hb = m.Qformer.config.hidden_size, t5_config.d_model, visual.num_features, bert_cfg.hidden_size
    m.t5_proj = nn.Linear(hq, d)
    m.seg_proj = nn.Linear(hq, sizes["image"] * sizes["image"])
    m.seg_reshape = nn.Unflatten(dim=1, unflattened_size=(sizes["image"], sizes["image"]))
    m.max_txt_len, m.max_output_txt_len, m.prompt = 128, 60, ""                  # from_config defaults
    m._apply_lemmatizer, m._lemmatizer, m.num_few_shot_examples, m.few_shot_prob = False, None, 0, 0
    if bert_dir is not None: m.bert_tokenizer = BertTokenizer.from_pretrained(str(bert_dir))
    m.bert_model = BertModel(bert_cfg).eval()                                      # `from_pretrained` returns eval()
    m.qformer_text_input = True
    m.mask_decoder = mods.mask.MaskDecoder(
        transformer=mods.twoway.TwoWayTransformer(depth=sizes["mask"]["depth"], embedding_dim=cv,
                                                  mlp_dim=sizes["mask"]["mlp_dim"], num_heads=sizes["mask"]["num_heads"]),
        transformer_dim=cv, mask_spatial_size=sizes["image"])
    m.multi_label = list(regions)
    m.multi_label_classifier = mods.fpn.VisionTransformer(_fpn_config(mods, sizes["fpn"]), img_size=sizes["image"],
                                                          num_classes=len(regions))
    for p in m.multi_label_classifier.parameters(): p.requires_grad = False
    m.cross_attention_layer = nn.MultiheadAttention(embed_dim=cv, num_heads=sizes["prompt_heads"])
    m.gate_cross_attention_layer = nn.MultiheadAttention(embed_dim=hb, num_heads=sizes["gate_heads"])
    m.prompt_proj = nn.Linear(d, cv)
    m.fc_layer = nn.Linear(hb, 1)
    m.trans_layer = nn.Linear(cv, hb)
    m.mlm_head = nn.Linear(hq, tok_vocab)
    m.text_proj = nn.Linear(d, cv)
    m.training_stage = "finetune"
    return m


def _perturb(model: nn.Module, seed: int) -> None:
    "Make norms, biases, positions and learned tokens non-trivial (random init leaves many at 0 or 1)."
    g = torch.Generator().manual_seed(seed)
    rnd = lambda t, s: torch.randn(t.shape, generator=g) * s
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d)) or type(mod).__name__ in ("T5LayerNorm", "LayerNorm2d"):
                mod.weight.copy_(1 + rnd(mod.weight, 0.2))
                if getattr(mod, "bias", None) is not None: mod.bias.copy_(rnd(mod.bias, 0.1))
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(rnd(mod.running_mean, 0.1))
                mod.running_var.copy_(1 + torch.rand(mod.running_var.shape, generator=g) * 0.5)
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("bias", "q_bias", "v_bias", "in_proj_bias") and p.abs().max() < 1e-3: p.copy_(rnd(p, 0.05))
            if leaf in ("pos_embed", "cls_token", "position_embeddings", "query_tokens", "mask_tokens"):
                p.copy_(p + rnd(p, 0.2))
            if name.endswith("embeddings.position_embeddings.weight"): p.copy_(p + rnd(p, 0.1))


# ---------------------------------------------------------------------------------------------------------------------
# running it
class _Recorder:
    "Forward hooks that keep outputs (list per call)."
    def __init__(self): self.out, self.handles = {}, []

    def hook(self, name, module, pick=lambda o: o):
        def fn(_m, _i, o): self.out.setdefault(name, []).append(pick(o).detach().clone())
        self.handles.append(module.register_forward_hook(fn))

    def close(self):
        for h in self.handles: h.remove()


def _generation_recorder(m, store: dict, key: str):
    "Wrap `m.t5_model.generate` (instance attribute; the method itself is untouched) to keep ids and step scores."
    orig = type(m.t5_model).generate

    def generate(*a, **k):
        out = orig(m.t5_model, *a, **k, output_scores=True, return_dict_in_generate=True)
        store[key] = out.sequences.detach().clone()
        if k.get("num_beams", 1) == 1:   # greedy: the smallest gap between the chosen and the runner-up score
            gaps = [torch.topk(s, 2, dim=-1).values for s in out.scores]
            store[key + "_min_margin"] = min(float((v[:, 0] - v[:, 1]).min()) for v in gaps)
        return out.sequences
    m.t5_model.generate = generate
    return lambda: delattr(m.t5_model, "generate")


def _choose_fpn_bias(m, image: torch.Tensor) -> None:
    "Set the FPN head so that image 1 has no predicted region, images 0 and 2 a few, with a margin (both BN modes)."
    fpn = m.multi_label_classifier
    with torch.no_grad():
        fpn.head.weight.mul_(4.0); fpn.head.bias.zero_()    # a wider logit spread between images
        state = {k: v.clone() for k, v in fpn.state_dict().items()}
        fpn.eval(); z_eval = fpn(image)[0]
        fpn.train(); z_train = fpn(image)[0]
        fpn.load_state_dict(state); fpn.eval()
        top = torch.maximum(z_eval[1], z_train[1])            # image 1 stays below 0 by 0.05
        fpn.head.bias.copy_(-top - 0.05)
        for z in (z_eval, z_train):
            logits = z - top - 0.05
            assert (logits[1] < 0).all() and int((logits[0] > 0).sum()) >= 2 and int((logits[2] > 0).sum()) >= 2, logits
            assert float(logits.abs().min()) > 1e-3, "an FPN decision too close to the threshold"


def build_paper_on_meta(mods, regions: list[str]):
    "The official model at the published sizes on the meta device (no memory)."
    # `eva_vit.VisionTransformer` reads `torch.linspace(...)[i].item()` (drop-path rates): that one call stays on the CPU.
    linspace = torch.linspace
    torch.linspace = lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})
    try:
        with torch.device("meta"):
            return _assemble(mods, paper_sizes(), bert_dir=None, t5_dir=None, regions=regions, tokenizer_len=30523)
    finally:
        torch.linspace = linspace


def make_forgerytalker_fixtures(checkout: Path, out: Path, bert_vocab: Path | None = None, seed: int = 0) -> list[Path]:
    "Write `forgerytalker.safetensors` and `forgerytalker_keys_paper.json` into `out` (official code from `checkout`)."
    from safetensors.torch import save_file
    checkout, out = Path(checkout).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bert_vocab = Path(bert_vocab or os.environ.get("FORGREPRO_BERT") or "")
    if bert_vocab.is_dir(): bert_vocab = bert_vocab / "vocab.txt"
    if not bert_vocab.is_file():
        raise FileNotFoundError("pass --bert-vocab (bert-base-uncased vocab.txt, e.g. the project's offline copy) "
                                "or set FORGREPRO_BERT")
    mods = import_official(checkout)
    regions = official_regions(checkout)
    texts = CAPTIONS + _instruction_texts(regions)
    tmp = tempfile.TemporaryDirectory(prefix="forgerytalker_fixtures_")
    work = Path(tmp.name)
    (work / "model_parameter/bert-base-uncased").mkdir(parents=True, exist_ok=True)
    bert_dir = work / "model_parameter/bert-base-uncased"
    vocab = subset_bert_vocab(bert_vocab, texts)
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    sizes = reduced_sizes(len(vocab))
    (bert_dir / "config.json").write_text(json.dumps({**sizes["bert"], "model_type": "bert"}), encoding="utf-8")
    t5_dir = work / "t5"; t5_dir.mkdir(exist_ok=True)
    tok_json = t5_tokenizer_json(texts)
    (t5_dir / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    (t5_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "eos_token": "</s>", "pad_token": "<pad>",
         "unk_token": "<unk>", "model_max_length": 512}), encoding="utf-8")
    cwd = Path.cwd()
    os.chdir(work)   # `init_tokenizer` reads the relative path model_parameter/bert-base-uncased
    try:
        torch.manual_seed(seed)
        m = _assemble(mods, sizes, bert_dir=bert_dir, t5_dir=t5_dir, regions=regions)
    finally:
        os.chdir(cwd)
    _perturb(m, seed + 1)
    with torch.no_grad(): m.t5_model.lm_head.weight.mul_(0.25)   # T5's lm_head init (std 1) gives logits ~30: keep O(5)
    g = torch.Generator().manual_seed(seed + 2)
    image = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    mask = torch.zeros(BATCH, 1, SIZE, SIZE)
    mask[0, :, 10:30, 12:40] = 1; mask[2, :, 30:50, 5:25] = 1
    multilabel = (torch.rand(BATCH, len(regions), generator=g) > 0.6).float()
    _choose_fpn_bias(m, image)
    state0 = {k: v.detach().clone() for k, v in m.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {f"state.{k}": v.contiguous() for k, v in state0.items()}
    tensors |= {"input.image": image, "input.mask": mask, "input.multilabel": multilabel}
    meta: dict = {}

    def reset():
        m.load_state_dict(state0, strict=True)

    # 1. FPN alone: eval logits, train-mode (batch statistics) logits, the official training loss and its terms
    fpn = m.multi_label_classifier
    reset()
    with torch.no_grad():
        fpn.eval(); tensors["fpn.eval.logits"] = fpn(image)[0]
        fpn.train(); logits = fpn(image)[0]; tensors["fpn.train.logits"] = logits
        reset(); fpn.train(); tensors["fpn.train.total_loss"] = fpn(image, labels=multilabel).reshape(())
        w = torch.where(multilabel == 1, 1.0, 0.2)   # modeling.py line 535
        tensors["fpn.train.bce"] = nn.BCEWithLogitsLoss(weight=w)(logits, multilabel)
        tensors["fpn.train.focal"] = mods.fpn.FocalLoss()(logits, multilabel)
        tensors["fpn.train.dice"] = mods.fpn.DiceLoss()(logits, multilabel)
        tensors["fpn.train.jaccard"] = mods.fpn.JaccardLoss()(logits, multilabel)
    samples = {"image": image, "mask": mask, "multilabel": multilabel, "caption": list(CAPTIONS)}

    # 2. stage 2 (`forward_finetune`) in training mode and in eval mode, with intermediates
    for mode in ("train", "eval"):
        reset(); m.training_stage = "finetune"; m.train(mode == "train")
        rec = _Recorder()
        rec.hook("vision", m.ln_vision)
        rec.hook("fpn_logits", m.multi_label_classifier, lambda o: o[0])
        rec.hook("qformer", m.Qformer.bert, lambda o: o.last_hidden_state)
        rec.hook("mask_logits", m.mask_decoder)
        rec.hook("prompt_tokens", m.cross_attention_layer, lambda o: o[0])
        out_ft = m.forward_finetune(dict(samples))
        rec.close()
        p = f"finetune.{mode}."
        for k in ("loss", "lm_loss", "seg_loss", "seg_out", "qformer_features", "t5_logits"):
            tensors[p + k] = out_ft[k].detach().reshape(out_ft[k].shape)
        tensors[p + "vision"] = rec.out["vision"][0]
        tensors[p + "fpn_logits"] = rec.out["fpn_logits"][0]
        tensors[p + "qformer_hidden"] = rec.out["qformer"][0]
        tensors[p + "mask_logits"] = rec.out["mask_logits"][0]
        tensors[p + "prompt_tokens"] = rec.out["prompt_tokens"][0].permute(1, 0, 2).contiguous()
        reset(); m.train(mode == "train")
        with torch.no_grad():
            _, prompts, labels, gate_loss = m._get_multimodal_context(image, multilabel)
        tensors[p + "gate_loss"] = torch.as_tensor(gate_loss, dtype=torch.float32).reshape(())
        meta[p + "prompts"], meta[p + "labels"] = prompts, labels

    # 3. inference (`generate`, return_seg=True): greedy and 5-beam, official repetition / length penalties
    for name, kw in (("greedy", GREEDY), ("beam", BEAM)):
        reset(); m.eval()
        store: dict = {}
        undo = _generation_recorder(m, store, "ids")
        rec = _Recorder(); rec.hook("mask_logits", m.mask_decoder)
        texts_out, seg = m.generate({"image": image}, return_seg=True, **kw)
        rec.close(); undo()
        tensors[f"generate.{name}.ids"] = store["ids"]
        tensors[f"generate.{name}.seg_out"] = seg
        tensors[f"generate.{name}.mask_logits"] = rec.out["mask_logits"][0]
        meta[f"generate.{name}.texts"] = texts_out
        meta[f"generate.{name}.settings"] = {**kw, "repetition_penalty": 1.5, "length_penalty": 1.0}
        if "ids_min_margin" in store: meta[f"generate.{name}.min_margin"] = store["ids_min_margin"]

    # 4. forgery-aware pre-training (`forward_pretrain`), training mode
    reset(); m.training_stage = "pretrain"; m.train()
    rec = _Recorder(); rec.hook("mask_logits", m.mask_decoder)
    rec.hook("qformer", m.Qformer.bert, lambda o: o.last_hidden_state)
    out_pt = m.forward_pretrain(dict(samples))
    rec.close()
    for k, v in out_pt.items(): tensors[f"pretrain.{k}"] = v.detach().reshape(())
    tensors["pretrain.mask_logits"] = rec.out["mask_logits"][0]
    tensors["pretrain.qformer_hidden"] = rec.out["qformer"][0]

    # metadata: everything the forgrepro side needs to rebuild the same model and tokenizers
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    import transformers
    meta |= {"official_commit": commit or "unknown", "torch": torch.__version__, "transformers": transformers.__version__,
             "sizes": sizes, "regions": regions, "captions": CAPTIONS, "bert_vocab": vocab, "t5_tokenizer": tok_json,
             "t5_vocab_size": m.t5_model.config.vocab_size, "max_txt_len": m.max_txt_len,
             "max_output_txt_len": m.max_output_txt_len, "seed": seed,
             "state_keys": list(state0)}
    tensors = {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
               for k, v in tensors.items()}
    path = out / "forgerytalker.safetensors"
    save_file(tensors, str(path), metadata={"json": json.dumps(meta)})

    # 5. published sizes on the meta device: every official key and its shape
    paper = build_paper_on_meta(mods, regions)
    params = {n for n, _ in paper.named_parameters(remove_duplicate=False)}   # tied T5 embeddings count as params
    keys = {k: {"shape": list(v.shape), "kind": "param" if k in params else "buffer"}
            for k, v in paper.state_dict().items()}
    keys_path = out / "forgerytalker_keys_paper.json"
    lines = [f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}" for k, v in keys.items()]   # one key a line
    keys_path.write_text('{"official_commit":' + json.dumps(meta["official_commit"]) + ',"keys":{\n'
                         + ",\n".join(lines) + "\n}}\n", encoding="utf-8")
    tmp.cleanup()
    return [path, keys_path]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkout", type=Path, required=True, help="Generating-Attribution-Reports checkout")
    ap.add_argument("--out", type=Path, default=Path("tests/golden/official"))
    ap.add_argument("--bert-vocab", type=Path, default=None, help="bert-base-uncased vocab.txt (or its folder)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for p in make_forgerytalker_fixtures(a.checkout, a.out, a.bert_vocab, a.seed): print(p, p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
