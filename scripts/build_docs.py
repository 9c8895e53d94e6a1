"""Build the HTML docs site: nbdev's notebook processing, then one HTML page per notebook (`make docs`).

nbdev's own site path is `nbdev_docs`: `nbdev.serve.proc_nbs` (runs the `show_doc` cells, renders signatures and
parameter tables, drops `#| hide` cells and directives) and then `quarto render`. Quarto cannot be installed here from
a package registry (checked 2026-12-03): `pip download quarto-cli --no-deps` fetches `quarto_cli-1.10.19.tar.gz`, an
sdist whose `setup.py` (`download_quarto`) fetches the binary from
`https://github.com/quarto-dev/quarto-cli/releases/download/...` at build time, and github.com is unreachable from this
machine (curl: could not resolve host); `npm view quarto` is an unrelated UI-component package (0.0.0), `quarto-cli`
is not on npm, and `apt-cache search quarto` finds nothing. So the processing step runs nbdev's own processors
(`FilterDefaults`, as `proc_nbs` does) and the rendering step is nbconvert's `lab` template instead of Quarto:
every processed notebook becomes `<module>.html` (the
`#| default_exp` name, e.g. `core.html`, `data.dgm4.html`) and `nbs/index.ipynb` becomes `index.html`, each with a
sidebar linking every page. The papermill templates in `nbs/experiments/` are not processed (nothing of theirs runs).

    python scripts/build_docs.py [--out _docs] [--only 00_core 20_models.vision] [--workers 2] [--cache _proc]
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = [(0, 4, "Core"), (5, 19, "Data"), (20, 29, "Model parts"), (30, 39, "Losses, metrics, evaluation"),
          (40, 49, "Methods"), (50, 59, "Training, experiments, reproduction"), (60, 69, "Prediction, demo, CLI"),
          (90, 99, "Tutorials")]


def page_name(nb: Path) -> str:
    "`core` for 00_core.ipynb (its `#| default_exp`), `index` for index.ipynb, else the name without its number."
    for cell in json.loads(nb.read_text())["cells"]:
        m = re.search(r"^#\|\s*default_exp\s+(\S+)", "".join(cell["source"]), re.M)
        if m: return m.group(1)
    return re.sub(r"^\d+_", "", nb.stem)


def title_of(nb: Path) -> str:
    for cell in json.loads(nb.read_text())["cells"]:
        m = re.match(r"#\s+(.+)", "".join(cell["source"]).strip()) if cell["cell_type"] == "markdown" else None
        if m: return m.group(1).strip()
    return nb.stem


def sidebar(pages: list[tuple[Path, str, str]], current: str) -> str:
    "The navigation: index first, then the notebooks grouped in their numbered blocks."
    items = ['<p><a href="index.html"><b>forgrepro</b></a></p>']
    for lo, hi, label in BLOCKS:
        mine = [(n, t) for nb, n, t in pages if (m := re.match(r"(\d+)_", nb.name)) and lo <= int(m.group(1)) <= hi]
        if not mine: continue
        items.append(f"<p class='block'>{html.escape(label)}</p><ul>")
        items += [f"<li{' class=current' if n == current else ''}><a href='{n}.html'>{html.escape(n)}</a>"
                  f"<br><small>{html.escape(t)}</small></li>" for n, t in mine]
        items.append("</ul>")
    style = ("<style>#forgrepro-nav{position:fixed;top:0;left:0;bottom:0;width:260px;overflow:auto;padding:12px;"
             "background:#f6f8fa;border-right:1px solid #ddd;font:14px sans-serif}#forgrepro-nav ul{padding-left:14px}"
             "#forgrepro-nav .block{margin:12px 0 2px;font-weight:bold;color:#555}#forgrepro-nav .current a{font-weight:bold}"
             "body{margin-left:290px !important}</style>")
    return style + "<nav id='forgrepro-nav'>" + "".join(items) + "</nav>"


def _eval_for_docs(cell) -> bool | None:  # replaces nbdev.processors._do_eval inside `_process`
    """nbdev's choice of the cells to run for `show_doc` (`nbdev.processors._do_eval`), except that a cell importing
    something *inside* other code (a test cell with a local import) is not run: out of its notebook's order it fails."""
    import ast
    if cell.cell_type == "code" and cell.source and not (cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"}):
        trees = cell.parsed_()
        if trees and any(isinstance(n, (ast.Import, ast.ImportFrom)) for t in trees for n in ast.walk(t)) \
           and not all(isinstance(t, (ast.Import, ast.ImportFrom)) for t in trees):
            return None
    from nbdev.processors import _ORIGINAL_DO_EVAL
    return _ORIGINAL_DO_EVAL(cell)


def _lenient_signature(obj, *args, eval_str: bool = False, **kwargs):  # replaces fastcore.docments.signature
    """`inspect.signature`, except that when `eval_str=True` fails with a NameError it returns the signature with the
    annotations as written. A dataclass inheriting fields from another module (`AsapConfig(HammerConfig)` under
    `from __future__ import annotations`) gets an `__init__` whose string annotations (`ViTConfig`) are evaluated in
    the subclass's module, which never imports them; show_doc would fail where the notebook itself runs fine."""
    import inspect
    try: return inspect.signature(obj, *args, eval_str=eval_str, **kwargs)
    except NameError:
        if not eval_str: raise
        return inspect.signature(obj, *args, **kwargs)


def _process(job: tuple[Path, Path]) -> str:
    "One notebook through nbdev's docs processors (what `nbdev.serve_drv` does for `proc_nbs`)."
    import os, warnings
    from execnb.nbio import read_nb, write_nb
    from nbdev import processors
    from nbdev.processors import FilterDefaults
    import fastcore.docments
    fastcore.docments.signature = _lenient_signature
    if not hasattr(processors, "_ORIGINAL_DO_EVAL"):
        processors._ORIGINAL_DO_EVAL, processors._do_eval = processors._do_eval, _eval_for_docs
    src, dst = job
    os.environ["IN_TEST"] = "1"
    nb = read_nb(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # library warnings of the executed definitions are not the docs' business
            FilterDefaults()(nb)
    except Exception as e:
        cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
        return f"FAILED {src.name}: {str(e).splitlines()[0]}{cause}"
    write_nb(nb, dst)
    return src.name


def _front_matter(node) -> tuple[str, str]:
    "(title, description) from the YAML raw cell nbdev makes of `# title` + `> summary`; the cell is removed."
    import yaml
    for i, cell in enumerate(node.cells):
        if cell.cell_type == "raw" and cell.source.startswith("---"):
            meta = yaml.safe_load(cell.source.strip().strip("-")) or {}
            del node.cells[i]
            return str(meta.get("title", "")), str(meta.get("description", ""))
    return "", ""


def build(out: Path, only: list[str] | None = None, workers: int = 2, cache: Path | None = None) -> list[Path]:
    "Process the notebooks with nbdev's processors and write `out/<page>.html`; returns the pages written."
    import multiprocessing, os
    os.chdir(ROOT)                                    # nbdev reads settings.ini from the working directory
    from nbconvert import HTMLExporter
    from nbformat import read as read_nb, v4
    nbs = ROOT / "nbs"
    wanted = sorted(p for p in nbs.glob("*.ipynb") if only is None or p.stem in only or p.stem == "index")
    cache = Path(cache or ROOT / "_proc")           # nbdev's processed notebooks (git-ignored)
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(nb, cache / nb.name) for nb in wanted]
    if workers <= 1: done = [_process(job) for job in jobs]
    else:   # a fresh interpreter per notebook: nothing inherited from this one or from the previous notebook (the
            # executed cells' IPython shell replaces the worker's `__main__`, so a reused worker could not unpickle
            # its next task and the pool would hang)
        with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            done = list(pool.imap_unordered(_process, jobs))
    failed = [d for d in done if d.startswith("FAILED")]
    if failed: raise RuntimeError("nbdev could not process:\n" + "\n".join(failed))
    pages = [(nb, page_name(nb), title_of(nb)) for nb in wanted]
    exporter = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for nb, name, title in pages:
        with open(cache / nb.name, encoding="utf-8") as f: node = read_nb(f, as_version=4)
        t, desc = _front_matter(node)
        node.cells.insert(0, v4.new_markdown_cell(f"# {t or title}" + (f"\n\n> {desc}" if desc else "")))
        node.metadata["title"] = f"{t or title} – forgrepro" if name != "index" else "forgrepro"
        body, _ = exporter.from_notebook_node(node)
        body = re.sub(r'\{target=(?:"|&quot;)_blank[^}]*\}', "", body)   # Quarto link attributes of show_doc's source links
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + sidebar(pages, name), body, count=1)
        (out / f"{name}.html").write_text(body, encoding="utf-8")
        written.append(out / f"{name}.html")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "_docs"), help="output folder (default _docs/)")
    ap.add_argument("--only", nargs="*", help="notebook stems to build (index is always built); default: all")
    ap.add_argument("--workers", type=int, default=2, help="nbdev processing workers")
    ap.add_argument("--cache", default=None, help="folder for nbdev's processed notebooks (default _proc/)")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    out = Path(a.out)
    if out.exists() and a.only is None: shutil.rmtree(out)
    pages = build(out, a.only, a.workers, Path(a.cache) if a.cache else None)
    print(f"{len(pages)} pages in {out} ({time.perf_counter() - t:.0f} s); open {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
