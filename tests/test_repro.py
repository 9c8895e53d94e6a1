"""forgrepro.repro: golden table rendering, YAML stacking, the experiment notebooks' parameter cells, and one
end-to-end reproduction on a minimal preset (papermill run, cache hit, --force, parameter injection, figures,
dataset card, and a 2-process gloo row through `accelerate launch`)."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from forgrepro import repro, tables

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
EXPERIMENTS = sorted((ROOT / "nbs" / "experiments").glob("*.ipynb"))
TINY_DGM4 = dict(n_train=16, n_val=8, n_test=16)


# ---------------------------------------------------------------- golden rendering
KEYS = ["AUC", "EER", "ACC", "mAP", "CF1", "OF1", "IoUmean", "IoU50", "IoU75", "Precision", "Recall", "F1",
        "PLM", "fpn_PLM", "region_F1", "CIDEr", "BLEU-4", "IoU", "distinct_explanations"]
SUBSETS = ("", "image/", "text/", "joint/", "face_swap/")


def fake_run(i: int, shift: float = 0.0) -> dict[str, float | None]:
    "Metrics of the i-th run: 10 + 5 i + subset index + 0.05 x key index (+ shift): every run, subset and key distinct."
    flat = {f"{s}{k}": 10.0 + 5 * i + si + 0.05 * j + shift for si, s in enumerate(SUBSETS) for j, k in enumerate(KEYS)}
    flat["IoU75"] = None                                            # a null metric ...
    del flat["OF1"]                                                 # ... and a missing one
    return flat


def fake_metrics() -> dict[str, dict[str, float | None]]:
    "Fixed metrics for every run of the plan (`fake_run` by plan index); one run never finished."
    _, runs = repro.plan()
    return {r: fake_run(i) for i, r in enumerate(runs) if r != "asap_no_hard_negatives"}


def fake_seed_metrics() -> dict[str, tables.SeedRuns]:
    """Three seeds per run: the run's pattern moved by a per-run, per-seed offset, so that some differences between rows
    are within the seed spread and some are not; one run has only seeds 0 and 1."""
    _, runs = repro.plan()
    shift = lambda i, s: [0.0, 3.0 * (i % 3 + 1), -2.0 * (i % 2 + 1)][s]
    out = {r: tables.SeedRuns({s: fake_run(i, shift(i, s)) for s in (0, 1, 2)})
           for i, r in enumerate(runs) if r != "asap_no_hard_negatives"}
    del out["asap_ladder_lma_mgca"][2]
    return out


def fake_baselines() -> dict[str, dict[str, dict[str, float | None]]]:
    "Input-blind rows per test split: 1 + subset index + 0.01 x key index (+ 0.5 for the second), one undefined metric."
    def one(shift):
        m = {f"{s}{k}": 1.0 + si + 0.01 * j + shift for si, s in enumerate(SUBSETS) for j, k in enumerate(KEYS)}
        return m | {"F1": None, "CIDEr": float("nan")}
    return {"dgm4": {"constant": one(0.0), "zero box": one(0.5)}, "mmtt": {"best constant explanation": one(0.25)}}


def render_to(tmp_path, tables, metrics, baselines=None) -> Path:
    out = tmp_path / "out"
    runs = {r for t in tables for r in t.runs}
    repro.render_reports(tables, metrics, out, run_dirs={r: Path("/x/runs") / r for r in runs}, synthetic=True,
                         baselines=baselines)
    return out


def check_golden(got: str, name: str, tmp_path) -> None:
    got = got.replace(os.path.relpath("/x/runs", tmp_path / "out"), "RUNS")  # links relative to a tmp folder
    gold = GOLDEN / name
    if os.environ.get("FORGREPRO_REGEN_GOLDEN"): gold.write_text(got)
    assert got == gold.read_text(), f"{name} differs from {gold} (FORGREPRO_REGEN_GOLDEN=1 regenerates)"


@pytest.mark.parametrize("table", ["hammer_t2", "hammer_t3", "asap_types", "forgerytalker_fpn"])
def test_golden_tables(table, tmp_path):
    "One seed, input-blind rows (hammer_t2/t3, forgerytalker_fpn) or per-row chance lines (asap_types)."
    out = render_to(tmp_path, [tables.load_tables()[table]], fake_metrics(), fake_baselines())
    for ext in ("md", "csv", "tex"): check_golden((out / f"{table}.{ext}").read_text(), f"{table}.{ext}", tmp_path)


def test_golden_seed_tables(tmp_path):
    "Three seeds: mean ± sd cells, the ladder's Δ vs the previous row (≈ where within the spread), and seed_spread.md."
    t = tables.load_tables()["asap_modules"]
    out = render_to(tmp_path, [t], fake_seed_metrics(), fake_baselines())
    for ext in ("md", "csv", "tex"): check_golden((out / f"asap_modules.{ext}").read_text(), f"asap_modules_seeds.{ext}", tmp_path)
    _, runs = repro.plan()
    kinds = {r: (repro.load_row(r).method, "mmtt" if r.startswith("forgerytalker") else "dgm4") for r in runs}
    md, cs = repro.render_seed_spread(fake_seed_metrics(), kinds, header="HEADER")
    check_golden(md, "seed_spread.md", tmp_path)
    check_golden(cs, "seed_spread.csv", tmp_path)


def md_lines(md: str) -> dict[tuple[str, str], list[str]]:
    "{(row label, line kind): cells} of a rendered Markdown table (a block's label carried to its ours/Δ lines)."
    out, label = {}, ""
    for line in md.splitlines():
        if not line.startswith("| ") or line.startswith("| Method"): continue
        cells = [c.strip() for c in line.strip()[1:-1].split(" | ")]
        label = cells[0] or label
        out[(label, re.sub(r" \(\[run\].*", "", cells[1]))] = cells[2:]
    return out


@pytest.mark.parametrize("table", ["hammer_t2", "asap_modules", "asap_types", "forgerytalker_fpn", "m4blip_localglobal"])
def test_each_value_lands_on_its_row(table, tmp_path):
    "Every row's ours line shows its own run's value under its own key (a value on the wrong row or column fails)."
    t = tables.load_tables()[table]
    for metrics in (fake_metrics(), fake_seed_metrics()):
        out = render_to(tmp_path, [t], metrics, fake_baselines())
        lines = md_lines((out / f"{table}.md").read_text())
        for r in t.rows:
            if r.run is None or r.run not in metrics: continue
            runs = tables.per_seed(metrics[r.run])
            want = []
            for m in t.metrics:
                vals = [v[r.key(m)] for v in runs.values() if v.get(r.key(m)) is not None]
                mean, sd, _ = tables.seed_stats(vals)
                want.append("missing metric" if r.key(m) not in next(iter(runs.values())) else
                            "—" if mean is None else f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else ""))
            got = [re.sub(r" \(n=\d\)$", "", c) for c in lines[(r.label, "ours")]]    # (n=2): fewer seeds than others
            assert got == want, (table, r.label)
            if r.ref:                                                   # the Δ vs its reference row, paired by seed
                ref = t.row(r.ref)
                got = lines[(r.label, f"Δ vs {ref.label}")]
                for m, cell in zip(t.metrics, got):
                    mine, theirs = tables.per_seed(metrics[r.run]), tables.per_seed(metrics[ref.run])
                    d = [mine[s][r.key(m)] - theirs[s][ref.key(m)] for s in mine if s in theirs
                         and mine[s].get(r.key(m)) is not None and theirs[s].get(ref.key(m)) is not None]
                    if d: assert cell.startswith(f"{sum(d) / len(d):+.2f}"), (table, r.label, m, cell)


def test_every_published_number_is_rendered(tmp_path):
    import csv, io
    defs = tables.load_tables()
    paper = tables.load_paper_numbers()
    repro.render_reports(list(defs.values()), {}, tmp_path, synthetic=False)
    shown = set()
    for t in defs:
        for r in csv.DictReader(io.StringIO((tmp_path / f"{t}.csv").read_text())):
            if r["paper"] != tables.NOT_PUBLISHED: shown.add((t, r["row"], r["metric"], float(r["paper"])))
    want = {(t, defs[t].row(row).label, m, v.value) for (t, row, m), v in paper.items()}
    assert want <= shown                                                # on its own row and column
    assert "Synthetic" not in (tmp_path / "hammer_t2.md").read_text()   # the banner is for synthetic data only
    asap = md_lines((tmp_path / "asap_main.md").read_text())
    # ASAP's main table as printed: its HAMMER row (not HAMMER's own 93.19), DGM4-baseline, MFCLIP; all flagged ‡
    assert asap[("HAMMER", "paper")][:4] == ["93.09‡", NA, "86.42‡", "87.20‡"] and asap[("ASAP", "paper")][0] == "94.38‡"
    assert asap[("DGM4-baseline", "paper")][0] == "91.56‡" and asap[("MFCLIP", "paper")][-1] == "71.68‡"
    assert asap[("MFCLIP", "ours")][0] == tables.NOT_REPRODUCED
    fpn = md_lines((tmp_path / "forgerytalker_fpn.md").read_text())
    assert fpn[("FPN alone", "paper")][0] == "41.00† [v1]" and fpn[("with FPN prompts (full)", "paper")][0] == "39.16† [v2]"
    assert "[v1] arXiv 2412.19685v1" in (tmp_path / "forgerytalker_fpn.md").read_text()


NA = tables.NOT_PUBLISHED


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


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=lambda p: p.name)
def test_plain_papermill_help_lists_every_parameter(nb):
    "The templates keep a kernelspec (papermill's kernel and language), so `papermill --help-notebook` works."
    import subprocess, sys
    meta = json.loads(nb.read_text())["metadata"]["kernelspec"]
    assert (meta["name"], meta["language"]) == ("python3", "python"), nb.name
    res = subprocess.run([str(Path(sys.executable).parent / "papermill"), "--help-notebook", str(nb)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    shown = " ".join(res.stdout.split())
    for line in (l for l in parameter_cell(nb).splitlines() if l.strip()):
        name, comment = line.split(":", 1)[0].strip(), line.split("#", 1)[1].strip()
        assert f"{name}: " in shown and " ".join(comment.split()) in shown, (nb.name, name, comment)


def test_base_yaml_mirrors_train_notebook():
    ns: dict = {}
    exec(parameter_cell(ROOT / "nbs" / "experiments" / "train.ipynb"), ns)
    nb_params = {k: v for k, v in ns.items() if not k.startswith("__")}
    assert tables.load_yaml(ROOT / "configs" / "base.yaml") == nb_params


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


def _dotted(cfg, key: str):
    for part in key.split("."): cfg = getattr(cfg, part)
    return cfg


def _row_config(spec):
    "The model config a row trains (DGM4: its task's config; ForgeryTalker: the main config, as forgerytalker_run builds it)."
    from forgrepro.core import override
    from forgrepro.experiment import _split_overrides, build_task
    if spec.method != "forgerytalker": return build_task(spec).cfg
    from forgrepro.methods.forgerytalker import ablation_config
    return override(ablation_config(spec.scale, spec.ablation), _split_overrides(spec.model_overrides())[0])


def test_every_row_builds_a_valid_spec():
    "Each row's YAML reaches its spec and its model config (ablation and overrides applied); no two rows train the same."
    seen: dict[tuple, str] = {}
    for f in sorted((ROOT / "configs" / "rows").glob("*.yaml")):
        yaml_row = tables.load_yaml(f)
        row = repro.load_row(f.stem)
        for scale in repro.SCALES:
            spec = repro.row_spec(repro.resolve_params(row, scale))   # unknown ablations/overrides keys raise here
            assert (spec.method, spec.scale, spec.ablation) == (yaml_row["method"], scale, yaml_row.get("ablation", "full")), f.name
            want = yaml_row.get("overrides_json", {})                   # YAML reads the JSON object as a mapping
            assert dict(spec.overrides) == (json.loads(want) if isinstance(want, str) else want), f.name
            cfg = _row_config(spec)
            for k, v in spec.model_overrides().items():               # the scale recipe's, the ablation's, the row's own
                if k.startswith("fpn."): continue                      # ForgeryTalker stage 1 (FPNTaskConfig)
                got = _dotted(cfg, k)
                assert got == (tuple(v) if isinstance(got, tuple) and isinstance(v, list) else v), (f.name, scale, k, got, v)
            key = (spec.method, scale, json.dumps(spec.model_overrides(), sort_keys=True))
            assert key not in seen, f"{f.name} trains the same model as {seen[key]} at {scale}"
            seen[key] = f.name
    assert len(seen) == 2 * len(list((ROOT / "configs" / "rows").glob("*.yaml")))


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
    params = tables.load_yaml(run / "params.yaml")
    assert params["max_steps"] == 2 and params["method"] == "hammer"
    md = (d / "reports" / "synthetic" / "tiny" / "hammer_t2.md").read_text()
    m = json.loads((run / "metrics.json").read_text())
    assert md_lines(md)[("HAMMER", "ours")][:3] == [f"{m[k]:.2f}" for k in ("AUC", "EER", "ACC")]   # on HAMMER's row
    assert "Synthetic data" in md and "(../../../runs/synthetic/tiny/hammer)" in md
    t4 = md_lines((d / "reports" / "synthetic" / "tiny" / "hammer_t4.md").read_text())
    assert t4[("HAMMER", "ours")][0] == f"{m['text/AUC']:.2f}" and t4[("BERT", "ours")][0] == tables.NOT_REPRODUCED
    # chance level in place: the input-blind rows, on the text subset in Table 4
    blind = json.loads((d / "runs" / "synthetic" / "tiny" / "_baselines" / "dgm4.json").read_text())["baselines"]
    assert t4[("all tokens fake", "input-blind")][-1] == f"{blind['all_tokens_fake']['metrics']['text/F1']:.2f}"
    assert (d / "reports" / "synthetic" / "tiny" / "trivial_baselines.md").is_file()
    assert "(trivial_baselines.md)" in (d / "reports" / "synthetic" / "tiny" / "README.md").read_text()
    assert (d / "reports" / "synthetic" / "tiny" / "figures" / "roc_per_method.png").is_file()
    assert (d / "reports" / "synthetic" / "tiny" / "README.md").is_file()


def test_plain_papermill_runs_the_template(e2e, tmp_path):
    "`papermill train.ipynb -f base -f row -f preset -p data ... -p run_dir ...`, as a new user types it, trains the runner's row to the same metrics."
    import subprocess, sys
    d, kw, _ = e2e
    run = d / "runs" / "synthetic" / "tiny" / "hammer"
    runner = tables.load_yaml(run / "params.yaml")
    cfg = ROOT / "configs"
    files = [cfg / "base.yaml", cfg / "rows" / "hammer.yaml", cfg / "presets" / "minimal.yaml"]
    stacked = {k: v for f in files for k, v in tables.load_yaml(f).items()} | {"data": runner["data"], "threads": runner["threads"]}
    assert {k: v for k, v in stacked.items() if k not in ("title", "run_dir")} == \
        {k: v for k, v in runner.items() if k != "run_dir"}                          # the same parameters as the runner's row
    cmd = [str(Path(sys.executable).parent / "papermill"), str(ROOT / "nbs" / "experiments" / "train.ipynb"),
           str(tmp_path / "out.ipynb"), *[a for f in files for a in ("-f", str(f))],
           "-p", "data", runner["data"], "-p", "run_dir", str(tmp_path / "run"), "-p", "threads", str(runner["threads"])]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == json.loads((run / "metrics.json").read_text())


def test_rerun_is_cached_and_force_reruns(e2e):
    d, kw, first = e2e
    run = d / "runs" / "synthetic" / "tiny" / "hammer"
    stamp = (run / "metrics.json").stat().st_mtime_ns
    again = repro.reproduce(["hammer_t3"], figures=False, **kw)
    assert again["skipped"] == ["hammer"] and again["ran"] == []
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    forced = repro.reproduce(["hammer_t3"], figures=False, force=True, **kw)
    assert forced["ran"] == ["hammer"] and (run / "metrics.json").stat().st_mtime_ns != stamp


def test_seeds_mean_sd_spread_and_baselines(e2e):
    "Two seeds: seed 0 reuses the single-seed run, seed 1 runs in seed1/; cells mean ± sample sd; seed_spread.md; chance rows."
    import csv, io, statistics
    from forgrepro import baselines as B
    d, kw, _ = e2e
    res = repro.reproduce(["hammer_t2"], seeds=[0, 1], figures=False, **kw)
    assert res["skipped"] == ["hammer/seed0"] and res["ran"] == ["hammer/seed1"] and not res["failed"], res
    runs, out = d / "runs" / "synthetic" / "tiny", d / "reports" / "synthetic" / "tiny"
    m0, m1 = (json.loads((runs / f / "metrics.json").read_text()) for f in ("hammer", "seed1/hammer"))
    assert tables.load_yaml(runs / "seed1" / "hammer" / "params.yaml")["seed"] == 1
    assert (m0["AUC"], m0["ACC"], m0["IoUmean"]) != (m1["AUC"], m1["ACC"], m1["IoUmean"])    # another seed, another model
    t2 = tables.load_tables()["hammer_t2"]
    lines = md_lines((out / "hammer_t2.md").read_text())
    def cell(k):   # mean ± sd over the seeds where the metric is defined (n=1: no sd, marked)
        mean, sd, n = tables.seed_stats([m0[k], m1[k]])
        return "—" if mean is None else f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else " (n=1)")
    want = [cell(k) for k in t2.metrics]
    assert lines[("HAMMER", "ours")] == want
    rows = [r for r in csv.DictReader(io.StringIO((out / "hammer_t2.csv").read_text())) if r["row"] == "HAMMER"]
    assert (rows[0]["metric"], rows[0]["ours_n"], rows[0]["ours_seeds"]) == ("AUC", "2", f"0:{m0['AUC']:.4f};1:{m1['AUC']:.4f}")
    # the input-blind rows are forgrepro.baselines on the same test split
    root = repro.synthetic_dataset("dgm4", cache_dir=d / "cache", generator_overrides=TINY_DGM4)
    # token F1 over the rows' own tokens: the recipe keeps bert-base-uncased (no word vocabulary written)
    assert not (runs / "hammer" / "tokenizer").exists() and not (runs / repro.BASELINES_DIR / "tokenizer").exists()
    b = B.dgm4_baselines(B.dgm4_targets(root, "train"), B.dgm4_targets(root, "test"))
    for name, label in B.DGM4_BASELINES.items():
        assert lines[(label, "input-blind")] == ["—" if b[name][k] != b[name][k] else f"{b[name][k]:.2f}" for k in t2.metrics]
    spread = (out / "seed_spread.md").read_text()
    assert "`forgrepro reproduce hammer_t2 --data synthetic" in spread and "--seeds 0 1`" in spread
    assert "1 runs trained, 1 reused" in spread and "| hammer | 2 |" in spread
    cs = list(csv.DictReader(io.StringIO((out / "seed_spread.csv").read_text())))
    assert [(r["seed"], float(r["value"])) for r in cs if r["metric"] == "AUC"] == [("0", round(m0["AUC"], 4)), ("1", round(m1["AUC"], 4))]
    trivial = (out / "trivial_baselines.md").read_text()
    assert f"| hammer | AUC | {statistics.mean([m0['AUC'], m1['AUC']]):.2f} ± " in trivial
    assert "(seed_spread.md)" in (out / "README.md").read_text()
    again = repro.reproduce(["hammer_t2"], seeds=[0, 1], figures=False, **kw)    # every seed cached
    assert again["ran"] == [] and sorted(again["skipped"]) == ["hammer/seed0", "hammer/seed1"]


def test_parameter_injection_changes_the_result(e2e, tmp_path):
    d, kw, _ = e2e
    base = tables.load_yaml(d / "runs" / "synthetic" / "tiny" / "hammer" / "params.yaml")
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


# lpips 0.1.4 builds AlexNet with torchvision's pre-0.13 `pretrained=` argument (lpips/pretrained_networks.py); not ours
@pytest.mark.filterwarnings("ignore:The parameter 'pretrained' is deprecated since 0.13:UserWarning:torchvision")
@pytest.mark.filterwarnings("ignore:Arguments other than a weight enum or `None` for 'weights' are deprecated:UserWarning:torchvision")
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
    base = tables.load_yaml(d / "runs" / "synthetic" / "tiny" / "hammer" / "params.yaml")
    m, ran = repro.run_row({**base, "run_dir": str(tmp_path / "ddp")}, launcher="accelerate", num_processes=2)
    log = (tmp_path / "ddp" / "accelerate.log").read_text()
    assert ran and "AUC" in m
    env = json.loads((tmp_path / "ddp" / "env.json").read_text())
    assert env["launcher"] == "accelerate" and env["num_processes"] == 2
    hist = (tmp_path / "ddp" / "train" / "history.jsonl").read_text()
    assert hist, log
