"""forgrepro.repro: golden table rendering, YAML stacking, the experiment notebooks' parameter cells, and one
end-to-end reproduction on a minimal preset (papermill run, cache hit, --force, parameter injection, figures,
dataset card, and a 2-process gloo row through `accelerate launch`)."""
from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest

from forgrepro import repro

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
EXPERIMENTS = sorted((ROOT / "nbs" / "experiments").glob("*.ipynb"))
TINY_DGM4 = dict(n_train=16, n_val=8, n_test=16)


# ---------------------------------------------------------------- golden rendering
def fake_metrics() -> dict[str, dict[str, float | None]]:
    "Fixed metrics for every run: value = 50 + index of the metric key, one metric missing, one null."
    keys = ["AUC", "EER", "ACC", "mAP", "CF1", "OF1", "IoUmean", "IoU50", "IoU75", "Precision", "Recall", "F1",
            "PLM", "fpn_PLM", "region_F1", "CIDEr", "BLEU-4", "IoU", "distinct_explanations"]
    flat = {k: 50.0 + i for i, k in enumerate(keys)}
    flat |= {f"{s}/{k}": 40.0 + i for s in ("image", "text", "joint", "face_swap") for i, k in enumerate(keys)}
    flat["IoU75"] = None
    del flat["OF1"]
    _, runs = repro.plan()
    return {r: flat for r in runs if r != "asap_no_hard_negatives"}  # one run never finished


@pytest.mark.parametrize("table", ["hammer_t2", "hammer_t3", "asap_types", "forgerytalker_fpn"])
def test_golden_tables(table, tmp_path):
    t = repro.load_tables()[table]
    runs = {r: tmp_path.parent / "runs" / r for r in t.runs}
    repro.render_reports([t], fake_metrics(), tmp_path / "out", run_dirs={r: Path("/x/runs") / r for r in t.runs},
                         synthetic=True)
    for ext in ("md", "csv", "tex"):
        got = (tmp_path / "out" / f"{table}.{ext}").read_text()
        got = got.replace(os.path.relpath("/x/runs", tmp_path / "out"), "RUNS")  # links relative to a tmp folder
        gold = GOLDEN / f"{table}.{ext}"
        if os.environ.get("FORGREPRO_REGEN_GOLDEN"): gold.write_text(got)
        assert got == gold.read_text(), f"{table}.{ext} differs from {gold} (FORGREPRO_REGEN_GOLDEN=1 regenerates)"


def test_every_published_number_is_rendered(tmp_path):
    import csv, io
    tables = repro.load_tables()
    paper = repro.load_paper_numbers()
    repro.render_reports(list(tables.values()), {}, tmp_path, synthetic=False)
    shown = set()
    for t in tables:
        for r in csv.DictReader(io.StringIO((tmp_path / f"{t}.csv").read_text())):
            if r["paper"] != repro.NOT_PUBLISHED: shown.add((t, r["metric"], float(r["paper"])))
    want = {(t, m, v.value) for (t, _, m), v in paper.items()}
    assert want <= shown
    assert "Synthetic" not in (tmp_path / "hammer_t2.md").read_text()   # the banner is for synthetic data only
    asap = (tmp_path / "asap_main.md").read_text()
    assert "94.38‡" in asap and "93.19 |" in asap                      # unreliable ASAP value flagged, HAMMER's not


# ---------------------------------------------------------------- stacking and parameter cells
def parameter_cell(nb: Path) -> str:
    cells = [c for c in json.loads(nb.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{nb.name}: {len(cells)} parameters cells"
    return "".join(cells[0]["source"])


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=lambda p: p.name)
def test_parameters_are_typed_scalars_with_help(nb):
    src = parameter_cell(nb)
    tree = ast.parse(src)
    assert tree.body, nb
    for node, line in zip(tree.body, [l for l in src.splitlines() if l.strip()]):
        assert isinstance(node, ast.AnnAssign) and node.annotation.id in ("str", "int", "float", "bool"), line
        assert isinstance(node.value, ast.Constant) and "  # " in line, f"{nb.name}: {line!r} needs a scalar default and a help comment"
        assert "'" not in line.split("#", 1)[1], f"{nb.name}: {line!r}: papermill cannot parse an apostrophe in the comment"


def test_base_yaml_mirrors_train_notebook():
    ns: dict = {}
    exec(parameter_cell(ROOT / "nbs" / "experiments" / "train.ipynb"), ns)
    nb_params = {k: v for k, v in ns.items() if not k.startswith("__")}
    assert repro.load_yaml(ROOT / "configs" / "base.yaml") == nb_params


def test_stacking_order_and_errors(tmp_path):
    cfg = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", cfg)
    (cfg / "rows" / "x.yaml").write_text("method: asap\nseed: 1\nepochs: 7\ntiny: {epochs: 3}\npaper: {epochs: 9}\n")
    (cfg / "presets" / "p.yaml").write_text("seed: 2\nepochs: 5\n")
    p = repro.resolve_params("x", "tiny", presets=("p",), cfg_dir=cfg)
    assert (p["method"], p["seed"], p["epochs"]) == ("asap", 2, 3)       # preset beats row; row's tiny: section last
    assert repro.resolve_params("x", "paper", cfg_dir=cfg)["epochs"] == 9
    assert repro.resolve_params("x", "paper", cfg_dir=cfg)["device"] == "cuda"
    (cfg / "rows" / "bad.yaml").write_text("method: asap\nepoch: 3\n")
    with pytest.raises(KeyError, match="bad.yaml: unknown parameter 'epoch'"): repro.resolve_params("bad", cfg_dir=cfg)
    (cfg / "rows" / "bad.yaml").write_text("seed: two\n")
    with pytest.raises(TypeError, match="seed must be an int"): repro.resolve_params("bad", cfg_dir=cfg)


def test_every_row_builds_a_valid_spec():
    import importlib.util
    has_ft = importlib.util.find_spec("forgrepro.methods.forgerytalker") is not None
    for f in sorted((ROOT / "configs" / "rows").glob("*.yaml")):
        row = repro.load_row(f.stem)
        if row.method == "forgerytalker" and not has_ft: continue
        for scale in repro.SCALES:
            repro.row_spec(repro.resolve_params(row, scale))     # unknown ablations/overrides keys raise here


# ---------------------------------------------------------------- end to end (minimal preset)
@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    d = tmp_path_factory.mktemp("repro")
    kw = dict(presets=["minimal"], threads=1, runs_root=d / "runs", reports_root=d / "reports", cache_dir=d / "cache",
              synthetic_overrides={"dgm4": TINY_DGM4}, progress=False, log=lambda s: None)
    first = repro.reproduce(["hammer_t2", "hammer_t4"], **kw)
    return d, kw, first


def test_reproduce_writes_run_folders_and_tables(e2e):
    d, kw, first = e2e
    assert first["ran"] == ["hammer"] and not first["failed"], first
    run = d / "runs" / "synthetic" / "tiny" / "hammer"
    for f in ("train.ipynb", "params.yaml", "metrics.json", "env.json", "experiment.json", "cache_key", "predictions.npz"):
        assert (run / f).is_file(), f
    env = json.loads((run / "env.json").read_text())
    assert env["data_fingerprint"] and env["device"] == "cpu" and "torch" in env["versions"] and env["git_sha"]
    params = repro.load_yaml(run / "params.yaml")
    assert params["max_steps"] == 2 and params["method"] == "hammer"
    md = (d / "reports" / "synthetic" / "tiny" / "hammer_t2.md").read_text()
    auc = json.loads((run / "metrics.json").read_text())["AUC"]
    assert f"| {auc:.2f} |" in md and "Synthetic data" in md and "(../../../runs/synthetic/tiny/hammer)" in md
    t4 = (d / "reports" / "synthetic" / "tiny" / "hammer_t4.md").read_text()
    text_auc = json.loads((run / "metrics.json").read_text())["text/AUC"]
    assert f"| {text_auc:.2f} |" in t4
    assert (d / "reports" / "synthetic" / "tiny" / "figures" / "roc_per_method.png").is_file()
    assert (d / "reports" / "synthetic" / "tiny" / "README.md").is_file()


def test_rerun_is_cached_and_force_reruns(e2e):
    d, kw, first = e2e
    run = d / "runs" / "synthetic" / "tiny" / "hammer"
    stamp = (run / "metrics.json").stat().st_mtime_ns
    again = repro.reproduce(["hammer_t3"], figures=False, **kw)
    assert again["skipped"] == ["hammer"] and again["ran"] == []
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    forced = repro.reproduce(["hammer_t3"], figures=False, force=True, **kw)
    assert forced["ran"] == ["hammer"] and (run / "metrics.json").stat().st_mtime_ns != stamp


def test_parameter_injection_changes_the_result(e2e, tmp_path):
    d, kw, _ = e2e
    base = repro.load_yaml(d / "runs" / "synthetic" / "tiny" / "hammer" / "params.yaml")
    ref = json.loads((d / "runs" / "synthetic" / "tiny" / "hammer" / "metrics.json").read_text())
    wrong = {**base, "run_dir": str(tmp_path / "wrong"), "overrides_json": json.dumps({"optim.lr": 0.5, "optim.lr_img": 0.5})}
    m, ran = repro.run_row(wrong)
    assert ran
    nb = json.loads((tmp_path / "wrong" / "train.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and "optim.lr" in "".join(injected[0]["source"])
    assert json.loads((tmp_path / "wrong" / "experiment.json").read_text())["overrides"]["optim.lr"] == 0.5
    assert (m["AUC"], m["ACC"], m["IoUmean"]) != (ref["AUC"], ref["ACC"], ref["IoUmean"])


def test_dataset_card_notebook(e2e):
    d, kw, _ = e2e
    root = repro.synthetic_dataset("dgm4", cache_dir=d / "cache", generator_overrides=TINY_DGM4)
    out = d / "card"
    repro.execute_notebook(ROOT / "nbs" / "experiments" / "dataset_card.ipynb", out / "card.ipynb",
                           {"dgm4_root": str(root), "out_dir": str(out)}, cwd=ROOT)
    md = (out / "dataset_card.md").read_text()
    assert "face_swap" in md and "orig" in md
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    if not list(hub.glob("alexnet-*.pth")): assert "unavailable" in md
    assert "image_pairs" in md and "unpaired" in md


def test_lpips_pairs_path(e2e):
    "The dataset card's LPIPS path on real pairs, with a random AlexNet (no weights needed): 0 for identical images."
    import lpips
    from forgrepro.data.dgm4 import ImagePair, original_pairs, pairs_lpips, read_dgm4
    d, kw, _ = e2e
    root = repro.synthetic_dataset("dgm4", cache_dir=d / "cache", generator_overrides=TINY_DGM4)
    pairs, unpaired = original_pairs(read_dgm4(root / "DGM4" / "metadata" / "test.json"))
    assert pairs and all(p.fake_cls.startswith(("face_swap", "face_attribute")) for p in pairs)
    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)   # random backbone: a code-path check only
    same = [ImagePair(p.fake_cls, p.original, p.original) for p in pairs[:4]]
    assert pairs_lpips(same, root, model, size=64) == pytest.approx(0.0, abs=1e-6)
    assert pairs_lpips(pairs, root, model, n=4, size=64) > 0


def test_accelerate_two_gloo_processes(e2e, tmp_path):
    d, kw, _ = e2e
    base = repro.load_yaml(d / "runs" / "synthetic" / "tiny" / "hammer" / "params.yaml")
    m, ran = repro.run_row({**base, "run_dir": str(tmp_path / "ddp")}, launcher="accelerate", num_processes=2)
    log = (tmp_path / "ddp" / "accelerate.log").read_text()
    assert ran and "AUC" in m
    env = json.loads((tmp_path / "ddp" / "env.json").read_text())
    assert env["launcher"] == "accelerate" and env["num_processes"] == 2
    hist = (tmp_path / "ddp" / "train" / "history.jsonl").read_text()
    assert hist, log
