"""forgrepro.train: learning, bitwise determinism, exact resume, official lr schedules, grad accumulation, best checkpoint.

The toy task is ALBEF-shaped on purpose: dropout (RNG), a momentum (EMA) copy of the weights and a feature
queue (registered buffers) that feed back into the prediction, and a dataset with random augmentation, so
a resume that forgot any of RNG, buffers, optimiser state, schedule or data position would not be bitwise.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from forgrepro.checkpoint import load_checkpoint, load_state
from forgrepro.core import DataError, Issue
from forgrepro.task import LossOutput
from forgrepro.train import (LRSchedule, TrainConfig, fit, make_accelerator, scheduled_lr, tiny_train_config,
                             hammer_train_config, forgerytalker_train_config, StopTraining)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------- toy task
class ToyData(Dataset):
    "x ~ N(0, 1)^d, y = x·w* + noise; `__getitem__` adds augmentation noise from the global torch RNG."
    def __init__(self, n: int = 64, d: int = 8, seed: int = 0, augment: bool = True):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=g)
        self.y = self.x @ torch.linspace(-1, 1, d) + 0.1 * torch.randn(n, generator=g)
        self.augment = augment

    def __len__(self): return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] + 0.01 * torch.randn_like(self.x[i]) if self.augment else self.x[i]
        return {"x": x, "y": self.y[i], "idx": torch.tensor(i)}


class ToyNet(nn.Module):
    "Linear regressor + dropout + EMA weights + feature queue (buffers updated in forward, train mode only)."
    def __init__(self, d: int = 8, queue: int = 16, dropout: float = 0.1, stateful: bool = True):
        super().__init__()
        self.lin, self.drop, self.stateful = nn.Linear(d, 1), nn.Dropout(dropout), stateful
        self.register_buffer("ema", self.lin.weight.detach().clone())
        self.register_buffer("queue", torch.zeros(queue, d))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        x = batch["x"]
        pred = self.lin(self.drop(x)).squeeze(-1)
        if not self.stateful: return pred
        pred = pred + 0.01 * (self.queue.mean(0) @ self.ema[0])
        if self.training:
            with torch.no_grad():
                self.ema.mul_(0.9).add_(self.lin.weight, alpha=0.1)
                slots = (self.ptr + torch.arange(len(x), device=x.device)) % len(self.queue)
                self.queue[slots] = x
                self.ptr.copy_(slots[-1] + 1)
        return pred


class ToyEvaluator:
    "Regression metrics; keeps (idx, prediction) so tests can check every sample is seen exactly once."
    primary = "neg_mse"

    def reset(self): self.idx, self.pred, self.y = [], [], []

    def update(self, output, batch):
        self.idx.append(batch["idx"].cpu()); self.pred.append(output.float().cpu()); self.y.append(batch["y"].cpu())

    def compute(self):
        idx = torch.cat(self.idx)
        order = idx.argsort()  # sample order, so the float sums do not depend on batch/process order
        pred, y = torch.cat(self.pred)[order], torch.cat(self.y)[order]
        err = (pred - y) ** 2
        return {"neg_mse": -err.mean().item(), "mae": (pred - y).abs().mean().item(), "n": float(len(idx)),
                "n_unique": float(idx.unique().numel()), "idx_sum": float(idx.sum())}


@dataclass
class ToyTask:
    name: str = "toy"
    dropout: float = 0.1
    stateful: bool = True
    models: list = field(default_factory=list)  # every model built (single process: the one being trained)

    def build_model(self):
        model = ToyNet(dropout=self.dropout, stateful=self.stateful)
        self.models.append(model)
        return model

    def loss(self, output, batch, progress):
        mse = F.mse_loss(output, batch["y"])
        return LossOutput(mse, {"mse": mse.detach(), "alpha": torch.tensor(min(1.0, progress.epoch_float))})

    def param_groups(self, model):
        return [{"params": [model.lin.weight], "lr": 0.1, "name": "weight"},
                {"params": [model.lin.bias], "lr": 0.02, "name": "bias"}]

    def evaluator(self): return ToyEvaluator()


def loaders(n_train=64, n_val=40, batch_size=8, augment=True):
    return (lambda: DataLoader(ToyData(n_train, augment=augment), batch_size=batch_size, shuffle=True),
            lambda: DataLoader(ToyData(n_val, seed=1, augment=False), batch_size=16))


def config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dataclasses.replace(tiny_train_config(), epochs=3, batch_size=8, warmup_steps=4, log_every=1,
                               out_dir=str(tmp_path / name))
    return dataclasses.replace(base, **kw)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def train_losses(result):
    return [r["train/loss"] for r in result.state.history if "train/loss" in r]


# ----------------------------------------------------------------------------------------------- learning
def test_loss_decreases_on_toy_regression(tmp_path, capsys):
    train_fn, val_fn = loaders()
    res = fit(ToyTask(), train_fn, val_fn, config(tmp_path, epochs=4, log_every=8))
    assert "FROM SCRATCH" in capsys.readouterr().out
    losses = train_losses(res)
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses
    val = [r["val/neg_mse"] for r in res.state.history if "val/neg_mse" in r]
    assert len(val) == 4 and val[-1] > 3 * val[0], val  # one evaluation per epoch (eval_every=None)
    assert res.state.step == 4 * 8 and res.metrics["n"] == 40 and res.metrics["n_unique"] == 40
    hist = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert hist == res.state.history
    assert set(hist[0]) >= {"step", "epoch", "lr", "lr/weight", "lr/bias", "train/loss", "train/mse"}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["neg_mse"] == res.metrics["neg_mse"]
    assert (tmp_path / "run" / "env.json").exists() and (tmp_path / "run" / "config.json").exists()


def test_same_seed_is_bitwise_identical_and_seed_matters(tmp_path):
    train_fn, val_fn = loaders()
    a = fit(ToyTask(), train_fn, val_fn, config(tmp_path, "a"))
    b = fit(ToyTask(), train_fn, val_fn, config(tmp_path, "b"))
    c = fit(ToyTask(), train_fn, val_fn, config(tmp_path, "c", seed=1))
    assert a.state.history == b.state.history and a.metrics == b.metrics and states_equal(a.model, b.model)
    assert train_losses(a) != train_losses(c)


def test_num_workers_do_not_change_the_run(tmp_path):
    "Each micro-batch is loaded under its own seed, so workers (and which one loads a batch) do not matter."
    train_fn, val_fn = loaders()
    a = fit(ToyTask(), train_fn, val_fn, config(tmp_path, "a", epochs=1))
    b = fit(ToyTask(), train_fn, val_fn, config(tmp_path, "b", epochs=1, num_workers=2))
    assert a.state.history == b.state.history and states_equal(a.model, b.model)


# ----------------------------------------------------------------------------------------------- resume
class Kill(Exception):
    pass


def killer(at_step):
    def cb(event, state):
        if event == "step" and state.step == at_step: raise Kill(f"simulated kill at step {at_step}")
    return cb


def optimizer_state(run_dir):
    opt_model = ToyNet()
    task = ToyTask()
    opt = torch.optim.AdamW(task.param_groups(opt_model))
    load_checkpoint(run_dir / "last", opt_model, opt)
    return opt.state_dict()


@pytest.mark.parametrize("batch_size,grad_accum", [(8, 1), (4, 2)])
def test_resume_after_kill_mid_epoch_is_bitwise_identical(tmp_path, monkeypatch, capsys, batch_size, grad_accum):
    train_fn, val_fn = loaders(batch_size=batch_size)
    cfg = config(tmp_path, "full", checkpoint_every=5, batch_size=batch_size, grad_accum=grad_accum)
    # 8 optimiser steps/epoch, checkpoints at 5, 10, 15, 20
    full = fit(ToyTask(), train_fn, val_fn, cfg)

    cfg_k = dataclasses.replace(cfg, out_dir=str(tmp_path / "killed"))
    with pytest.raises(Kill):
        fit(ToyTask(), train_fn, val_fn, cfg_k, callbacks=[killer(13)])
    assert load_state(tmp_path / "killed" / "last")["step"] == 10  # epoch 1, 2 of its 8 steps done
    lines = (tmp_path / "killed" / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 13  # history past the checkpoint exists on disk ...

    def no_pickle(*a, **k): raise AssertionError("torch.load must never be called on resume")
    monkeypatch.setattr(torch, "load", no_pickle)
    capsys.readouterr()
    resumed = fit(ToyTask(), train_fn, val_fn, dataclasses.replace(cfg_k, num_workers=2))  # workers: resume-safe change
    out = capsys.readouterr().out
    assert "RESUMING" in out and "at step 10/24" in out
    assert resumed.resumed_from == tmp_path / "killed" / "last"
    assert resumed.metrics == full.metrics  # exactly the same final metrics
    assert resumed.state.history == full.state.history  # ... and is replaced by the exact continuation
    assert [json.loads(x) for x in (tmp_path / "killed" / "history.jsonl").read_text().splitlines()] == full.state.history
    assert (resumed.state.best_step, resumed.state.best_metric) == (full.state.best_step, full.state.best_metric)
    assert states_equal(resumed.model, full.model)  # parameters, EMA, queue and queue pointer
    oa, ob = optimizer_state(tmp_path / "full"), optimizer_state(tmp_path / "killed")
    assert oa["param_groups"] == ob["param_groups"]
    assert all(torch.equal(oa["state"][i][k], ob["state"][i][k]) for i in oa["state"] for k in oa["state"][i])


def test_resume_after_max_steps_cap_continues_exactly(tmp_path):
    "A capped run is a prefix of the full run: same schedule, and its extra final evaluation perturbs nothing."
    train_fn, val_fn = loaders()
    full = fit(ToyTask(), train_fn, val_fn, config(tmp_path, "full"))
    capped = fit(ToyTask(), train_fn, val_fn, config(tmp_path, "capped", max_steps=11))
    assert capped.state.step == 11 and capped.state.last_eval_step == 11
    resumed = fit(ToyTask(), train_fn, val_fn, config(tmp_path, "capped"))
    assert resumed.state.step == 24 and resumed.metrics == full.metrics and states_equal(resumed.model, full.model)
    assert train_losses(resumed) == train_losses(full)
    again = fit(ToyTask(), train_fn, val_fn, config(tmp_path, "capped"))  # finished run: nothing left to do
    assert again.state.step == 24 and again.metrics == full.metrics


def test_resume_refuses_a_different_config(tmp_path):
    train_fn, val_fn = loaders()
    fit(ToyTask(), train_fn, val_fn, config(tmp_path, max_steps=3))
    with pytest.raises(ValueError, match=r"different config \(seed: 0 -> 5\)"):
        fit(ToyTask(), train_fn, val_fn, config(tmp_path, seed=5))
    fresh = fit(ToyTask(), train_fn, val_fn, config(tmp_path, seed=5, epochs=1), resume=False)
    assert fresh.resumed_from is None and fresh.state.history[0]["step"] == 1


# ----------------------------------------------------------------------------------------------- schedules
def official_albef_lrs(base_lrs, *, epochs, iters_per_epoch, warmup_steps, step_size, warmup_lr, min_lr):
    "lr per iteration as HAMMER's train.py drives ALBEF's timm CosineLRScheduler (warmup_prefix=True)."
    from timm.scheduler import CosineLRScheduler
    params = [nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)])
    sched = CosineLRScheduler(opt, t_initial=epochs, lr_min=min_lr, warmup_lr_init=warmup_lr, warmup_t=warmup_steps,
                              warmup_prefix=True, cycle_limit=1, t_in_epochs=True)
    out = []
    for epoch in range(epochs):
        for i in range(iters_per_epoch):
            out.append([g["lr"] for g in opt.param_groups])  # lr used by this iteration's optimizer.step()
            if epoch == 0 and i % step_size == 0 and i <= warmup_steps * step_size:  # train.py l.159-160
                sched.step(i // step_size)
        sched.step(epoch + warmup_steps + 1)  # train.py l.418-419
    return out


@pytest.mark.parametrize("iters_per_epoch", [1234, 550])  # warm-up inside epoch 0, and longer than epoch 0
def test_albef_schedule_matches_the_official_timm_scheduler(iters_per_epoch):
    cfg = dataclasses.replace(hammer_train_config(), epochs=6)
    ref = official_albef_lrs([1e-4, 2e-5], epochs=6, iters_per_epoch=iters_per_epoch, warmup_steps=10, step_size=100,
                             warmup_lr=1e-6, min_lr=1e-6)
    ours = [[scheduled_lr(b, s, cfg, iters_per_epoch) for b in (1e-4, 2e-5)] for s in range(len(ref))]
    assert torch.allclose(torch.tensor(ours, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=0)


def test_albef_schedule_hand_computed():
    cfg = hammer_train_config()  # 50 epochs, warm-up 1e-6 -> base over 10 x 100 iterations, min 1e-6
    spe = 3000
    hand = {0: 1e-6, 100: 1e-6, 101: 1e-6 + 1 * (1e-4 - 1e-6) / 10, 550: 1e-6 + 5 * (1e-4 - 1e-6) / 10,
            1000: 1e-6 + 9 * (1e-4 - 1e-6) / 10, 1001: 1e-4, 2999: 1e-4,
            3000: 1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * 1 / 50)),
            25 * 3000 + 17: 1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * 25 / 50)),
            49 * 3000 + 2999: 1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * 49 / 50))}
    for step, lr in hand.items():
        assert scheduled_lr(1e-4, step, cfg, spe) == pytest.approx(lr, rel=1e-12), step
    net = nn.Linear(2, 1)
    opt = torch.optim.AdamW([{"params": [net.weight], "lr": 1e-4}, {"params": [net.bias], "lr": 2e-5}])
    sched = LRSchedule(opt, cfg, spe)
    assert sched.apply(101) == pytest.approx([1e-6 + 9.9e-6, 1e-6 + 1.9e-6], rel=1e-12)  # both groups scaled alike
    assert [g["lr"] for g in opt.param_groups] == sched.lrs(101)


def test_lavis_and_cosine_schedules_hand_computed():
    ft = forgerytalker_train_config()  # LAVIS: init 9e-6, min 9e-7, warmup 1.125e-8 over 1000 iterations
    assert scheduled_lr(9e-6, 0, ft, 5000) == pytest.approx(1.125e-8, rel=1e-12)
    assert scheduled_lr(9e-6, 250, ft, 5000) == pytest.approx(1.125e-8 + (9e-6 - 1.125e-8) / 4, rel=1e-12)
    assert scheduled_lr(9e-6, 4000, ft, 5000) == 9e-6  # min(max_lr, ...) after the warm-up
    assert scheduled_lr(9e-6, 5000 * 10, ft, 5000) == pytest.approx(
        9e-7 + 0.5 * (9e-6 - 9e-7) * (1 + math.cos(math.pi * 10 / 1000)), rel=1e-12)
    cfg = TrainConfig(epochs=2, schedule="cosine", warmup_steps=4, warmup_lr=0.0, min_lr=0.0)
    assert [scheduled_lr(1.0, s, cfg, 7) for s in (0, 2, 4)] == [0.0, 0.5, 1.0]
    assert scheduled_lr(1.0, 9, cfg, 7) == pytest.approx(0.5)  # half-way through the 10 decay steps
    assert scheduled_lr(1.0, 13, cfg, 7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))


def test_fit_applies_the_schedule_to_every_group(tmp_path):
    train_fn, val_fn = loaders()
    cfg = config(tmp_path, schedule="albef", warmup_lr=1e-3, min_lr=1e-4, warmup_steps=4, warmup_interval=2)
    res = fit(ToyTask(), train_fn, None, cfg)
    recs = [r for r in res.state.history if "lr" in r]
    for r in recs:
        assert r["lr/weight"] == pytest.approx(scheduled_lr(0.1, r["step"] - 1, cfg, 8), rel=1e-12)
        assert r["lr/bias"] == pytest.approx(scheduled_lr(0.02, r["step"] - 1, cfg, 8), rel=1e-12)
    assert recs[0]["lr/weight"] == 1e-3 and recs[-1]["lr/weight"] < 0.1  # warm-up start, cosine in epoch 2


# ----------------------------------------------------------------------------------------------- accumulation
def test_grad_accumulation_matches_the_larger_batch(tmp_path):
    "2 micro-batches of 4 per step == 1 batch of 8 (same samples per step: the sampler order does not depend on B)."
    task = lambda: ToyTask(dropout=0.0, stateful=False)
    (train4, val), (train8, _) = loaders(batch_size=4, augment=False), loaders(batch_size=8, augment=False)
    acc = fit(task(), train4, val, config(tmp_path, "accum", batch_size=4, grad_accum=2))
    big = fit(task(), train8, val, config(tmp_path, "big", batch_size=8))
    assert acc.state.step == big.state.step == 24
    for (k, a), b in zip(acc.model.state_dict().items(), big.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert acc.metrics["neg_mse"] == pytest.approx(big.metrics["neg_mse"], rel=1e-5)
    no_accum = fit(task(), train4, val, config(tmp_path, "small", batch_size=4))  # 16 steps/epoch: a different run
    assert no_accum.state.step == 48


# ----------------------------------------------------------------------------------------------- best checkpoint
class ScriptedEvaluator(ToyEvaluator):
    primary = "score"

    def __init__(self, scores): self.scores = list(scores)

    def compute(self): return {**super().compute(), "score": self.scores.pop(0)}


def test_best_checkpoint_is_selected_by_the_primary_metric(tmp_path):
    task = ToyTask()
    task.evaluator = lambda: ScriptedEvaluator([0.1, 0.5, 0.3, 0.5, 0.2, 0.4])  # 6 evaluations (every 4 steps)
    snapshots = {}
    def snap(event, state):
        if event == "eval": snapshots[state.step] = {k: v.clone() for k, v in task.models[-1].state_dict().items()}
    train_fn, val_fn = loaders()
    res = fit(task, train_fn, val_fn, config(tmp_path, eval_every=4), callbacks=[snap])
    assert sorted(snapshots) == [4, 8, 12, 16, 20, 24]
    assert (res.state.best_step, res.state.best_metric) == (8, 0.5)  # first of the tied maxima, as the official '>'
    best = load_state(tmp_path / "run" / "best")
    assert best["step"] == 8 and best["metrics"]["score"] == 0.5 and best["primary"] == "score"
    model = ToyNet()
    load_checkpoint(tmp_path / "run" / "best", model)
    assert all(torch.equal(v, snapshots[8][k]) for k, v in model.state_dict().items())
    assert not (tmp_path / "run" / "best" / "optimizer.safetensors").exists()  # best/ holds weights + metrics only


# ----------------------------------------------------------------------------------------------- data issues
@dataclass
class ToyBatch:
    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    skipped: list = field(default_factory=list)

    def __getitem__(self, key): return getattr(self, key)

    def to(self, device, non_blocking=False):
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device), idx=self.idx.to(device))


class FlakyData(ToyData):
    "Samples 3 and 7 are unreadable: their DataError is handed to the collator, which reports them in `batch.skipped`."
    def __getitem__(self, i):
        if i in (3, 7): return DataError("corrupt JPEG", path=f"img/{i}.jpg", record=i, kind="corrupt_image")
        return super().__getitem__(i)


def collate_skipping(items):
    errors = [e for e in items if isinstance(e, DataError)]
    good = [e for e in items if not isinstance(e, DataError)]
    return ToyBatch(torch.stack([g["x"] for g in good]), torch.stack([g["y"] for g in good]),
                    torch.stack([g["idx"] for g in good]),
                    [Issue(e.kind, e.path, e.record, e.reason, "skipped") for e in errors])


def test_skipped_samples_are_aggregated_into_the_issue_report(tmp_path):
    train_fn = lambda: DataLoader(FlakyData(), batch_size=8, collate_fn=collate_skipping)
    res = fit(ToyTask(), train_fn, None, config(tmp_path))
    assert res.issues.counts() == {"skipped:corrupt_image": 2}  # each distinct problem once, not once per epoch
    report = json.loads((tmp_path / "run" / "issues.json").read_text())
    assert report["n_skipped"] == 2 and sorted(i["record"] for i in report["issues"]) == [3, 7]
    assert report["issues"][0]["path"].startswith("img/")


# ----------------------------------------------------------------------------------------------- plumbing
def test_training_loader_batch_size_must_match_the_config(tmp_path):
    train_fn, _ = loaders(batch_size=16)
    with pytest.raises(ValueError, match="batch_size=16 but cfg.batch_size=8"):
        fit(ToyTask(), train_fn, None, config(tmp_path))


def test_too_small_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="give no full optimiser step"):
        fit(ToyTask(), lambda: ToyData(12), None, config(tmp_path, batch_size=8, grad_accum=2))


def test_stop_training_callback_ends_cleanly(tmp_path):
    def stop(event, state):
        if event == "step" and state.step == 5: raise StopTraining
    train_fn, val_fn = loaders()
    res = fit(ToyTask(), train_fn, val_fn, config(tmp_path), callbacks=[stop])
    assert res.state.step == 5 and res.state.last_eval_step == 5 and load_state(tmp_path / "run" / "last")["step"] == 5


def test_bf16_without_gpu_falls_back_to_fp32():
    if torch.cuda.is_available(): pytest.skip("CPU-only behaviour")
    with pytest.warns(UserWarning, match="needs a GPU"):
        acc = make_accelerator(TrainConfig(mixed_precision="bf16"))
    assert acc.mixed_precision == "no"
