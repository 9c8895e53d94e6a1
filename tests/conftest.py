"""Test-wide settings: nothing may reach a model hub, and runs are reproducible."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("PYTHONHASHSEED", "0")


import importlib.util
from pathlib import Path

import pytest


@pytest.fixture
def load_benchmark():
    "Import a script of benchmarks/ by name (they are scripts, not a package)."
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
