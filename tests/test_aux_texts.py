"""`forgrepro aux-texts` with tiny local models (random LLaVA captioner and Llama instruct LLM built from configs,
no download) on a small synth-dgm4: a run killed twice (in the caption phase and in the explanation phase, plus a
torn shard line) and resumed ends with files byte-identical to an uninterrupted run; the output loads with
`AuxTexts.load`, is in ASAP's layout, and ASAP trains on it; bad model folders, bad splits and changed settings are
refused naming what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from forgrepro.cli import main

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:metric .* is nan")   # per-type subsets of an 8-record test split
OUTPUTS = ("caption_train.json", "explanation_train.json", "asap/caption_train.json",
           "asap/Prompt_Generate/prompt_train.json", "asap/dataset/prompt_engine.json")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from forgrepro.data.dgm4 import read_dgm4
    from forgrepro.data.synth_dgm4 import make_synth_dgm4
    from forgrepro.data.aux_texts import tiny_aux_models
    d = tmp_path_factory.mktemp("aux")
    root = make_synth_dgm4(d / "data", n_train=24, n_val=8, n_test=8, workers=0)
    words = {w for r in read_dgm4(root / "DGM4" / "metadata" / "train.json") for w in r.text.split()}
    cap, llm = tiny_aux_models(d / "models", words=sorted(words))
    return d, root, cap, llm


def args(root, cap, llm, out, *extra):
    return ["aux-texts", "--data", str(root), "--split", "train", "--captioner", str(cap), "--llm", str(llm), "--out", str(out),
            "--batch-size", "2", "--device", "cpu", *extra]


def lines(folder: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in folder.glob("shard-*.jsonl")) if folder.is_dir() else 0


def run_and_kill(cmd: list[str], shards: Path, at: int) -> None:
    "Start the command in a fresh process and SIGKILL it once `shards` hold `at` finished batches."
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "forgrepro.cli", *cmd], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while lines(shards) < at:
            assert proc.poll() is None, "the run finished before it could be interrupted"
            assert time.time() - t0 < 240, "no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


def test_killed_and_resumed_run_is_byte_identical_and_asap_trains_on_it(setup, tmp_path, capsys):
    d, root, cap, llm = setup
    whole, broken = tmp_path / "whole", tmp_path / "resumed"
    assert main(args(root, cap, llm, whole)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "captions" in out and "explanations" in out
    work = broken / ".aux-texts-train"
    run_and_kill(args(root, cap, llm, broken), work / "captions", at=3)            # killed while captioning
    n_cap = lines(work / "captions")
    assert 3 <= n_cap and not any((broken / o).exists() for o in OUTPUTS)
    run_and_kill(args(root, cap, llm, broken), work / "explanations", at=2)        # resumed, killed while explaining
    assert lines(work / "captions") > n_cap and not any((broken / o).exists() for o in OUTPUTS)
    with open(work / "explanations" / "shard-00000.jsonl", "ab") as f: f.write(b'{"batch": 2, "texts": ["torn')
    assert not json.loads((work / "manifest.json").read_text())["complete"]
    assert main(args(root, cap, llm, broken)) == 0, capsys.readouterr().err      # finishes what is left
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    for o in OUTPUTS: assert (broken / o).read_bytes() == (whole / o).read_bytes(), o
    man = json.loads((work / "manifest.json").read_text())
    assert man["complete"] and man["outputs"] == {o: digest(whole / o) for o in OUTPUTS}
    s = man["settings"]
    assert s["prompts"]["caption"] == "Give the caption of this picture" and s["batch_size"] == 2 and s["dtype"] == "float32"
    assert s["generation"]["explanation"]["max_length"] == 120 and "model.safetensors" in s["llm"]["files"]
    print(f"aux-texts: killed twice + torn line, resumed: {len(OUTPUTS)} files byte-identical to the uninterrupted run "
          f"({', '.join(f'{o} {digest(whole / o)[:12]}' for o in OUTPUTS[:2])})")

    # the output loads, keys every training record (strict: a missing one raises), and is ASAP's layout
    from forgrepro.data.dgm4 import AuxTexts, DGM4Dataset
    from forgrepro.data.text import pre_caption
    aux = AuxTexts.load(captions=whole / "caption_train.json", explanations=whole / "explanation_train.json")
    ds = DGM4Dataset(root, "train", aux_texts=aux, strict=True)
    caps, asap = json.loads((whole / "caption_train.json").read_text()), json.loads((whole / "asap/Prompt_Generate/prompt_train.json").read_text())
    rec = ds.records[0]
    assert ds.aux[0][0] == pre_caption(caps[rec.image], 50) and set(asap) == {r.image for r in ds.records}
    assert (whole / "asap/caption_train.json").read_text() == json.dumps(caps)     # vlm_script.py's json.dump format

    # ASAP trains on it (a few steps)
    from forgrepro.experiment import ExperimentSpec, run_experiment
    run = tmp_path / "asap_run"
    m = run_experiment(ExperimentSpec("asap", "tiny", train={"epochs": 1, "batch_size": 8, "max_steps": 3, "max_eval_batches": 1}),
                       root, run, device="cpu", aux_dir=whole)
    hist = [json.loads(l) for l in (run / "train" / "history.jsonl").read_text().splitlines()]
    lma = [h for h in hist if "train/lma_i2c" in h]
    assert lma and all(torch.isfinite(torch.tensor(h["train/lma_i2c"])) for h in lma) and "AUC" in m


def test_bad_inputs_are_named(setup, tmp_path, capsys):
    d, root, cap, llm = setup
    cases = [
        (args(root, llm, llm, tmp_path / "a"), [f"{llm}: model_type 'llama'", "is not an image-to-text model"]),
        (args(root, cap, cap, tmp_path / "b"), [f"{cap}: model_type 'llava'", "is not a causal instruct LLM"]),
        (args(root, cap, d, tmp_path / "c"), [f"{d}: no config.json: not a transformers model folder"]),
        (args(root, cap, llm, tmp_path / "d")[:4] + ["nosplit"] + args(root, cap, llm, tmp_path / "d")[5:],
         ["DataError", "split 'nosplit' not found", "metadata/nosplit.json"]),
        (args(tmp_path, cap, llm, tmp_path / "e"), ["DataError", "no DGM4/ folder here"]),
    ]
    for argv, says in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("forgrepro aux-texts: "), err
        for s in says: assert s in err, (s, err)
    # resuming with other settings is refused (naming what changed) unless --restart
    out = tmp_path / "f"
    assert main(args(root, cap, llm, out, "--limit", "4")) == 0
    rc = main(args(root, cap, llm, out, "--limit", "4")[:-6] + ["--batch-size", "3", "--device", "cpu", "--limit", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and "other settings (batch_size)" in err and "--restart" in err, err
    assert main(args(root, cap, llm, out, "--limit", "4", "--restart")) == 0
