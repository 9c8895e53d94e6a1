"""Demo latency: median end-to-end analysis per method and per image-caption pair, after warm-up (CPU).

    python benchmarks/bench_demo.py [--runs RUNS_ROOT | --checkpoints DIR] [--n 20] [--threads 1 2]

Models: what `forgrepro demo` serves (the reproduction's main rows under `--runs`, default runs/; or `--checkpoints DIR`).
Pairs: the first `--n` records of the test split of the DGM4 data they were trained on. Each pair goes through the app's
steps: MTCNN face detection once (shared by every method), each DGM4 method with its visual explanations (Grad-CAM and the
localisation query's attention: one forward and one backward pass), ForgeryTalker on every face crop (one batch).
Printed per method: the median of its own time and the median of faces + its time (its end-to-end analysis) against the
300 ms target, then the whole submit (`forgrepro.demo.analyse`, every method and the rendering). The 1-minute load
average is printed before and after: on a shared machine the timings are not idle timings.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from PIL import Image

TARGET_MS = 300.0


def _load() -> str:
    l1, l5, _ = os.getloadavg()
    return f"load average {l1:.2f} (1 min), {l5:.2f} (5 min) on {os.cpu_count()} CPUs"


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="`forgrepro reproduce --runs` root (the demo's default)")
    ap.add_argument("--checkpoints", default=None, help="a folder searched for run folders instead")
    ap.add_argument("--n", type=int, default=20, help="image-caption pairs (from the DGM4 test split)")
    ap.add_argument("--warmup", type=int, default=3, help="pairs analysed before timing")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    from forgrepro.data.dgm4 import read_dgm4, resolve_dgm4_image
    from forgrepro.demo import analyse, load_predictors, run_data_root
    from forgrepro.predict import DGM4Predictor, ForgeryTalkerPredictor
    print(f"before: {_load()}")
    m = load_predictors(a.checkpoints, runs_root=a.runs, quick=False, log=lambda s: None)
    dgm4 = {k: p for k, p in m.predictors.items() if isinstance(p, DGM4Predictor)}
    fts = {k: p for k, p in m.predictors.items() if isinstance(p, ForgeryTalkerPredictor)}
    data = next(d for k, d in ((k, run_data_root(r)) for k, r in m.runs.items()) if d is not None and k != "forgerytalker")
    recs = read_dgm4(data / "DGM4/metadata/test.json")[: a.n]
    pairs = [(Image.open(resolve_dgm4_image(data, r)).convert("RGB"), r.text) for r in recs]
    det = m.face_detector
    print(f"models: {m.source} ({', '.join(f'{k}={v}' for k, v in m.runs.items())})")
    print(f"{len(pairs)} pairs from {data}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{a.warmup} warm-up pairs")
    for t in a.threads:
        torch.set_num_threads(t)
        for im, cap in pairs[: a.warmup]: analyse(m.predictors, im, cap, det)
        faces_ms, own, n_faces = [], {k: [] for k in [*dgm4, *fts]}, []
        for im, cap in pairs:
            t0 = time.perf_counter(); faces = det(im); faces_ms.append(1000 * (time.perf_counter() - t0)); n_faces.append(len(faces))
            for k, p in dgm4.items():
                t0 = time.perf_counter(); p.predict(im, cap, faces=faces, explain=True); own[k].append(1000 * (time.perf_counter() - t0))
            for k, p in fts.items():
                t0 = time.perf_counter(); p.predict_faces(im, faces); own[k].append(1000 * (time.perf_counter() - t0))
        whole = [analyse(m.predictors, im, cap, det).timings["total"] for im, cap in pairs]
        print(f"\nthreads={t}: MTCNN face detection once per pair: median {statistics.median(faces_ms):.1f} ms "
              f"(faces per pair: median {statistics.median(n_faces):g}, max {max(n_faces)})")
        print(f"  {'method':14s} {'own ms':>8s} {'faces+own':>10s} {'p90':>8s}   target {TARGET_MS:.0f} ms (median faces+own)")
        for k, v in own.items():
            e2e = [f + x for f, x in zip(faces_ms, v)]
            med = statistics.median(e2e)
            print(f"  {k:14s} {statistics.median(v):8.1f} {med:10.1f} {_q(e2e, 0.9):8.1f}   {'OK' if med < TARGET_MS else 'OVER'}")
        print(f"  {'whole submit':14s} {'':8s} {statistics.median(whole):10.1f} {_q(whole, 0.9):8.1f}   (every method, rendering)")
    print(f"\nafter: {_load()}")


if __name__ == "__main__":
    main()
