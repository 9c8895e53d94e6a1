"""Render reports/synthetic/tiny from the run folders that finished (unfinished rows are listed as not run).

    .venv/bin/python scripts/render_finished_rows.py
"""
import json
from pathlib import Path
from forgrepro.repro import BASELINES_DIR, baseline_rows, plan, render_reports, load_tables
tables = list(load_tables())
chosen, runs = plan(tables)
runs_dir, out_dir = Path("runs/synthetic/tiny"), Path("reports/synthetic/tiny")
metrics, run_dirs, failed = {}, {}, {}
for rid in runs:
    f = runs_dir / rid / "metrics.json"
    if f.is_file(): metrics[rid], run_dirs[rid] = json.loads(f.read_text()), runs_dir / rid
    else: failed[rid] = "not finished in the session that generated these tables (CPU time); rerun `make reproduce`"
header = "\n".join(["Data: `synthetic`; scale `tiny`; device `cpu`; runs under `../../../runs/synthetic/tiny`."]
                   + [f"- row `{k}` not run: {v}" for k, v in failed.items()])
# input-blind rows from the baselines `forgrepro reproduce` cached beside the runs (none cached: no such rows)
blind = {f.stem: json.loads(f.read_text())["baselines"] for f in sorted((runs_dir / BASELINES_DIR).glob("*.json"))}
render_reports(chosen, metrics, out_dir, run_dirs=run_dirs, synthetic=True, header=header, baselines=baseline_rows(blind))
print("rendered", sorted(metrics), "not run", sorted(failed))
