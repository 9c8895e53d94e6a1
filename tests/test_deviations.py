"""reports/DEVIATIONS.md and the `# DEVIATION` markers in the code agree, in both directions.

* Every marker (a `DEVIATION` comment or docstring in forgrepro/*.py, or in a notebook code cell that is not
  exported) is listed: some row of DEVIATIONS.md names its file and the symbol around it (`file::Symbol` or
  `file::Class.method`; a marker in a comment block above a top-level statement belongs to that statement).
* Every table row names its code: at least one `path::symbol` reference; a Python reference must resolve to a
  top-level def/class/assignment (or `Class.method`) of that file that carries a marker (in its body or in the comment
  lines right above it); another file
  (`configs/...yaml`, `reports/paper_numbers.csv`) must exist and contain the text after `::`.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "reports" / "DEVIATIONS.md"
MARK = re.compile(r"\bDEVIATION\b(?!S)")                      # not "DEVIATIONS.md"
REF = re.compile(r"`((?:forgrepro|configs|reports|nbs|benchmarks|scripts)/[\w./\-]+)(?:::([^`]+))?`")


def symbols(source: str) -> list[tuple[int, int, str]]:
    "(first line, last line, name) of top-level defs, classes, assignments and class methods; a top-level symbol's span includes the comment lines right above it."
    out = []
    lines = source.splitlines()
    def above(start: int) -> int:
        while start > 1 and lines[start - 2].lstrip().startswith("#") and not lines[start - 2].startswith("# %%"): start -= 1
        return start
    for n in ast.parse(source).body:
        names = []
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): names = [n.name]
        elif isinstance(n, ast.Assign): names = [t.id for t in n.targets if isinstance(t, ast.Name)]
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name): names = [n.target.id]
        start = min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])])
        out += [(above(start), n.end_lineno, name) for name in names]
        if isinstance(n, ast.ClassDef):
            out += [(min([m.lineno] + [d.lineno for d in m.decorator_list]), m.end_lineno, f"{n.name}.{m.name}")
                    for m in n.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return out


def owner(spans: list[tuple[int, int, str]], line: int) -> str | None:
    "The innermost symbol around `line` (a top-level one includes the comments above it), else the next top-level symbol."
    inside = [s for s in spans if s[0] <= line <= s[1]]
    if inside: return max(inside, key=lambda s: s[0])[2]
    after = [s for s in spans if s[0] > line and "." not in s[2]]
    return min(after, key=lambda s: s[0])[2] if after else None


def code_markers(root: Path = ROOT) -> list[tuple[str, str | None, int, str]]:
    "(file, symbol, line, text) of every marker in the package and in the notebooks' non-exported code cells."
    found = []
    for f in sorted((root / "forgrepro").rglob("*.py")):
        if f.name == "_modidx.py": continue
        text = f.read_text()
        spans = symbols(text)
        for i, line in enumerate(text.splitlines(), 1):
            if MARK.search(line): found.append((str(f.relative_to(root)), owner(spans, i), i, line.strip()))
    for nb in sorted((root / "nbs").rglob("*.ipynb")):
        for k, cell in enumerate(json.loads(nb.read_text())["cells"]):
            src = "".join(cell["source"])
            if cell["cell_type"] != "code" or re.search(r"^#\|\s*export", src, re.M): continue
            for line in src.splitlines():
                if MARK.search(line): found.append((str(nb.relative_to(root)), None, k, line.strip()))
    return found


def doc_rows(doc: str) -> list[str]:
    "Table body rows of the document (header and separator rows left out)."
    lines = doc.splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|-: "): continue
        if i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: ") and lines[i + 1].startswith("|---"): continue
        rows.append(line)
    return rows


def resolve(path: str, symbol: str | None, root: Path = ROOT) -> str | None:
    "None when the reference resolves (and a Python symbol carries a marker), else why not."
    f = root / path
    if not f.is_file(): return f"{path} does not exist"
    text = f.read_text()
    if f.suffix != ".py": return None if symbol is None or symbol in text else f"{symbol!r} is not in {path}"
    if symbol is None: return None                                   # a script or module cited as a whole
    span = [s for s in symbols(text) if s[2] == symbol]
    if not span: return f"{path} defines no top-level {symbol}"
    body = text.splitlines()[span[0][0] - 1: span[0][1]]
    return None if any(MARK.search(l) for l in body) else f"{path}::{symbol} carries no DEVIATION marker"


def check(root: Path = ROOT) -> list[str]:
    doc = (root / "reports" / "DEVIATIONS.md").read_text()
    problems = []
    refs = set()
    for row in doc_rows(doc):
        mine = REF.findall(row)
        if not any(symbol for _, symbol in mine): problems.append(f"row without a code reference: {row[:100]}")
        for path, symbol in mine:
            refs.add((path, symbol or None))
            why = resolve(path, symbol or None, root)
            if why: problems.append(f"row {row[:60]!r}: {why}")
    for path, symbol, line, text in code_markers(root):
        names = {symbol, symbol.split(".")[0]} if symbol else set()
        if not any(p == path and (s in names or (symbol is None and s is None)) for p, s in refs):
            problems.append(f"{path}:{line} ({symbol}) has no row in reports/DEVIATIONS.md: {text[:90]}")
    return problems


def test_every_marker_has_a_row_and_every_row_points_to_marked_code():
    problems = check()
    assert not problems, "\n".join(problems)
    assert len(code_markers()) >= 40 and len(doc_rows(DOC.read_text())) >= 80   # the scan sees the real document


@pytest.fixture
def repo_copy(tmp_path):
    "A minimal copy (package, notebooks, configs, reports) to break on purpose."
    import shutil
    for d in ("forgrepro", "configs", "reports", "benchmarks", "scripts"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__", "runs", "synthetic"))
    (tmp_path / "nbs").mkdir()
    return tmp_path


def test_the_check_fails_for_the_right_reasons(repo_copy):
    "An unlisted marker, a row without code, a row naming a missing symbol or unmarked code: each is reported."
    assert check(repo_copy) == []
    losses = repo_copy / "forgrepro" / "losses.py"
    losses.write_text(losses.read_text().replace(
        '    "HAMMER MAC: mean', '    # DEVIATION: invented for this test\n    "HAMMER MAC: mean'))
    doc = repo_copy / "reports" / "DEVIATIONS.md"
    text = doc.read_text()
    text = text.replace("`forgrepro/data/dgm4.py::fit_box` ", "")                                  # row loses its code
    text = text.replace("forgrepro/metrics/dgm4.py::grounding_iou", "forgrepro/metrics/dgm4.py::no_such_fn")
    text = text.replace("`forgrepro/data/faces.py::crop_faces`", "`forgrepro/data/faces.py::select_faces`")
    doc.write_text(text)
    got = "\n".join(check(repo_copy))
    assert "forgrepro/losses.py" in got and "(mac_loss) has no row" in got
    assert "row without a code reference: | `data.dgm4` boxes" in got
    assert "defines no top-level no_such_fn" in got
    assert "forgrepro/data/faces.py::select_faces carries no DEVIATION marker" in got
    assert "forgrepro/data/dgm4.py:" in got and "(fit_box) has no row" in got        # its marker lost its row
