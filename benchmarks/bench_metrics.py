"""Time all DGM4 metrics on random outputs of DGM4-test size (50,705 samples, 128 tokens).

    python benchmarks/bench_metrics.py [--n 50705] [--tokens 128] [--threads 2] [--repeats 3]

Prints the wall time of `collect_dgm4` (per-sample reduction of the raw outputs, as one batch) and of
`dgm4_metrics` (the 12 official metrics plus extras), their sum, and the same through `DGM4MetricAccumulator`
fed in evaluation batches of 256. Target: < 2 s for everything on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import time

import torch

from forgrepro.metrics.dgm4 import DGM4MetricAccumulator, collect_dgm4, dgm4_breakdown, dgm4_metrics, fake_cls_multi_hot


def random_outputs(n: int, tokens: int, seed: int = 0) -> tuple[dict, dict]:
    "Random model outputs and DGM4-like targets (9 classes, 46% no-box, padded token labels)."
    g = torch.Generator().manual_seed(seed)
    mh = fake_cls_multi_hot()[torch.randint(0, 9, (n,), generator=g)]
    y = mh.amax(1)
    length = torch.randint(10, tokens, (n, 1), generator=g)
    pos = torch.arange(tokens - 1)[None]
    tok = (torch.rand(n, tokens - 1, generator=g) < 0.14).long() * mh[:, 2:].amax(1, keepdim=True)
    tok = torch.where(pos < length - 1, tok, torch.full_like(tok, -100))
    box = torch.where(mh[:, :2].amax(1, keepdim=True).bool(), torch.rand(n, 4, generator=g) * 0.4 + 0.1, torch.zeros(4))
    outputs = dict(logits_real_fake=torch.randn(n, 2, generator=g), logits_multicls=torch.randn(n, 4, generator=g),
                   pred_boxes=torch.rand(n, 4, generator=g), logits_tok=torch.randn(n, tokens - 1, 2, generator=g))
    return outputs, dict(labels=y, multi_label=mh, gt_boxes=box, token_labels=tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_705)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    outputs, targets = random_outputs(args.n, args.tokens)
    dgm4_metrics(collect_dgm4(**{k: v[:1000] for k, v in outputs.items()}, **{k: v[:1000] for k, v in targets.items()}))  # warm-up

    best = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter(); data = collect_dgm4(**outputs, **targets)
        t1 = time.perf_counter(); metrics = dgm4_metrics(data)
        t2 = time.perf_counter(); dgm4_breakdown(data)
        t3 = time.perf_counter()
        acc = DGM4MetricAccumulator()
        for s in range(0, args.n, 256):
            acc.update(**{k: v[s:s + 256] for k, v in outputs.items()}, **{k: v[s:s + 256] for k, v in targets.items()})
        acc.compute()
        t4 = time.perf_counter()
        for k, v in dict(collect=t1 - t0, metrics=t2 - t1, breakdown=t3 - t2, accumulator=t4 - t3).items():
            best[k] = min(best.get(k, float("inf")), v)
    print(f"DGM4 metrics on N={args.n:,} samples, {args.tokens} tokens, torch threads={args.threads} "
          f"(best of {args.repeats}):")
    print(f"  collect_dgm4 (per-sample reduction)          {best['collect']:.3f} s")
    print(f"  dgm4_metrics (12 official + extras)           {best['metrics']:.3f} s")
    print(f"  all DGM4 metrics together                     {best['collect'] + best['metrics']:.3f} s")
    print(f"  dgm4_breakdown (13 subsets)                   {best['breakdown']:.3f} s")
    print(f"  accumulator, batches of 256, then compute     {best['accumulator']:.3f} s")
    print("  " + ", ".join(f"{k}={metrics[k]:.2f}" for k in ("AUC", "EER", "ACC", "mAP", "IoUmean", "F1")))


if __name__ == "__main__":
    main()
