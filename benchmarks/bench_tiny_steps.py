"""CPU cost of one training step of each DGM4 method at its tiny reproduction recipe, split into its parts.

Builds the method exactly as `forgrepro reproduce --scale tiny` does (`ExperimentSpec(method)`: the tiny preset plus
`TINY_DGM4_OVERRIDES` / `TINY_M4BLIP_OVERRIDES`), loads real batches of the synthetic twin, and times forward, backward
and the AdamW update (per-tensor loop vs torch's multi-tensor `foreach` update, which `forgrepro.train` uses).

Usage:
    python benchmarks/bench_tiny_steps.py --root DIR [--methods hammer asap m4blip] [--steps 6] [--threads 1]
        [--override face.arch=tf_efficientnet_lite0 --override face.face_size=64]
DIR contains DGM4/ (e.g. the cached synthetic set `forgrepro.repro.synthetic_dataset('dgm4')`).
Timings depend on the machine and its load: run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--methods", nargs="+", default=["hammer", "asap", "m4blip"])
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="model-config override on top of the recipe (value parsed as JSON when possible)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from forgrepro.experiment import ExperimentSpec, build_task, dgm4_loaders, method_spec
    from forgrepro.task import Progress

    def parse(v: str):
        try: return json.loads(v)
        except json.JSONDecodeError: return v
    overrides = {k: parse(v) for k, v in (o.split("=", 1) for o in args.override)}
    for name in args.methods:
        spec = ExperimentSpec(name, overrides=overrides)
        task = build_task(spec)
        cfg = spec.train_config(".")
        model = task.build_model().train()
        batches = iter(dgm4_loaders(args.root, method_spec(name).data_needs(task), cfg.batch_size)["train"]())
        batches = [next(batches) for _ in range(args.steps + 1)]
        params = [p for p in model.parameters() if p.requires_grad]
        row = {}
        for foreach in (False, True):
            opt = torch.optim.AdamW(params, lr=1e-4, foreach=foreach)
            t = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
            for i, b in enumerate(batches):
                t0 = time.perf_counter()
                loss = task.loss(model(b), b, Progress(step=i, steps_per_epoch=75, total_steps=375)).total
                t1 = time.perf_counter(); loss.backward()
                t2 = time.perf_counter(); opt.step(); opt.zero_grad(set_to_none=True)
                t3 = time.perf_counter()
                if i == 0: continue   # warm-up
                t["forward"] += t1 - t0; t["backward"] += t2 - t1; t["optimizer"] += t3 - t2
            row["foreach" if foreach else "loop"] = {k: 1000 * v / args.steps for k, v in t.items()}
        n = sum(p.numel() for p in params)
        f, l = row["foreach"], row["loop"]
        print(f"{name:8s} batch {cfg.batch_size}, {n / 1e6:.2f} M trainable: forward {f['forward']:.0f} ms, "
              f"backward {f['backward']:.0f} ms, AdamW {f['optimizer']:.0f} ms with foreach "
              f"({l['optimizer']:.0f} ms per-tensor loop); step {sum(f.values()):.0f} ms", flush=True)


if __name__ == "__main__":
    main()
