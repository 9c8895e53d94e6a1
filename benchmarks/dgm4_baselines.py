"""Trivial baselines for the 12 DGM4 metrics on a DGM4-format split: what "above chance" means for a table.

Every predictor here ignores the input. Scores are computed with the same official-metric code as the models
(`forgrepro.metrics.dgm4`), on the targets the models see (`DGM4Dataset` + `DGM4Collator`: boxes, multi-hot labels and
sub-word token labels):

- constant:   one score for every sample (binary AUC 50; ACC = majority class), the training-split prior as
              multi-label scores (mAP = label prevalence), the mean training box for every sample, no fake token;
- zero box:   a collapsed (all-zero) box for every sample: IoU 1 on every sample without a manipulated face under the
              official zero-box rule (HAMMER `box_iou(test=True)`), 0 elsewhere;
- all tokens fake: every token predicted manipulated (token Recall 100, Precision = prevalence).

Usage:
    python benchmarks/dgm4_baselines.py --root DIR [--split test] [--out reports/synthetic/tiny/trivial_baselines.md]
DIR is the folder containing DGM4/ (for the synthetic reproduction: `forgrepro.repro.synthetic_dataset('dgm4')`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from forgrepro.data.dgm4 import DGM4Collator, DGM4Dataset
from forgrepro.data.text import bert_tokenizer
from forgrepro.metrics.dgm4 import OFFICIAL_METRICS, collect_dgm4, dgm4_metrics


def targets(root: Path, split: str) -> dict[str, torch.Tensor]:
    "Concatenated targets of a split (images loaded at 32 px: only the labels are used)."
    ds = DGM4Dataset(root, split, image_res=32)
    parts = list(DataLoader(ds, batch_size=256, collate_fn=DGM4Collator(bert_tokenizer(), max_length=64)))
    width = max(b.token_labels.shape[1] for b in parts)
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-100)
    return {"label": torch.cat([b.label for b in parts]), "multi_label": torch.cat([b.multi_label for b in parts]),
            "box": torch.cat([b.box for b in parts]), "token_labels": torch.cat([pad(b.token_labels) for b in parts])}


def baselines(train: dict[str, torch.Tensor], test: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    n, L = len(test["label"]), test["token_labels"].shape[1]
    prior = train["multi_label"].float().mean(0).clamp(1e-4, 1 - 1e-4)
    has_box = train["box"].abs().sum(1) > 0
    mean_box = train["box"][has_box].mean(0)
    p_fake = train["label"].float().mean().item()
    const = dict(logits_real_fake=torch.full((n,), p_fake), labels=test["label"],
                 logits_multicls=torch.logit(prior).expand(n, 4), multi_label=test["multi_label"],
                 pred_boxes=mean_box.expand(n, 4), gt_boxes=test["box"], logits_tok=torch.zeros(n, L, dtype=torch.long),
                 token_labels=test["token_labels"])
    return {"constant (prior scores, mean box, no fake token)": dgm4_metrics(collect_dgm4(**const)),
            "zero box for every sample": dgm4_metrics(collect_dgm4(**(const | {"pred_boxes": torch.zeros(n, 4)}))),
            "all tokens fake": dgm4_metrics(collect_dgm4(**(const | {"logits_tok": torch.ones(n, L, dtype=torch.long)})))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="folder containing DGM4/")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, default=None, help="also write the table as Markdown here")
    args = ap.parse_args()
    res = baselines(targets(args.root, "train"), targets(args.root, args.split))
    head = "| baseline | " + " | ".join(OFFICIAL_METRICS) + " |"
    lines = [head, "|" + "---|" * (len(OFFICIAL_METRICS) + 1)]
    for name, m in res.items():
        lines.append(f"| {name} | " + " | ".join("—" if m[k] != m[k] else f"{m[k]:.2f}" for k in OFFICIAL_METRICS) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Trivial baselines on `{args.root.name}` ({args.split} split)\n\n"
                            "Input-blind predictors scored with the official DGM4 metric code "
                            "(`python benchmarks/dgm4_baselines.py`); a model is above chance only where it beats "
                            "every row here.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
