#!/usr/bin/env python
"""ASAP training throughput (samples/s) at paper scale vs the plain blocks it is made of.

On a CUDA GPU this builds ASAP at paper scale (ALBEF ViT-B/16 at 256 px, BERT-base with fusion from layer 6,
65536-entry queues, every module on) and times full training steps: forward, `asap_loss`, backward and a fused
AdamW step, under bf16 autocast. In the same process it times the transformer blocks such a step cannot avoid,
as plain Hugging Face `transformers` modules ("plain-transformers bound") and as this package's own blocks:

    ViT-B/16 fwd+bwd (B images)
  + BERT text layers 0-5 fwd+bwd (3B texts: news, caption, explanation)
  + BERT fusion layers 6-11 fwd+bwd (2B: news for BIC/MLC/TMG/MGCA, explanation for IED)
  + momentum ViT fwd (B) + momentum text layers fwd (3B) + momentum fusion fwd (B, token distillation)

The bound is B / (sum of block times). The gap to it is what ASAP adds around the blocks: the local branch
(twice), the heads, MGCA's explicit score path in the last fusion layer, similarities against the queues, the
momentum EMA and the optimiser step. The HF fusion layers need `is_decoder=True` to cross-attend, so their
self-attention is causal (same FLOPs with dense kernels; a slightly optimistic bound).

Without a GPU the script says so and exits 0; `--device cpu --preset tiny` smoke-tests it on a CPU.

    python benchmarks/bench_asap.py                       # paper scale, batch 64, bf16
    python benchmarks/bench_asap.py --batch 128 --json reports/bench/asap.json
    python benchmarks/bench_asap.py --device cpu --preset tiny --batch 2 --steps 1 --warmup 0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))

from forgrepro.core import env_record, save_json, seed_everything  # noqa: E402
from forgrepro.data.batch import DGM4Batch  # noqa: E402
from forgrepro.methods.asap import ASAP_ABLATIONS, AsapConfig, AsapTask, asap_config, asap_loss, build_asap, random_asap_batch  # noqa: E402
from forgrepro.models.text import TextEncoder  # noqa: E402
from forgrepro.models.vision import ViTEncoder  # noqa: E402
from forgrepro.task import Progress  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda": torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    "Mean wall time of `fn` over `steps` calls after `warmup` calls (device synchronised around the timed loop)."
    for _ in range(warmup): fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps): fn()
    sync(device)
    return (time.perf_counter() - t0) / max(steps, 1)


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def asap_step_time(cfg: AsapConfig, batch: DGM4Batch, args, device: torch.device) -> float:
    "Seconds per full ASAP training step (forward + loss + backward + AdamW)."
    model = build_asap(cfg).to(device).train()
    opt = torch.optim.AdamW(AsapTask(cfg).param_groups(model), fused=device.type == "cuda")
    progress = Progress(epoch=1, step=0, steps_per_epoch=1000)

    def step():
        with autocast(device, args.bf16):
            loss = asap_loss(model(batch), batch, progress, cfg).total
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)

    t = seconds_per_call(step, args.steps, args.warmup, device)
    del model, opt
    return t


def block_times(vit: torch.nn.Module, run_vit: Callable, text: torch.nn.Module, run_text: Callable,
                fusion: torch.nn.Module, run_fusion: Callable, cfg: AsapConfig, batch: DGM4Batch, args,
                device: torch.device) -> dict[str, float]:
    "Seconds per call of each unavoidable block (see the module docstring), with a generic calling convention."
    B, width = batch.image.shape[0], cfg.text.hidden_size
    texts = [(batch.input_ids, batch.attention_mask), (batch.aux_caption.input_ids, batch.aux_caption.attention_mask),
             (batch.aux_explanation.input_ids, batch.aux_explanation.attention_mask)]
    L = max(i.shape[1] for i, _ in texts)
    pad = lambda x: torch.nn.functional.pad(x, (0, L - x.shape[1]))
    ids3, mask3 = torch.cat([pad(i) for i, _ in texts]), torch.cat([pad(m) for _, m in texts])   # (3B, L)
    n_img = cfg.vision.num_patches + 1
    img2 = torch.randn(2 * B, n_img, cfg.vision.width, device=device, requires_grad=True)
    emb2 = torch.randn(2 * B, L, width, device=device, requires_grad=True)
    mask2 = mask3[: 2 * B]
    vit.to(device).train(); text.to(device).train(); fusion.to(device).train()

    def vit_fb():
        with autocast(device, args.bf16): y = run_vit(vit, batch.image)
        y.float().mean().backward()

    def text_fb():
        with autocast(device, args.bf16): y = run_text(text, ids3, mask3)
        y.float().mean().backward()

    def fusion_fb():
        with autocast(device, args.bf16): y = run_fusion(fusion, emb2, mask2, img2)
        y.float().mean().backward()

    @torch.no_grad()
    def momentum_f():
        with autocast(device, args.bf16):
            run_vit(vit, batch.image); run_text(text, ids3, mask3)
            run_fusion(fusion, emb2[:B], mask2[:B], img2[:B])

    out = {name: seconds_per_call(fn, args.steps, args.warmup, device)
           for name, fn in [("vit_fwd_bwd", vit_fb), ("text_fwd_bwd_3B", text_fb), ("fusion_fwd_bwd_2B", fusion_fb),
                            ("momentum_fwd", momentum_f)]}
    for m in (vit, text, fusion): m.zero_grad(set_to_none=True)
    return out


def hf_blocks(cfg: AsapConfig):
    "The same blocks as plain Hugging Face transformers modules (SDPA attention)."
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel
    v, t = cfg.vision, cfg.text
    vc = ViTConfig(hidden_size=v.width, num_hidden_layers=v.depth, num_attention_heads=v.heads,
                   intermediate_size=int(v.width * v.mlp_ratio), image_size=v.image_size, patch_size=v.patch_size,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True, layer_norm_eps=1e-6)
    common = dict(vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_attention_heads=t.num_heads,
                  intermediate_size=t.intermediate_size, max_position_embeddings=t.max_position_embeddings,
                  hidden_dropout_prob=t.hidden_dropout, attention_probs_dropout_prob=t.attention_dropout)
    tc = BertConfig(num_hidden_layers=t.fusion_layer, **common)
    fc = BertConfig(num_hidden_layers=t.num_layers - t.fusion_layer, is_decoder=True, add_cross_attention=True, **common)
    for c in (vc, tc, fc): c._attn_implementation = "sdpa"
    vit, text, fusion = ViTModel(vc, add_pooling_layer=False), BertModel(tc, add_pooling_layer=False), \
        BertModel(fc, add_pooling_layer=False)
    return (vit, lambda m, img: m(pixel_values=img).last_hidden_state,
            text, lambda m, ids, mask: m(input_ids=ids, attention_mask=mask).last_hidden_state,
            fusion, lambda m, emb, mask, img: m(inputs_embeds=emb, attention_mask=mask,
                                                encoder_hidden_states=img).last_hidden_state)


def own_blocks(cfg: AsapConfig):
    "This package's blocks: `ViTEncoder` and the two halves of `TextEncoder`."
    enc = TextEncoder(cfg.text)
    return (ViTEncoder(cfg.vision), lambda m, img: m(img),
            enc, lambda m, ids, mask: m.encode_text(ids, mask),
            enc, lambda m, emb, mask, img: m.fuse(emb, mask, img).hidden)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    p.add_argument("--ablation", default="full", choices=sorted(ASAP_ABLATIONS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=64, help="images per step (official: 128 per GPU)")
    p.add_argument("--seq", type=int, default=40, help="padded news-text length (tokens, [CLS] included)")
    p.add_argument("--aux-seq", type=int, default=64, help="padded caption/explanation length")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--fp32", dest="bf16", action="store_false", help="no bf16 autocast")
    p.add_argument("--no-blocks", dest="blocks", action="store_false", help="skip the block timings")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_asap: no CUDA device, skipping (the paper-scale benchmark needs a GPU; "
              "`--device cpu --preset tiny` smoke-tests the script).")
        return 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(0)
    cfg = asap_config(args.preset, args.ablation)
    batch = random_asap_batch(args.batch, args.seq, cfg.vision.image_size, cfg.text.vocab_size,
                              aux_len=(args.aux_seq, args.aux_seq)).to(device)

    res = {"method": "asap", "preset": args.preset, "ablation": args.ablation, "batch": args.batch,
           "seq": args.seq, "aux_seq": args.aux_seq, "bf16": args.bf16, "steps": args.steps}
    t_step = asap_step_time(cfg, batch, args, device)
    res.update(asap_step_s=t_step, asap_samples_per_s=args.batch / t_step)
    if device.type == "cuda": res["asap_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.blocks:
        for name, build in (("hf", hf_blocks), ("forgrepro", own_blocks)):
            if device.type == "cuda": torch.cuda.empty_cache()
            times = block_times(*build(cfg), cfg=cfg, batch=batch, args=args, device=device)
            total = sum(times.values())
            res[f"blocks_{name}"] = times
            res[f"bound_{name}_samples_per_s"] = args.batch / total
            res[f"asap_over_bound_{name}"] = (args.batch / t_step) / (args.batch / total)
    res["env"] = env_record(device)

    print(f"ASAP {args.preset}/{args.ablation} on {res['env'].get('cuda_device') or device}: batch {args.batch}, "
          f"{'bf16' if args.bf16 else 'fp32'}")
    print(f"  full training step      {1e3 * t_step:9.1f} ms  {res['asap_samples_per_s']:9.1f} samples/s")
    for name in ("hf", "forgrepro"):
        if f"blocks_{name}" not in res: continue
        for k, v in res[f"blocks_{name}"].items(): print(f"  [{name:9s}] {k:20s} {1e3 * v:9.1f} ms")
        print(f"  [{name:9s}] bound {res[f'bound_{name}_samples_per_s']:9.1f} samples/s; "
              f"ASAP reaches {100 * res[f'asap_over_bound_{name}']:.0f}% of it")
    print(json.dumps({k: v for k, v in res.items() if k != "env"}))
    if args.json: save_json(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
