"""The published global batch on any number of processes: 1 process × 4 accumulated micro-batches, 2 × 2 and 4 × 1
(gloo, CPU) train to the same weights.

`fit` derives micro-batch and accumulation from `TrainConfig.global_batch` and the process count (`batch_plan`);
`EpochBatchSampler` cuts one permutation per (seed, epoch) into global batches, so every optimiser step sees the same
16 samples in all three layouts (rank r takes micro-batch slice r of each world-sized chunk). The toy task has a
per-sample loss (MSE, no dropout, no batch statistics), so the three runs differ only in the order of float sums:
after 8 AdamW steps the weights agree to 1e-6 (absolute; the weights are O(1)) while a run with a 4x smaller global
batch is far off. pytest runs this file's `worker` under `torchrun --standalone --nproc_per_node N`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
GLOBAL, MICRO, N_TRAIN, EPOCHS = 16, 4, 64, 2
TOL = 1e-6


def worker(out: Path, global_batch: int) -> None:
    "One torchrun process: fit the toy regression with the global batch kept, save rank 0's weights and the plan."
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader
    from forgrepro.checkpoint import save_weights
    from forgrepro.train import fit, tiny_train_config, world_size
    from test_train import ToyData, ToyTask
    cfg = dataclasses.replace(tiny_train_config(), epochs=EPOCHS, batch_size=MICRO, global_batch=global_batch,
                              warmup_steps=2, log_every=1, out_dir=str(out / "run"))
    res = fit(ToyTask(dropout=0.0, stateful=False), lambda: DataLoader(ToyData(N_TRAIN, augment=False), batch_size=MICRO),
              None, cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        save_weights(out / "weights.safetensors", res.model)
        saved = json.loads((out / "run" / "config.json").read_text())
        (out / "plan.json").write_text(json.dumps({"world": world_size(), "steps": res.state.step,
                                                   "steps_per_epoch": res.state.steps_per_epoch,
                                                   "micro": saved["train"]["batch_size"], "accum": saved["train"]["grad_accum"],
                                                   "world_size": saved["world_size"]}))


def launch(tmp_path: Path, nproc: int, global_batch: int = GLOBAL) -> tuple[dict, dict]:
    out = tmp_path / f"p{nproc}_g{global_batch}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE.parent)]), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), str(HERE),
           str(out), str(global_batch)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun x{nproc} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    from safetensors.torch import load_file
    return json.loads((out / "plan.json").read_text()), load_file(str(out / "weights.safetensors"))


def test_one_two_four_processes_train_the_same_weights(tmp_path):
    runs = {n: launch(tmp_path, n) for n in (1, 2, 4)}
    for n, (plan, _) in runs.items():   # the plan each layout ran: same global batch, same schedule in steps
        assert (plan["world"], plan["world_size"]) == (n, n)
        assert (plan["micro"], plan["accum"]) == (MICRO, GLOBAL // (MICRO * n))
        assert (plan["steps_per_epoch"], plan["steps"]) == (N_TRAIN // GLOBAL, EPOCHS * N_TRAIN // GLOBAL)
    ref = runs[1][1]
    for n in (2, 4):
        w = runs[n][1]
        assert w.keys() == ref.keys()
        diffs = {k: (w[k] - ref[k]).abs().max().item() for k in ref}
        print(f"{n} processes x {GLOBAL // (MICRO * n)} accumulation vs 1 x {GLOBAL // MICRO}: max |dw| {max(diffs.values()):.2e}")
        assert max(diffs.values()) <= TOL, diffs
    # the comparison can fail: a quarter of the global batch (4 processes x 1, micro 1) trains other weights
    _, small = launch(tmp_path, 4, global_batch=GLOBAL // 4)
    assert max((small[k] - ref[k]).abs().max().item() for k in ref) > 1e3 * TOL


if __name__ == "__main__":
    worker(Path(sys.argv[1]), int(sys.argv[2]))
