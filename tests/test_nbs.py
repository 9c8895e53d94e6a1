"""Run every library notebook's inline examples and assertions with nbdev_test (CPU, tiny configs).

`#| slow` cells run too (they fit the CI budget: the recipe replay of nbs/51_experiment.ipynb adds ~10 s);
`#| cuda` cells run where a GPU is visible."""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_nbdev_test():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    nbdev_test = Path(sys.executable).parent / "nbdev_test"
    flags = "slow cuda" if torch.cuda.is_available() else "slow"
    res = subprocess.run([str(nbdev_test), "--n_workers", "2", "--timing", "--flags", flags], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=3600)
    print(res.stdout[-5000:])
    assert res.returncode == 0, f"nbdev_test failed:\n{res.stdout[-3000:]}\n{res.stderr[-8000:]}"
