"""CPU cost of one training step of each DGM4 method at its tiny reproduction recipe, split into its parts.

Builds the method exactly as `forgrepro reproduce --scale tiny` does (`ExperimentSpec(method)`: the tiny preset plus
`TINY_DGM4_OVERRIDES` / `TINY_M4BLIP_OVERRIDES`), loads real batches of the synthetic twin, and times forward, backward
and the AdamW update (per-tensor loop vs torch's multi-tensor `foreach` update, which `forgrepro.train` uses), and
reports the data loading per training batch (decode, transforms, M4-BLIP face crops: first epoch and, with the
loaders' face-crop cache, later epochs). The text vocabulary is the recipe's (`--vocab recipe`: the synthetic set's
own word vocabulary at tiny scale, `forgrepro.experiment.text_vocab_kind`) or bert-base-uncased (`--vocab bert`).
The last figure is the step as `forgrepro.train` runs it on the CPU (RowSparseAdamW, gradient clipping); the glibc
allocator settings `forgrepro reproduce` gives its CPU rows (`forgrepro.repro.ROW_ENV`) are worth what this script
prints with them set against without:
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/bench_tiny_steps.py --root DIR

Usage:
    python benchmarks/bench_tiny_steps.py --root DIR [--methods hammer asap m4blip] [--steps 6] [--threads 1]
        [--override face.arch=tf_efficientnet_lite0 --override face.face_size=64] [--vocab recipe|bert]
DIR contains DGM4/ (e.g. the cached synthetic set `forgrepro.repro.synthetic_dataset('dgm4')`).
Timings depend on the machine and its load: run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--methods", nargs="+", default=["hammer", "asap", "m4blip"])
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="model-config override on top of the recipe (value parsed as JSON when possible)")
    ap.add_argument("--vocab", choices=["recipe", "bert"], default="recipe",
                    help="text vocabulary: the recipe's (word vocabulary on synthetic data at tiny scale) or bert-base-uncased")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from forgrepro.experiment import (ExperimentSpec, build_task, dgm4_loaders, method_spec, text_vocab_kind,
                                      write_word_vocabulary)
    from forgrepro.task import Progress
    from forgrepro.train import _optimizer
    from forgrepro.repro import ROW_ENV
    import os
    # `forgrepro reproduce` trains CPU rows with these glibc malloc settings (`forgrepro.repro.ROW_ENV`); run this script
    # with and without them to see what they are worth (they must be set before Python starts)
    alloc = {k: os.environ.get(k) for k in ROW_ENV}

    def parse(v: str):
        try: return json.loads(v)
        except json.JSONDecodeError: return v
    overrides = {k: parse(v) for k, v in (o.split("=", 1) for o in args.override)}
    tmp = tempfile.mkdtemp(prefix="bench_tiny_steps-")
    task_vocab = lambda t: method_spec(t.name).data_needs(t).tokenizer().get_vocab()
    for name in args.methods:
        spec = ExperimentSpec(name, overrides=overrides)
        cfg = spec.train_config(".")
        words = args.vocab == "recipe" and text_vocab_kind(cfg, spec.scale, args.root) == "words"
        vocab = write_word_vocabulary(args.root, Path(tmp) / name / "vocab.txt") if words else None
        task = build_task(spec, vocab=vocab)
        model = task.build_model().train()
        loader = dgm4_loaders(args.root, method_spec(name).data_needs(task), cfg.batch_size, augment=cfg.augment)["train"]
        load_ms = []
        for _ in range(2):   # first epoch, then a later one (the face-crop cache is filled)
            it = iter(loader()); next(it)   # first batch: one-off imports
            t0 = time.perf_counter(); batches = [next(it) for _ in range(args.steps + 1)]
            load_ms.append(1000 * (time.perf_counter() - t0) / (args.steps + 1))
        params = [p for p in model.parameters() if p.requires_grad]
        row = {}
        for mode in ("loop", "foreach", "fused", "train"):
            if mode == "train":   # the optimiser `forgrepro.train` builds on the CPU (RowSparseAdamW), with its clipping
                opt = _optimizer(model, task.param_groups(model), cfg)
            else: opt = torch.optim.AdamW(params, lr=1e-4, foreach=mode == "foreach", fused=True if mode == "fused" else None)
            t = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
            for i, b in enumerate(batches):
                t0 = time.perf_counter()
                loss = task.loss(model(b), b, Progress(step=i, steps_per_epoch=75, total_steps=375)).total
                t1 = time.perf_counter(); loss.backward()
                if mode == "train" and cfg.clip_grad_norm: torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
                t2 = time.perf_counter(); opt.step(); opt.zero_grad(set_to_none=True)
                t3 = time.perf_counter()
                if i == 0: continue   # warm-up
                t["forward"] += t1 - t0; t["backward"] += t2 - t1; t["optimizer"] += t3 - t2
            row[mode] = {k: 1000 * v / args.steps for k, v in t.items()}
        n = sum(p.numel() for p in params)
        f, l, u, r = row["foreach"], row["loop"], row["fused"], row["train"]
        print(f"{name:8s} batch {cfg.batch_size}, {n / 1e6:.2f} M trainable: forward {f['forward']:.0f} ms, "
              f"backward {f['backward']:.0f} ms, AdamW {f['optimizer']:.0f} ms with foreach "
              f"({l['optimizer']:.0f} ms per-tensor loop, {u['optimizer']:.0f} ms fused); step {sum(u.values()):.0f} ms with the "
              f"fused AdamW (`forgrepro.train` trains with foreach: {sum(f.values()):.0f} ms foreach); "
              f"vocab {'words' if words else 'bert'} ({len(task_vocab(task))}); data {load_ms[0]:.0f} ms/batch "
              f"(epoch 1), {load_ms[1]:.0f} ms (later epochs); as trained (RowSparseAdamW, clipping): step "
              f"{sum(r.values()):.0f} ms; allocator env {alloc}", flush=True)


if __name__ == "__main__":
    main()
