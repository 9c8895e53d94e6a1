"""forgrepro.cli: help, argument errors, listing, and the demo subcommand's lazy import."""
import subprocess
import sys
from pathlib import Path

import pytest

from forgrepro.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e: main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "reproduce" in out and "demo" in out


def test_reproduce_help_documents_options(capsys):
    with pytest.raises(SystemExit): main(["reproduce", "--help"])
    out = capsys.readouterr().out
    for opt in ("--data", "--scale", "--device", "--force", "--launcher", "--mmtt", "--seeds", "--no-baselines"): assert opt in out


@pytest.mark.parametrize("argv,msg", [(["reproduce", "--scale", "huge"], "invalid choice: 'huge'"),
                                      (["reproduce", "--device", "tpu"], "invalid choice: 'tpu'"),
                                      (["nope"], "invalid choice: 'nope'"), ([], "required")])
def test_argument_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e: main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_bad_data_path_and_unknown_table(capsys, tmp_path):
    assert main(["reproduce", "--data", str(tmp_path / "missing")]) == 2
    assert "neither 'synthetic' nor a folder" in capsys.readouterr().err
    with pytest.raises(KeyError, match="unknown tables"): main(["reproduce", "no_such_table", "--list"])


def test_list_plans_shared_runs(capsys):
    assert main(["reproduce", "hammer_t2", "hammer_t3", "hammer_t4", "asap_types", "--list"]) == 0
    assert "2 rows: ['hammer', 'asap']" in capsys.readouterr().out


def test_demo_calls_serve(monkeypatch):
    import types
    seen = {}
    mod = types.ModuleType("forgrepro.demo")
    mod.serve = lambda **kw: seen.update(kw)
    monkeypatch.setitem(sys.modules, "forgrepro.demo", mod)
    assert main(["demo", "--checkpoints", "runs", "--port", "7999", "--share"]) == 0
    assert seen == {"checkpoints": "runs", "share": True, "port": 7999}


def test_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "forgrepro.cli", "reproduce", "hammer_t2", "--list"], cwd=ROOT,
                         capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and "1 rows: ['hammer']" in res.stdout, res.stderr
