"""ForgeryTalker measurements.

  python benchmarks/bench_forgerytalker.py [throughput] [--batch 24] [--steps 10]
      Paper-scale stage-2 training throughput (samples/s, bf16 autocast) on a GPU, against the sum of the plain
      transformers blocks timed in the same script (InstructBLIP vision forward, Q-Former fwd/bwd, Flan-T5 fwd/bwd,
      SAM mask decoder fwd/bwd; the frozen FPN forward is listed too). Weights are random (nothing downloads).
      Without a GPU it prints SKIP and exits 0; `--allow-cpu --scale tiny` runs the same code path on the CPU.

  The synth-mmtt quality run (model rows vs trivial baselines) is `benchmarks/forgerytalker_synth.py`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from forgrepro.data.batch import MMTTBatch, TextInput  # noqa: E402
from forgrepro.data.prompts import load_qformer_tokenizer, train_explanation_tokenizer  # noqa: E402
from forgrepro.methods import forgerytalker as ft  # noqa: E402

WORDS = ("the left eye looks blurred and the skin around the nose shows a visible seam while the lips have an "
         "inconsistent colour tone compared with the cheeks and the forehead appears smoothed out").split()


# ------------------------------------------------------------------------------------------------ throughput
def _sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def _timeit(fn, device, warmup: int, steps: int) -> float:
    "Mean seconds per call of `fn` after `warmup` calls."
    for _ in range(warmup): fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps): fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _bench_batch(B: int, S: int, device, n_words: int, seed: int = 0) -> MMTTBatch:
    g = torch.Generator().manual_seed(seed)
    ml = (torch.rand(B, 21, generator=g) < 0.15).float()
    caps = [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(n_words)) for i in range(B)]
    mask = (torch.rand(B, 1, S, S, generator=g) < 0.3).float()
    return MMTTBatch(image=torch.randn(B, 3, S, S, generator=g).to(device), mask=mask.to(device),
                     multilabel=ml.to(device), meta=[{"image_id": i, "caption": c} for i, c in enumerate(caps)])


def throughput(args) -> int:
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("SKIP bench_forgerytalker throughput: no CUDA GPU here. Paper-scale ForgeryTalker (EVA ViT-g/14 + "
              "Flan-T5-XL + ViT-H/14 FPN, ~4.5 B parameters) needs an ~80 GB GPU; `--allow-cpu --scale tiny` runs the "
              "same code path on the CPU.")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda: torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.manual_seed(0)
    cfg = ft.PRESETS[args.scale]()
    cfg = replace(cfg, pretrained=False, generate_in_eval=False)
    S = cfg.vision.image_size
    # An offline stand-in for the Flan-T5 tokenizer (the vocabulary stays 32128 at paper scale): sequence lengths are
    # controlled below, which is what the throughput depends on.
    ltok = train_explanation_tokenizer([" ".join(WORDS)] * 4, vocab_size=500)
    qtok = load_qformer_tokenizer()
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and not args.fp32 else contextlib.nullcontext())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device(device):
            model = ft.build_forgerytalker(cfg, llm_tokenizer=ltok, qformer_tokenizer=qtok, load_weights=False)
    model.to(device).train()
    task = ft.ForgeryTalkerTask(cfg)
    opt = torch.optim.AdamW(task.param_groups(model), lr=cfg.lr, fused=cuda)
    batch = _bench_batch(args.batch, S, device, n_words=args.words)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'} | scale {args.scale} | batch {args.batch} | "
          f"params {n_params / 1e9:.2f} B ({n_train / 1e6:.0f} M trainable) | bf16 autocast {cuda and not args.fp32}")

    def step():
        with amp:
            out = model(batch)
            loss = task.loss(out, batch, None).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_model = _timeit(step, device, args.warmup, args.steps)
    if cuda: peak = torch.cuda.max_memory_allocated() / 2**30

    # --- the plain transformers blocks on the same shapes ------------------------------------------------------------
    with torch.no_grad(), amp:
        image_embeds = model.encode_image(batch.image)
        rp = model.region_source(batch.image)
        prompts = model.prompt_tokenizer.instructions(rp.regions)
    target = model.prompt_tokenizer.targets(batch.captions, device)
    Q, Hq = model.query_tokens.shape[1:]
    B = args.batch
    q_ids, q_mask = prompts.qformer.input_ids, prompts.qformer.attention_mask
    t5 = model.llm.model
    t5_in = torch.randn(B, Q + prompts.llm.input_ids.shape[1], t5.config.d_model, device=device,
                        dtype=next(t5.parameters()).dtype, requires_grad=True)
    labels = target.input_ids.masked_fill(target.attention_mask == 0, -100)
    sam = model.mask_decoder
    Cv = image_embeds.shape[-1]
    sam_prompt = torch.randn(B, 1 + cfg.region_prompt_len, Cv, device=device, requires_grad=True)
    img_feats = image_embeds.detach().float().requires_grad_(False)

    def vision_fwd():
        with torch.no_grad(), amp: model.vision_model(pixel_values=batch.image)

    def fpn_fwd():
        with torch.no_grad(), amp: model.region_source.prompter(batch.image)

    def qformer_fwd_bwd():
        with amp:
            att = torch.cat([torch.ones(B, Q, dtype=q_mask.dtype, device=device), q_mask], 1)
            h = model.qformer(input_ids=q_ids, attention_mask=att, query_embeds=model.query_tokens.expand(B, -1, -1),
                              encoder_hidden_states=img_feats,
                              encoder_attention_mask=torch.ones(img_feats.shape[:2], dtype=torch.long, device=device))
        h.last_hidden_state[:, :Q].float().sum().backward()

    def t5_fwd_bwd():
        with amp:
            out = t5(inputs_embeds=t5_in, attention_mask=torch.ones(t5_in.shape[:2], dtype=torch.long, device=device),
                     decoder_input_ids=t5._shift_right(labels), decoder_attention_mask=target.attention_mask)
            loss = torch.nn.functional.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()

    def sam_fwd_bwd():
        with amp: m = sam(img_feats[:, 1:], sam_prompt)
        m.float().mean().backward()

    blocks = {"vision forward (frozen)": vision_fwd, "Q-Former fwd/bwd": qformer_fwd_bwd,
              "T5 fwd/bwd (frozen weights, grad to inputs)": t5_fwd_bwd,
              "SAM mask decoder fwd/bwd": sam_fwd_bwd, "FPN forward (frozen)": fpn_fwd}
    times = {k: _timeit(f, device, args.warmup, args.steps) for k, f in blocks.items()}
    core = sum(v for k, v in times.items() if not k.startswith("FPN"))
    print(f"\n{'block':<46}{'ms/step':>10}{'samples/s':>12}")
    for k, v in times.items(): print(f"{k:<46}{1e3 * v:>10.1f}{B / v:>12.1f}")
    print(f"{'sum of the 4 plain blocks':<46}{1e3 * core:>10.1f}{B / core:>12.1f}")
    print(f"{'sum + FPN forward':<46}{1e3 * (core + times['FPN forward (frozen)']):>10.1f}"
          f"{B / (core + times['FPN forward (frozen)']):>12.1f}")
    print(f"{'ForgeryTalker stage-2 training step':<46}{1e3 * t_model:>10.1f}{B / t_model:>12.1f}")
    print(f"stage-2 step / (plain blocks + FPN) = {t_model / (core + times['FPN forward (frozen)']):.2f}x"
          + (f" | peak GPU memory {peak:.1f} GiB" if cuda else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model_step_s": t_model, "blocks_s": times, "batch": B,
                                               "device": torch.cuda.get_device_name() if cuda else "cpu"}, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    t = sub.add_parser("throughput", help="paper-scale stage-2 training throughput on a GPU")
    for q in (p, t):
        q.add_argument("--scale", default="paper", choices=sorted(ft.PRESETS))
        q.add_argument("--batch", type=int, default=24, help="per-step batch (official batch_size_train 24)")
        q.add_argument("--steps", type=int, default=10)
        q.add_argument("--warmup", type=int, default=3)
        q.add_argument("--words", type=int, default=50, help="words per synthetic explanation")
        q.add_argument("--allow-cpu", action="store_true")
        q.add_argument("--fp32", action="store_true", help="no bf16 autocast")
        q.add_argument("--json", default=None, help="also write the timings here")
    args = p.parse_args(argv)
    return throughput(args)


if __name__ == "__main__":
    raise SystemExit(main())
