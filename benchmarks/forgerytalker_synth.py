"""ForgeryTalker on synth-mmtt at tiny scale on the CPU: model rows vs trivial baselines.

Trains the shared stage-1 FPN once, then stage 2 for each requested ablation row with `forgerytalker_run`, and prints
the test metrics next to two trivial baselines scored with the same official scorers:

* a constant explanation: the most frequent (`blip_pre_caption`-ed) training explanation, for every test image;
* a best constant explanation: the training explanation with the highest CIDEr against the *training* references when
  said for every training image (a model-free consensus sentence; chosen without the test split, among all distinct
  training explanations), for every test image;
* an all-face mask: every pixel of the image predicted manipulated (synth-mmtt faces fill the frame).

A model whose explanations do not depend on the image can still beat the first baseline (on synth-mmtt the most frequent
explanation is an authentic one, said of ~10% of the images); the second is the bar for image-dependent explanations.

    PYTHONPATH=. python benchmarks/forgerytalker_synth.py --data /tmp/ft2/data/dataset --out /tmp/ft2/runs \
        --rows full no_fpn gt_prompts [--seeds 0 1] [--no-baselines]

The recipe before 2026-11-23's FPN change (patchify stem, 5 FPN epochs at 1e-3, no clipping), for comparison:
    ... --override prompter.stem=patch fpn.lr=1e-3 --train-override fpn.epochs=5 fpn.clip_grad_norm=null

With several seeds, each seed trains its own FPN and rows (out/seed<k>/...) and the table ends with the mean over
seeds: on synth-mmtt a tiny row's CIDEr and IoU move by 10-15 points from seed to seed, so one seed cannot rank rows.
`distinct` counts the different explanations written for the test images (1 = the explanation ignores the image);
`kind_acc` (synth-mmtt only) is the share of test images whose explanation names the right kind of manipulation
(`forgrepro.data.synth_mmtt.explanation_kind`: face swap / expression edit / authentic / local inpainting; saying
"inpainting" of every image scores ~60).

The data folder is any MMTT-format folder (e.g. written by `forgrepro.data.synth_mmtt.make_synth_mmtt`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from forgrepro.baselines import mmtt_baselines
from forgrepro.data.mmtt import find_mmtt_split, read_mmtt
from forgrepro.data.synth_mmtt import explanation_kind
from forgrepro.experiment import forgerytalker_run
from forgrepro.methods.forgerytalker import forgerytalker_tiny

COLS = ("CIDEr", "BLEU-4", "BLEU-1", "METEOR", "ROUGE-L", "PLM", "IoU", "Precision", "Recall", "region_F1", "distinct",
        "kind_acc", "seconds")


def baselines(root: Path, image_size: int) -> dict[str, dict]:
    "Constant explanations and the all-face mask on the test split (`forgrepro.baselines.mmtt_baselines`, official scorers)."
    metrics, texts = mmtt_baselines(root, image_size)
    return {k: m | ({"explanation": texts[k]} if k in texts else {}) for k, m in metrics.items()}


def _pairs(items: list[str]) -> dict:
    "KEY=VALUE strings -> dict (values parsed as JSON when possible)."
    def parse(v: str):
        try: return json.loads(v)
        except json.JSONDecodeError: return v
    return {k: parse(v) for k, v in (i.split("=", 1) for i in items)}


def _print(results: dict[str, dict]) -> None:
    print(f"\n{'row':<26}" + "".join(f"{c:>11}" for c in COLS))
    for row, m in results.items():
        cells = "".join(f"{m[c]:>11.2f}" if isinstance(m.get(c), (int, float)) and m[c] == m[c] else f"{'':>11}" for c in COLS)
        print(f"{row:<26}{cells}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MMTT-format folder")
    p.add_argument("--out", required=True, help="runs folder (one sub-folder per row, fpn/ shared)")
    p.add_argument("--rows", nargs="+", default=["full", "no_fpn", "gt_prompts", "no_mask_decoder"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (several: out/seed<k>/<row>)")
    p.add_argument("--no-baselines", action="store_true", help="skip the trivial baselines (~40 s, mostly Java start-up)")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="ForgeryTalkerConfig overrides on top of the tiny recipe ('fpn.*': stage 1); values parsed as JSON")
    p.add_argument("--train-override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="TrainConfig overrides ('fpn.*': stage 1), e.g. fpn.epochs=5 fpn.clip_grad_norm=null")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root, out = Path(args.data), Path(args.out)
    over, tover = _pairs(args.override), _pairs(args.train_override)
    kinds = {str(r.image_id): explanation_kind(r.caption) for r in read_mmtt(find_mmtt_split(root, "test"))}
    results: dict[str, dict] = {}
    for seed in args.seeds:
        base = out if len(args.seeds) == 1 else out / f"seed{seed}"
        for row in args.rows:
            t0 = time.perf_counter()
            m = forgerytalker_run(root, base / row, scale="tiny", ablation=row, fpn_dir=base / "fpn", seed=seed,
                                     overrides=over, train_overrides=tover)
            preds = json.loads((base / row / "predictions.json").read_text())
            name = row if len(args.seeds) == 1 else f"{row} (seed {seed})"
            kind_acc = 100 * sum(explanation_kind(v) == kinds.get(k) for k, v in preds.items()) / len(preds)
            results[name] = m | {"distinct": m["distinct_explanations"], "kind_acc": kind_acc,
                                 "seconds": time.perf_counter() - t0}
            print(f"{name}: {results[name]['seconds']:.0f} s", flush=True)
    if len(args.seeds) > 1:
        for row in args.rows:
            runs = [results[f"{row} (seed {s})"] for s in args.seeds]
            results[f"{row} (mean)"] = {c: sum(r[c] for r in runs) / len(runs) for c in COLS
                                        if all(isinstance(r.get(c), (int, float)) and r[c] == r[c] for r in runs)}
    if not args.no_baselines: results |= baselines(root, forgerytalker_tiny().vision.image_size)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    _print(results)
    if not args.no_baselines:
        print(f"\nconstant explanation: {results['constant_explanation']['explanation']!r}")
        print(f"best constant explanation: {results['best_constant_explanation']['explanation']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
