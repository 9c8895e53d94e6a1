"""Trivial (input-blind) baselines for the 12 DGM4 metrics on a DGM4-format split: what "above chance" means for a table.

A thin wrapper around `forgrepro.baselines` (nbs/35_baselines.ipynb), which `forgrepro reproduce` also calls: it shows
the same predictors as rows of every DGM4 table and writes them to `reports/<data>/<scale>/trivial_baselines.md`. Every
predictor ignores the input and is scored with the official-metric code (`forgrepro.metrics.dgm4`) on the targets the
models see (`DGM4Dataset` + `DGM4Collator`):

- constant:   one score for every sample (binary AUC 50; ACC = majority class), the training-split prior as
              multi-label scores (mAP = label prevalence), the mean training box for every sample, no fake token;
- zero box:   a collapsed (all-zero) box for every sample: IoU 1 on every sample without a manipulated face under the
              official zero-box rule (HAMMER `box_iou(test=True)`), 0 elsewhere;
- all tokens fake: every token predicted manipulated (token Recall 100, Precision = prevalence).

Usage:
    python benchmarks/dgm4_baselines.py --root DIR [--split test] [--subset image/] [--out FILE.md]
DIR is the folder containing DGM4/ (for the synthetic reproduction: `forgrepro.repro.synthetic_dataset('dgm4')`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from forgrepro.baselines import DGM4_BASELINES, dgm4_baselines, dgm4_targets
from forgrepro.metrics.dgm4 import OFFICIAL_METRICS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="folder containing DGM4/")
    ap.add_argument("--split", default="test")
    ap.add_argument("--subset", default="", help="metric prefix of a subset, e.g. image/ text/ face_swap/ (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table as Markdown here")
    args = ap.parse_args(argv)
    res = dgm4_baselines(dgm4_targets(args.root, "train"), dgm4_targets(args.root, args.split))
    fmt = lambda v: "—" if v is None or v != v else f"{v:.2f}"
    lines = ["| baseline | " + " | ".join(OFFICIAL_METRICS) + " |", "|" + "---|" * (len(OFFICIAL_METRICS) + 1)]
    for name, m in res.items():
        lines.append(f"| {DGM4_BASELINES[name]} | " + " | ".join(fmt(m.get(args.subset + k)) for k in OFFICIAL_METRICS) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Trivial baselines on `{args.root.name}` ({args.split} split{', ' + args.subset if args.subset else ''})\n\n"
                            "Input-blind predictors scored with the official DGM4 metric code "
                            "(`python benchmarks/dgm4_baselines.py`); a model is above chance only where it beats "
                            "every row here.\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
