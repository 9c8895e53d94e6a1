"""`forgrepro evaluate` and `reproduce --weights`: an official-format checkpoint exported from a forgrepro model scores
exactly the metrics of the model itself; bad checkpoints and bad data are refused with the file named and nothing left
that looks finished; `reproduce` prints a row's own error and exits non-zero.

Two tiny rows (HAMMER, ASAP; patchify ViT stem, the official architecture) train a few steps on a small synth-dgm4.
"Directly" = `forgrepro.evaluate.evaluate` on the trained model object with a DGM4 loader of the same batch size.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from forgrepro.cli import main
from forgrepro.data.dgm4 import DGM4Collator, DGM4Dataset
from forgrepro.data.text import bert_tokenizer
from forgrepro.evaluate import evaluate
from forgrepro.experiment import ExperimentSpec, load_trained, method_spec, run_experiment
from forgrepro.methods.dgm4 import DGM4Evaluator
from forgrepro.methods.hammer import export_official_weights
from forgrepro.released import OFFICIAL_TEST_BATCH

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:metric .* is nan")   # per-type subsets of a 40-record test split
N_TEST = 40
TRAIN = {"epochs": 2, "batch_size": 8, "max_steps": 12, "warmup_steps": 2, "max_eval_batches": 1}
PATCH = {"vision.stem": "patch"}   # the tiny recipe's conv stem has no official counterpart


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from forgrepro.data.synth_dgm4 import make_synth_dgm4
    root = tmp_path_factory.mktemp("synth")
    make_synth_dgm4(root, n_train=48, n_val=8, n_test=N_TEST, workers=0)
    return root


@pytest.fixture(scope="module")
def runs(synth, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    for method in ("hammer", "asap"):
        run_experiment(ExperimentSpec(method, "tiny", overrides=PATCH, train=TRAIN), synth, d / method, device="cpu")
    return d


def _null(m: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in m.items()}


def direct_metrics(method: str, run: Path, root: Path) -> dict:
    "The trained model object, evaluated with forgrepro.evaluate on the official test batch."
    spec, task, model = load_trained(run)
    needs = method_spec(method).data_needs(task)
    ds = DGM4Dataset(root, "test", image_res=needs.image_res, train=False)
    loader = DataLoader(ds, batch_size=OFFICIAL_TEST_BATCH[method], collate_fn=DGM4Collator(bert_tokenizer(), max_length=needs.max_length))
    return _null(evaluate(model, DGM4Evaluator(breakdown=True), loader, mixed_precision="no")), model


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("method", ["hammer", "asap"])
def test_exported_official_checkpoint_scores_exactly_the_direct_metrics(method, runs, synth, tmp_path, capsys):
    direct, model = direct_metrics(method, runs / method, synth)
    assert direct["AUC"] is not None and 0 < direct["ACC"] < 100 and "image/AUC" in direct and "face_swap/N" in direct
    official = tmp_path / f"{method}_official.safetensors"
    state = export_official_weights(model, official)
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in state and "queue_ptr" in state
    # 1. the exported official-format safetensors (its metadata records the size)
    rc, out, err = run_cli(["evaluate", method, "--weights", str(official), "--data", str(synth), "--out", str(tmp_path / "e1")], capsys)
    assert rc == 0, err
    got = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert got == direct
    # 2. the same tensors as an official checkpoint_best.pth ({'model': ..., ...}; no metadata: size from --scale/--overrides)
    torch.save({"model": state, "optimizer": {"state": {}}, "config": {"batch_size_val": 256}, "epoch": 0}, tmp_path / "checkpoint_best.pth")
    rc, out, err = run_cli(["evaluate", method, "--weights", str(tmp_path / "checkpoint_best.pth"), "--data", str(synth),
                            "--scale", "tiny", "--overrides", json.dumps(PATCH), "--out", str(tmp_path / "e2")], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text()) == direct
    # 3. the forgrepro run folder itself
    rc, out, err = run_cli(["evaluate", method, "--weights", str(runs / method), "--data", str(synth), "--out", str(tmp_path / "e3")], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "e3" / "metrics.json").read_text()) == direct
    # predictions and provenance
    preds = [json.loads(l) for l in (tmp_path / "e1" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == N_TEST and {"id", "image", "fake_cls", "p_fake", "multi_logits", "box", "iou"} <= set(preds[0])
    assert sum(p["pred_fake"] == int(p["fake_cls"] != "orig") for p in preds) / N_TEST == pytest.approx(direct["ACC"] / 100)
    env = json.loads((tmp_path / "e2" / "env.json").read_text())
    assert env["precision"] == "fp32" and env["batch_size"] == OFFICIAL_TEST_BATCH[method] and env["split"] == "test"
    assert env["weights"]["layout"] == "official" and env["weights"]["converted_from"].endswith("checkpoint_best.pth")
    assert len(env["weights"]["sha256"]) == 64 and env["records"] == N_TEST
    show = " ".join(f"{k} {direct[k]:.4f}" if direct[k] is not None else f"{k} null" for k in ("AUC", "ACC", "mAP", "IoUmean", "F1"))
    print(f"{method}: exported official checkpoint == run folder == direct evaluation: {show} ({len(direct)} metrics identical)")


def test_bad_checkpoints_and_data_are_named_and_leave_nothing_finished(runs, synth, tmp_path, capsys):
    _, _, hammer = load_trained(runs / "hammer")
    _, _, asap = load_trained(runs / "asap")
    files = {"asap": tmp_path / "asap.safetensors", "hammer": tmp_path / "hammer.safetensors"}
    export_official_weights(asap, files["asap"]); export_official_weights(hammer, files["hammer"])
    bare = tmp_path / "bare.safetensors"; save_file(export_official_weights(hammer), bare)        # no size recorded
    albef = tmp_path / "ALBEF_4M.safetensors"
    save_file({k: v for k, v in export_official_weights(hammer).items() if not k.startswith(("cls_head", "bbox_head"))}, albef)
    cut = tmp_path / "cut.safetensors"; b = files["hammer"].read_bytes(); cut.write_bytes(b[: len(b) // 3])
    cut_pth = tmp_path / "cut.pth"; torch.save({"model": {"a": torch.zeros(1000)}}, cut_pth)
    cut_pth.write_bytes(cut_pth.read_bytes()[:200])

    class Evil:
        def __reduce__(self): return (print, ("never run",))
    evil = tmp_path / "evil.pth"; torch.save({"model": {"w": torch.zeros(1)}, "extra": Evil()}, evil)
    nosplit = tmp_path / "nosplit"; shutil.copytree(synth / "DGM4" / "metadata", nosplit / "DGM4" / "metadata")
    (nosplit / "DGM4" / "metadata" / "test.json").unlink()
    cases = [  # (method, weights, data, extra args, what stderr must say)
        ("hammer", files["asap"], synth, [], [f"{files['asap']}: this is not a hammer checkpoint", "ASAP's itm_head_m"]),
        ("asap", files["hammer"], synth, [], [f"{files['hammer']}: this is not a asap checkpoint", "it holds hammer"]),
        ("hammer", bare, synth, ["--scale", "paper"], [f"{bare}: does not fit forgrepro's hammer at scale 'paper'", "shape mismatch"]),
        ("hammer", albef, synth, [], [f"{albef}: this is not a hammer checkpoint", "a pre-training checkpoint"]),
        ("hammer", cut, synth, [], [f"{cut}: not a readable safetensors file", "truncated or corrupt"]),
        ("hammer", cut_pth, synth, [], [f"{cut_pth}: torch.load(weights_only=True) refused or failed"]),
        ("hammer", evil, synth, [], [f"{evil}: torch.load(weights_only=True) refused", "inspect it in a trusted environment"]),
        ("hammer", files["hammer"], nosplit, [], ["DataError", "split 'test' not found", "metadata/test.json"]),
        ("m4blip", files["hammer"], synth, [], [f"{files['hammer']}: this is not a m4blip checkpoint"]),
    ]
    for i, (method, weights, data, extra, says) in enumerate(cases):
        out = tmp_path / f"bad{i}"; out.mkdir()
        (out / "metrics.json").write_text("{}")          # a stale result must not survive as if this run finished
        rc, _, err = run_cli(["evaluate", method, "--weights", str(weights), "--data", str(data), "--out", str(out), *extra], capsys)
        assert rc == 1, (i, err)
        for s in says: assert s in err, (i, s, err)
        assert err.startswith("forgrepro evaluate: ") and len(err.strip().splitlines()) == 1, err
        assert not (out / "metrics.json").exists() and not list(out.glob("predictions*")), i   # nothing looks finished


def test_reproduce_prints_the_rows_own_error_and_exits_non_zero(synth, tmp_path, capsys):
    "Tried as a new user would: a DGM4 folder whose train.json is truncated."
    root = tmp_path / "dgm4"; shutil.copytree(synth, root)
    train = root / "DGM4" / "metadata" / "train.json"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    rc, out, err = run_cli(["reproduce", "hammer_t2", "--data", str(root), "--preset", "minimal", "--threads", "1",
                            "--no-figures", "--no-baselines", "--runs", str(tmp_path / "runs"),
                            "--reports", str(tmp_path / "reports")], capsys)
    assert rc == 1, (out, err)
    line = next(l for l in err.splitlines() if "hammer failed" in l)
    assert "DataError" in line and str(train) in line and "malformed JSON" in line, line


def test_reproduce_fills_a_row_from_released_weights_without_training(runs, synth, tmp_path, capsys):
    direct, model = direct_metrics("hammer", runs / "hammer", synth)
    ckpt = tmp_path / "hammer_release.safetensors"
    export_official_weights(model, ckpt)
    args = ["reproduce", "hammer_t2", "--data", str(synth), "--weights", f"hammer={ckpt}", "--no-train", "--no-figures",
            "--no-baselines", "--runs", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports")]
    rc, out, err = run_cli(args, capsys)
    assert rc == 0, err
    assert "released checkpoints scored 1" in out and "hammer: not trained (--no-train)" in out
    md = (tmp_path / "reports" / synth.name / "tiny" / "hammer_t2.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("| | released checkpoint, evaluated here"))
    assert f"| {direct['AUC']:.2f} | {direct['EER']:.2f} | {direct['ACC']:.2f} |" in line
    assert "| | ours | not run |" in md and "Δ (released checkpoint)" in md
    released = tmp_path / "runs" / synth.name / "tiny" / "released" / "hammer"
    stamp = (released / "metrics.json").stat().st_mtime_ns
    rc, out, err = run_cli(args, capsys)                 # the same weights and data: the evaluation is reused
    assert rc == 0 and (released / "metrics.json").stat().st_mtime_ns == stamp
    rc, out, err = run_cli(args[:-2] + [*args[-2:], "--weights", "nosuchrow=x.pth"], capsys)
    assert rc == 1 and "released nosuchrow failed: KeyError: --weights nosuchrow=...: not a row of these tables" in err
