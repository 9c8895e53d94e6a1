"""Notebooks are the source: the exported modules must match them, and they must already be clean.

Runs nbdev_export and nbdev_clean on a copy of the repo and fails on any difference, so a commit
with a stale forgrepro/ or an uncleaned notebook cannot pass. Papermill `parameters` tags must
survive cleaning (settings.ini: allowed_cell_metadata_keys = tags)."""
import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy(tmp):
    dst = tmp / "repo"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "reports", "data",
                                                             ".ipynb_checkpoints", "*.egg-info", ".pytest_cache"))
    return dst


def _diff(a: Path, b: Path, pattern: str):
    changed = []
    for f in sorted(a.rglob(pattern)):
        if any(p.startswith(".") or p == "__pycache__" for p in f.relative_to(a).parts): continue
        g = b / f.relative_to(a)
        if not g.exists() or not filecmp.cmp(f, g, shallow=False): changed.append(str(f.relative_to(a)))
    new = [str(g.relative_to(b)) for g in b.rglob(pattern) if not (a / g.relative_to(b)).exists()
           and "__pycache__" not in g.parts]
    return changed + new


def test_exported_and_clean(tmp_path):
    repo = _copy(tmp_path)
    for cmd in (["nbdev_export"], ["nbdev_clean"]):
        res = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=repo, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    stale = _diff(ROOT / "forgrepro", repo / "forgrepro", "*.py")
    assert not stale, f"forgrepro/ is not exported from nbs/ (run nbdev_export): {stale}"
    dirty = _diff(ROOT / "nbs", repo / "nbs", "*.ipynb")
    assert not dirty, f"notebooks are not clean (run nbdev_clean): {dirty}"


def test_parameters_tags_survive_cleaning():
    nbs = [p for p in (ROOT / "nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts]
    for nb in nbs:
        cells = json.loads(nb.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        if "experiments" in nb.parts:
            assert len(tagged) == 1, f"{nb.name}: experiment notebooks need exactly one `parameters` cell"
        else:
            assert not tagged, f"{nb.name}: library notebooks take no papermill parameters"
