"""ForgeryTalker measurements.

  python benchmarks/bench_forgerytalker.py [throughput] [--batch 24] [--steps 10]
      Paper-scale stage-2 training throughput (samples/s, bf16 autocast) on a GPU, against the sum of the plain
      transformers blocks timed in the same script (InstructBLIP vision forward, Q-Former fwd/bwd, Flan-T5 fwd/bwd,
      SAM mask decoder fwd/bwd; the frozen FPN forward is listed too). Weights are random (nothing downloads).
      Without a GPU it prints SKIP and exits 0; `--allow-cpu --scale tiny` runs the same code path on the CPU.

  python benchmarks/bench_forgerytalker.py synth --out /tmp/ft_synth [--n-train 1600 ...]
      Tiny scale on CPU, from scratch, on synth-mmtt: stage 1 (FPN) then stage 2 with FPN / no / ground-truth prompts,
      test-set metrics against trivial baselines (the most frequent training explanation for every image; an all-face
      mask and an empty mask). Writes <out>/results.json and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from forgrepro.data.batch import MMTTBatch, TextInput  # noqa: E402
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
    ltok = ft.train_explanation_tokenizer([" ".join(WORDS)] * 4, vocab_size=500)
    qtok = ft.load_qformer_tokenizer()
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


# ------------------------------------------------------------------------------------------------ synth-mmtt (CPU)
def _loader(ds, batch_size, shuffle, seed=0):
    from forgrepro.data.mmtt import MMTTCollator
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=MMTTCollator(),
                                       generator=torch.Generator().manual_seed(seed), num_workers=0)


def fast_caption_scores(predictions, references) -> dict:
    "BLEU-4 and CIDEr (x100) without Java (lower-case, punctuation stripped): for model selection during training."
    import re
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    norm = lambda t: " ".join(re.sub(r"[^a-z0-9 ]", " ", t.lower()).split())
    gts = {k: [norm(r) for r in references[k]] for k in predictions}
    res = {k: [norm(predictions[k])] for k in predictions}
    return {"BLEU-4": 100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3], "CIDEr": 100 * Cider().compute_score(gts, res)[0]}


def synth(args) -> int:
    from forgrepro.data.mmtt import MMTTDataset, read_mmtt, find_mmtt_split
    from forgrepro.data.synth_mmtt import make_synth_mmtt
    from forgrepro.evaluate import evaluate
    from forgrepro.train import TrainConfig, fit
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = out / "data"
    if not (data / "dataset").exists():
        t0 = time.perf_counter()
        make_synth_mmtt(data, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.seed,
                        image_size=args.data_size)
        print(f"synth-mmtt written in {time.perf_counter() - t0:.0f} s")
    root = data / "dataset"
    S = ft.forgerytalker_tiny().vision.image_size
    ds = lambda split, train=False: MMTTDataset(root, split, image_size=S, train=train,
                                                generator=torch.Generator().manual_seed(args.seed))
    train_recs = read_mmtt(find_mmtt_split(root, "train"))
    captions = [r.caption for r in train_recs]
    tok_dir = out / "tokenizer"
    ltok = ft.train_explanation_tokenizer(captions, vocab_size=args.vocab, out_dir=tok_dir)
    qtok = ft.load_qformer_tokenizer()
    results: dict[str, dict] = {}

    # stage 1: the FPN
    fpn_cfg = replace(ft.fpn_tiny(), lr=args.fpn_lr)
    tcfg = TrainConfig(epochs=args.fpn_epochs, batch_size=args.batch, schedule="cosine", weight_decay=0.05,
                       warmup_lr=0.0, warmup_steps=50, min_lr=0.0, log_every=50, seed=args.seed,
                       out_dir=str(out / "fpn"), eval_every=None)
    t0 = time.perf_counter()
    res = fit(ft.FPNTask(fpn_cfg), lambda: _loader(ds("train", train=args.augment), args.batch, True),
              lambda: _loader(ds("eval"), 64, False),
              tcfg, resume=True)
    fpn_test = evaluate(res.model, ft.FPNTask(fpn_cfg).evaluator(), _loader(ds("test"), 64, False))
    results["fpn"] = {**fpn_test, "train_s": time.perf_counter() - t0}
    print("FPN test:", {k: round(v, 2) for k, v in fpn_test.items()})
    fpn_weights = str(out / "fpn" / "best")

    # stage 2: three prompt sources from the same recipe
    base = replace(ft.forgerytalker_tiny(), fpn_weights=fpn_weights, llm_tokenizer=str(tok_dir), lr=args.lr,
                   generation=replace(ft.forgerytalker_tiny().generation, num_beams=args.beams))
    for name in args.variants:
        cfg = ft.ablation_config(base, name)
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, schedule="cosine", weight_decay=cfg.weight_decay,
                           warmup_lr=0.0, warmup_steps=100, min_lr=0.0, log_every=50, seed=args.seed,
                           out_dir=str(out / f"stage2_{name}"), eval_every=None, max_eval_batches=args.val_batches)
        # validation during training selects checkpoints with Java-free BLEU-4 + CIDEr; the test uses the official scorer
        train_task = ft.ForgeryTalkerTask(cfg, llm_tokenizer=ltok, qformer_tokenizer=qtok, caption_metrics=fast_caption_scores)
        task = ft.ForgeryTalkerTask(cfg, llm_tokenizer=ltok, qformer_tokenizer=qtok)
        t0 = time.perf_counter()
        res = fit(train_task, lambda: _loader(ds("train", train=args.augment), args.batch, True),
                  lambda: _loader(ds("eval"), 32, False), tcfg, resume=True)
        m = evaluate(res.model, task.evaluator(), _loader(ds("test"), 32, False))
        results[name] = {**m, "train_s": time.perf_counter() - t0}
        print(f"{name} test:", {k: round(v, 2) for k, v in m.items()})

    # trivial baselines on the same test set
    test = ds("test")
    refs: dict = {}
    for rec in read_mmtt(find_mmtt_split(root, "test")): refs.setdefault(rec.image_id, []).append(rec.caption)
    most = Counter(ft.pre_caption(c) for c in captions).most_common(1)[0][0]
    base_caps = ft.caption_scores({k: most for k in refs}, refs)
    masks = torch.stack([test[i].mask for i in range(len(test))])
    allface = ft.mask_scores(torch.ones_like(masks, dtype=torch.bool), masks)
    empty = ft.mask_scores(torch.zeros_like(masks, dtype=torch.bool), masks)
    results["baseline_constant_explanation"] = {**base_caps, "explanation": most}
    results["baseline_all_face_mask"] = {f"m{k[0].upper() if k != 'iou' else 'IoU'}": float(100 * v.mean())
                                         for k, v in allface.items()}
    results["baseline_empty_mask"] = {f"m{k[0].upper() if k != 'iou' else 'IoU'}": float(100 * v.mean())
                                      for k, v in empty.items()}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    cols = ["CIDEr", "BLEU-4", "BLEU-1", "ROUGE-L", "METEOR", "PLM", "mIoU", "mP", "mR", "fpn_micro_F1"]
    print(f"\n{'row':<32}" + "".join(f"{c:>13}" for c in cols))
    for row, m in results.items():
        if row == "fpn": continue
        print(f"{row:<32}" + "".join(f"{m[c]:>13.2f}" if isinstance(m.get(c), (int, float)) else f"{'':>13}" for c in cols))
    print(f"FPN (stage 1) test micro F1 {results['fpn'].get('micro_F1', float('nan')):.2f}, "
          f"PLM {results['fpn'].get('PLM', float('nan')):.2f}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    t = sub.add_parser("throughput", help="paper-scale stage-2 training throughput on a GPU")
    s = sub.add_parser("synth", help="tiny-scale CPU training on synth-mmtt vs trivial baselines")
    for q in (p, t):
        q.add_argument("--scale", default="paper", choices=sorted(ft.PRESETS))
        q.add_argument("--batch", type=int, default=24, help="per-step batch (official batch_size_train 24)")
        q.add_argument("--steps", type=int, default=10)
        q.add_argument("--warmup", type=int, default=3)
        q.add_argument("--words", type=int, default=50, help="words per synthetic explanation")
        q.add_argument("--allow-cpu", action="store_true")
        q.add_argument("--fp32", action="store_true", help="no bf16 autocast")
        q.add_argument("--json", default=None, help="also write the timings here")
    s.add_argument("--out", required=True)
    s.add_argument("--n-train", type=int, default=1600)
    s.add_argument("--n-val", type=int, default=200)
    s.add_argument("--n-test", type=int, default=200)
    s.add_argument("--data-size", type=int, default=128, help="side of the generated images (= the tiny model's input)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--vocab", type=int, default=1000)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--fpn-epochs", type=int, default=15)
    s.add_argument("--fpn-lr", type=float, default=1e-3)
    s.add_argument("--epochs", type=int, default=12)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--beams", type=int, default=3)
    s.add_argument("--val-batches", type=int, default=2, help="validation batches per evaluation during training")
    s.add_argument("--augment", action="store_true", help="synchronised RandomResizedCrop + flip while training")
    s.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a shared CPU)")
    s.add_argument("--variants", nargs="+", default=["full", "no_fpn_prompts", "gt_prompts"])
    args = p.parse_args(argv)
    return synth(args) if args.cmd == "synth" else throughput(args)


if __name__ == "__main__":
    raise SystemExit(main())
