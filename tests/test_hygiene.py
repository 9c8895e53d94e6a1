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

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy(tmp):
    dst = tmp / "repo"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "reports", "data", "_proc", "_docs",
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


# ---------------------------------------------------------------- notebook numbering (CONTRIBUTING: import order)
BLOCKS = {"data": (5, 19), "models": (20, 29), "metrics": (30, 39), "methods": (40, 49)}   # subpackage -> notebook numbers


def _notebook_modules() -> dict[str, tuple[int, str]]:
    "forgrepro.<module> -> (notebook number, notebook name) of every library notebook, from its `#| default_exp`."
    import re
    out: dict[str, tuple[int, str]] = {}
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        if nb.name == "index.ipynb": continue                     # the docs landing page (no module)
        m = re.match(r"(\d+)_", nb.name)
        assert m, f"{nb.name}: library notebooks are named NN_module.ipynb"
        exps = {re.search(r"#\|\s*default_exp\s+(\S+)", "".join(c["source"])).group(1)
                for c in json.loads(nb.read_text())["cells"] if re.search(r"#\|\s*default_exp\s", "".join(c["source"]))}
        if not exps and int(m.group(1)) >= 90: continue          # 90-99: tutorials (no module)
        assert len(exps) == 1, f"{nb.name}: one notebook, one module (default_exp: {sorted(exps)})"
        mod = "forgrepro." + exps.pop()
        assert mod not in out, f"{nb.name} and {out[mod][1]} both export {mod}"
        out[mod] = (int(m.group(1)), nb.name)
    numbers = [n for n, _ in out.values()]
    assert len(numbers) == len(set(numbers)), "two notebooks share a number"
    return out


def _imports(mod: str) -> set[str]:
    "forgrepro modules that `mod` imports anywhere (module level or inside functions, `importlib.import_module('...')`)."
    import ast
    path = ROOT / Path(*mod.split(".")).with_suffix(".py")
    if not path.exists(): path = ROOT / Path(*mod.split(".")) / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(mod.split(".")[:-node.level] + ([node.module] if node.module else [])) if node.level else node.module or ""
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import): found |= {a.name for a in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)): found.add(node.args[0].value)
    return {m for m in found if m.startswith("forgrepro")}


def test_notebooks_are_numbered_in_import_order():
    "A module imported by another (even lazily, inside a function) has the lower notebook number; subpackages keep their block."
    mods = _notebook_modules()
    bad = [f"{mods[mod][1]} imports {t} ({mods[t][1]})" for mod in mods for t in _imports(mod) - {mod}
           if t in mods and mods[t][0] >= mods[mod][0]]
    assert not bad, "renumber so that imported notebooks come first:\n" + "\n".join(bad)
    for mod, (n, name) in mods.items():
        sub = mod.split(".")[1]
        if sub in BLOCKS and "." in mod.removeprefix("forgrepro."):
            lo, hi = BLOCKS[sub]
            assert lo <= n <= hi, f"{name}: forgrepro.{sub}.* notebooks are numbered {lo:02d}-{hi:02d}"


def test_numbering_check_catches_an_upward_import(monkeypatch):
    "The check above sees module-level and function-level imports of a higher-numbered notebook."
    real = _imports
    fake = {"forgrepro.core": {"forgrepro.cli"}}
    monkeypatch.setitem(globals(), "_imports", lambda m: fake.get(m, real(m)))
    with pytest.raises(AssertionError, match=r"00_core.ipynb imports forgrepro.cli \(63_cli.ipynb\)"):
        test_notebooks_are_numbered_in_import_order()
    assert "forgrepro.core" in real("forgrepro.train") and "forgrepro.methods.forgerytalker" in real("forgrepro.experiment")
