"""Demo latency: per-method median time per image-caption pair (tiny scale, CPU, 1 and 2 threads).

    python benchmarks/bench_demo.py [--runs DIR] [--n 20] [--threads 1 2]

`--runs` is a folder of run folders (default: the synthetic tiny runs under runs/synthetic, else quick ones made
by `forgrepro.demo.quick_synthetic_runs` in ~/.cache/forgrepro/demo). Prints, per method: model time with faces
given (what each method adds), MTCNN face detection (shared by all methods of one submit, run once per pair),
and their sum, against the 300 ms target.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

TARGET_MS = 300.0

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=None, help="folder searched for run folders (experiment.json)")
    ap.add_argument("--n", type=int, default=20, help="image-caption pairs (from the synthetic test split)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    from forgrepro.demo import load_predictors, run_data_root, find_runs
    from forgrepro.data.dgm4 import read_dgm4, resolve_dgm4_image
    from forgrepro.predict import DGM4Predictor
    preds, synthetic, _ = load_predictors(a.runs)
    dgm4 = {k: p for k, p in preds.items() if isinstance(p, DGM4Predictor)}
    runs = find_runs(a.runs) if a.runs else None
    data = next(d for d in (run_data_root(r) for r in (runs or {}).values()) if d is not None) if runs else None
    if data is None:  # quick runs: their data set sits next to them
        from pathlib import Path
        data = Path.home() / ".cache/forgrepro/demo/synth-dgm4"
    recs = read_dgm4(data / "DGM4/metadata/test.json")[: a.n]
    pairs = [(Image.open(resolve_dgm4_image(data, r)).convert("RGB"), r.text) for r in recs]
    detector = next(iter(dgm4.values())).face_detector
    print(f"{len(pairs)} pairs, synthetic={synthetic}, torch {torch.__version__}, CPU")
    for t in a.threads:
        torch.set_num_threads(t)
        for im, _ in pairs[:2]: detector(im)  # warm-up
        det = []
        faces = []
        for im, _ in pairs:
            t0 = time.perf_counter(); faces.append(detector(im)); det.append(1000 * (time.perf_counter() - t0))
        det_ms = statistics.median(det)
        print(f"\n threads={t}  MTCNN face detection: median {det_ms:.1f} ms")
        print(f"  {'method':10s} {'model ms':>9s} {'+faces ms':>10s}  target {TARGET_MS:.0f} ms")
        for name, p in dgm4.items():
            for (im, cap), f in list(zip(pairs, faces))[:2]: p.predict(im, cap, faces=f)  # warm-up
            ms = statistics.median([p.predict(im, cap, faces=f).elapsed_ms for (im, cap), f in zip(pairs, faces)])
            total = ms + det_ms
            print(f"  {name:10s} {ms:9.1f} {total:10.1f}  {'OK' if total < TARGET_MS else 'OVER'}")

if __name__ == "__main__":
    main()
