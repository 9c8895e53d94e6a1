"""forgrepro.checkpoint: exact round trips, atomic writes, no unpickling, clear key errors, weight conversion."""
from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import forgrepro.checkpoint as ckpt
from forgrepro.checkpoint import (CheckpointError, LoadResult, capture_rng_state, convert_torch_checkpoint_to_safetensors,
                                  is_checkpoint, load_checkpoint, load_state, load_weights, restore_rng_state,
                                  save_checkpoint, save_weights)
from forgrepro.train import LRSchedule, TrainConfig

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    "Tied embedding/output weights, dropout, an ALBEF-style momentum copy and a feature queue with its pointer."
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.enc = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Dropout(0.2))
        self.out = nn.Linear(6, 11, bias=False)
        self.out.weight = self.emb.weight
        self.enc_m = nn.Linear(6, 6).requires_grad_(False)  # momentum encoder: parameters without grad
        self.register_buffer("queue", torch.randn(6, 32))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("bf16_stat", torch.randn(3).to(torch.bfloat16))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, ids):
        h = self.enc(self.emb(ids)).mean(1)
        with torch.no_grad():
            for p, pm in zip(self.enc[0].parameters(), self.enc_m.parameters()): pm.mul_(0.995).add_(p, alpha=0.005)
            self.queue[:, :len(h)] = h.T
            self.queue_ptr += len(h)
        return self.out(h)


def trained(steps=3, seed=0):
    torch.manual_seed(seed)
    net = Net()
    opt = torch.optim.AdamW([{"params": [*net.emb.parameters(), *net.enc.parameters()], "lr": 1e-3, "name": "main"}],
                            weight_decay=0.02)
    sched = LRSchedule(opt, TrainConfig(epochs=3, schedule="cosine", warmup_steps=2), steps_per_epoch=4)
    for step in range(steps):
        sched.apply(step)
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.randint(0, 11, (4, 5))), torch.randint(0, 11, (4,))).backward()
        opt.step()
    return net, opt, sched


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_round_trip_model_optimizer_scheduler_rng_and_buffers(tmp_path):
    net, opt, sched = trained()
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    rng = capture_rng_state()
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    state = {"step": 3, "epoch": 0, "best_metric": None, "history": [{"step": 1, "train/loss": 2.5}],
             "ranks": [{"rng": rng, "meter": {"sums": {"loss": torch.tensor(1.25)}, "count": 2}}], "config": {"betas": [0.9, 0.999]}}
    save_checkpoint(tmp_path / "last", model=net, optimizer=opt, scheduler=sched, state=state)

    torch.manual_seed(99)
    net2 = Net()
    opt2 = torch.optim.AdamW([{"params": [*net2.emb.parameters(), *net2.enc.parameters()], "lr": 5.0}])
    sched2 = LRSchedule(opt2, TrainConfig(epochs=3, schedule="cosine", warmup_steps=2), steps_per_epoch=4)
    with pytest.warns(UserWarning, match="base lrs changed"):  # the receiving optimiser was built with lr 5.0
        back = load_checkpoint(tmp_path / "last", net2, opt2, sched2)

    assert equal_states(net.state_dict(), net2.state_dict())  # params, momentum copy, queue, pointer, bf16 buffer
    assert net2.out.weight is net2.emb.weight  # tying of the receiving model intact
    sd, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd["param_groups"] == sd2["param_groups"] and sd2["param_groups"][0]["name"] == "main"
    assert all(equal_states(sd["state"][i], sd2["state"][i]) for i in sd["state"])
    assert sched2.state_dict() == sched.state_dict()
    assert back["history"] == state["history"] and back["best_metric"] is None
    assert torch.equal(back["ranks"][0]["meter"]["sums"]["loss"], torch.tensor(1.25))
    restore_rng_state(back["ranks"][0]["rng"])
    got = (random.random(), np.random.rand(3), torch.rand(3))
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1]) and torch.equal(got[2], expected[2])

    # continuing training from the loaded copy is bitwise the same as continuing the original
    for n, o, s in ((net, opt, sched), (net2, opt2, sched2)):
        torch.manual_seed(7)
        s.apply(3); o.zero_grad()
        nn.functional.cross_entropy(n(torch.randint(0, 11, (4, 5))), torch.randint(0, 11, (4,))).backward()
        o.step()
    assert equal_states(net.state_dict(), net2.state_dict())


def test_files_are_safetensors_and_json_only(tmp_path):
    net, opt, sched = trained()
    save_checkpoint(tmp_path / "c", model=net, optimizer=opt, scheduler=sched, state={"rng": capture_rng_state()})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "checkpoint.json", "model.safetensors", "optimizer.safetensors", "state.safetensors"]
    with safe_open(str(tmp_path / "c" / "optimizer.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= keys  # keyed by parameter index
    with safe_open(str(tmp_path / "c" / "state.safetensors"), framework="pt") as f:
        assert f.get_tensor("state.rng.torch").dtype == torch.uint8
    with safe_open(str(tmp_path / "c" / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert "emb.weight" in names and "out.weight" not in names and "scratch" not in names  # tied once, non-persistent skipped


def test_loading_never_unpickles(tmp_path, monkeypatch):
    net, opt, sched = trained()
    save_checkpoint(tmp_path / "c", model=net, optimizer=opt, scheduler=sched, state={"rng": capture_rng_state()})
    save_weights(tmp_path / "w.safetensors", net)

    def forbidden(*args, **kwargs): raise AssertionError("unpickling is forbidden")
    for mod, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(mod, name, forbidden)
    net2, opt2, sched2 = trained(steps=0, seed=5)
    load_checkpoint(tmp_path / "c", net2, opt2, sched2)
    load_state(tmp_path / "c")
    assert load_weights(tmp_path / "w.safetensors", Net()) == LoadResult([], [])
    assert equal_states(net.state_dict(), net2.state_dict())


def test_torch_load_appears_only_in_the_explicit_converter():
    for path in sorted((ROOT / "forgrepro").rglob("*.py")):
        module, src = path.relative_to(ROOT).as_posix(), path.read_text()
        for m in re.finditer(r"torch\.load\(|pickle\.load", src):
            enclosing = src[:m.start()].rsplit("\ndef ", 1)[-1].split("(", 1)[0]
            assert enclosing == "convert_torch_checkpoint_to_safetensors", (module, enclosing)


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    net, opt, sched = trained(steps=1)
    save_checkpoint(tmp_path / "last", model=net, optimizer=opt, scheduler=sched, state={"step": 1})
    net_b, opt_b, sched_b = trained(steps=2)
    real = ckpt.save_file

    def crash_on_optimizer(tensors, filename, metadata=None):
        if Path(filename).name == "optimizer.safetensors": raise KeyboardInterrupt("killed mid-save")
        return real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(ckpt, "save_file", crash_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", model=net_b, optimizer=opt_b, scheduler=sched_b, state={"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # temp dir removed, nothing half-written
    net2, opt2, sched2 = trained(steps=0, seed=3)
    assert load_checkpoint(tmp_path / "last", net2, opt2, sched2)["step"] == 1
    assert equal_states(net2.state_dict(), net.state_dict())


def test_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    net, opt, sched = trained(steps=1)
    save_checkpoint(tmp_path / "last", model=net, optimizer=opt, state={"step": 1})
    real, calls = os.replace, []

    def crash_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2: raise KeyboardInterrupt("killed between renames")
        return real(src, dst)
    monkeypatch.setattr(ckpt.os, "replace", crash_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", model=trained(steps=2)[0], optimizer=opt, state={"step": 2})
    monkeypatch.undo()
    assert not (tmp_path / "last").exists() and (tmp_path / ".last.old").exists()  # the window the crash hit
    with pytest.warns(UserWarning, match="restoring the previous checkpoint"):
        assert is_checkpoint(tmp_path / "last")
    net2 = Net()
    assert load_checkpoint(tmp_path / "last", net2)["step"] == 1
    assert equal_states(net2.state_dict(), net.state_dict())
    assert not (tmp_path / ".last.old").exists()
    save_checkpoint(tmp_path / "last", model=net, state={"step": 3})  # the next save clears the abandoned temp dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"] and load_state(tmp_path / "last")["step"] == 3


def test_clear_errors_for_missing_unexpected_and_misshapen_keys(tmp_path):
    net, _, _ = trained(steps=0)
    save_checkpoint(tmp_path / "c", model=net)

    class Renamed(Net):
        def __init__(self):
            super().__init__()
            self.extra = nn.Linear(2, 2)
            del self.queue_ptr
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "c", Renamed())
    msg = str(e.value)
    assert str(tmp_path / "c" / "model.safetensors") in msg
    assert "2 missing key(s): extra.bias, extra.weight" in msg and "1 unexpected key(s): queue_ptr" in msg

    class Wider(Net):
        def __init__(self):
            super().__init__()
            self.register_buffer("queue", torch.randn(6, 64))
    with pytest.raises(CheckpointError, match=r"shape mismatch\(es\): queue: checkpoint \(6, 32\) vs model \(6, 64\)"):
        load_checkpoint(tmp_path / "c", Wider())
    with pytest.raises(CheckpointError, match="has no optimiser state"):
        load_checkpoint(tmp_path / "c", Net(), torch.optim.AdamW(Net().parameters()))
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "nowhere", Net())
    res = load_checkpoint(tmp_path / "c", Renamed(), strict=False)  # non-strict loads the overlap
    assert res == {}


def test_optimizer_group_mismatch_is_named(tmp_path):
    net, opt, _ = trained()
    save_checkpoint(tmp_path / "c", model=net, optimizer=opt)
    other = torch.optim.AdamW([{"params": net.emb.parameters()}, {"params": net.enc.parameters()}])
    with pytest.raises(CheckpointError, match=r"param groups of sizes \[1, 4\], checkpoint has \[5\]"):
        load_checkpoint(tmp_path / "c", Net(), other)


def test_unsupported_state_values_fail_at_save_time(tmp_path):
    with pytest.raises(TypeError, match=r"state.bad: cannot checkpoint a object"):
        save_checkpoint(tmp_path / "c", model=nn.Linear(1, 1), state={"bad": object()})
    assert not (tmp_path / "c").exists()


def test_wrappers_are_removed_before_saving(tmp_path):
    net = Net()
    for wrapped in (nn.DataParallel(net), torch.compile(net)):
        save_weights(tmp_path / "w.safetensors", wrapped)
        with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
            assert all(not k.startswith(("module.", "_orig_mod.")) for k in f.keys())
        assert load_weights(tmp_path / "w.safetensors", Net()) == LoadResult([], [])


def test_load_weights_key_map_and_strictness(tmp_path):
    src = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    path = save_weights(tmp_path / "pre.safetensors", src)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual_encoder = nn.Linear(3, 4)
            self.head = nn.Linear(4, 2)
            self.new_head = nn.Linear(4, 1)
    m = Model()
    with pytest.raises(CheckpointError, match="2 missing key"):
        load_weights(path, m, key_map={"0.": "visual_encoder.", "2.": "head."})
    with pytest.warns(UserWarning, match="2 model keys not in the file"):
        res = load_weights(path, m, key_map={"0.": "visual_encoder.", "2.": "head."}, strict=False)
    assert res == LoadResult(["new_head.bias", "new_head.weight"], [])
    assert torch.equal(m.head.weight, src[2].weight)
    with pytest.raises(CheckpointError, match="only .safetensors weights are loaded"):
        load_weights(tmp_path / "official.pth", m)


def test_convert_official_pth_checkpoint(tmp_path):
    src = Net()
    official = {"model": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 12,
                "config": {"batch_size_train": 32, "optimizer": {"lr": 2e-5}}}
    torch.save(official, tmp_path / "checkpoint_best.pth")  # the official train.py save format
    out = convert_torch_checkpoint_to_safetensors(tmp_path / "checkpoint_best.pth", tmp_path / "hammer.safetensors")
    dst = Net()
    assert load_weights(out, dst) == LoadResult([], [])
    assert equal_states(dst.state_dict(), src.state_dict())
    torch.save(src.state_dict(), tmp_path / "plain.pth")  # a bare state dict (no 'model' key)
    assert load_weights(convert_torch_checkpoint_to_safetensors(tmp_path / "plain.pth", tmp_path / "p.safetensors"), Net()) == LoadResult([], [])
    with pytest.raises(CheckpointError, match="no 'state_dict' entry"):
        convert_torch_checkpoint_to_safetensors(tmp_path / "checkpoint_best.pth", tmp_path / "x.safetensors", key="state_dict")


class Payload:
    "An arbitrary object: the restricted unpickler must refuse it."
    def __reduce__(self): return (os.getcwd, ())


def test_convert_refuses_arbitrary_pickled_objects(tmp_path):
    torch.save({"model": Net().state_dict(), "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        convert_torch_checkpoint_to_safetensors(tmp_path / "evil.pth", tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()
