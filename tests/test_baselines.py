"""forgrepro.baselines on a small synth-mmtt split (the DGM4 ones are checked end to end in test_repro.py) and the
cache `forgrepro.repro.trivial_baselines` keeps beside the runs."""
from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch

from forgrepro import baselines as B
from forgrepro import repro

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs Java")


@pytest.fixture(scope="module")
def mmtt_root(tmp_path_factory):
    from forgrepro.data.synth_mmtt import make_synth_mmtt
    return make_synth_mmtt(tmp_path_factory.mktemp("mmtt"), n_train=24, n_val=4, n_test=12, image_size=32, seed=0, workers=1)


@needs_java
def test_mmtt_baselines_score_the_constant_predictors(mmtt_root):
    from forgrepro.data.mmtt import MMTTDataset, find_mmtt_split, read_mmtt
    from forgrepro.data.text import blip_pre_caption
    from forgrepro.metrics.mmtt import caption_metrics
    m, texts = B.mmtt_baselines(mmtt_root, 32, meteor=False)
    assert set(m) == set(B.MMTT_BASELINES)
    train = [blip_pre_caption(r.caption) for r in read_mmtt(find_mmtt_split(mmtt_root, "train"))]
    most = Counter(train).most_common(1)[0][0]
    assert texts["constant_explanation"] == most
    refs: dict = {}
    for r in read_mmtt(find_mmtt_split(mmtt_root, "test")): refs.setdefault(r.image_id, []).append(r.caption)
    official = caption_metrics({k: most for k in refs}, refs, meteor=False)
    assert m["constant_explanation"]["CIDEr"] == pytest.approx(official["CIDEr"])       # the official scorer, unchanged
    assert m["constant_explanation"]["distinct_explanations"] == 1.0
    # the best constant is chosen on the training split: at least as good there as the most frequent one
    best, best_cider = B.best_constant_explanation(train)
    assert texts["best_constant_explanation"].startswith(best)
    assert best_cider >= 100 * B.constant_cider([most], [[t] for t in train])[0] - 1e-9
    # all-face mask: IoU = precision = the manipulated share of each image; recall 1 where a mask exists, 0 elsewhere
    gt = torch.stack([s.mask for s in MMTTDataset(mmtt_root, "test", image_size=32)])[:, 0] > 0.5
    face = m["all_face_mask"]
    assert face["IoU"] == pytest.approx(100 * gt.float().mean((1, 2)).mean().item())
    assert face["Precision"] == pytest.approx(face["IoU"])
    assert face["Recall"] == pytest.approx(100 * gt.flatten(1).any(1).float().mean().item())


def test_trivial_baselines_are_cached_by_data_and_code(tmp_path, monkeypatch):
    from forgrepro.data.synth_dgm4 import make_synth_dgm4
    make_synth_dgm4(tmp_path / "d", n_train=16, n_val=4, n_test=8, seed=0, workers=1)
    calls = []
    real = B.dgm4_baselines
    monkeypatch.setattr(B, "dgm4_baselines", lambda *a: calls.append(1) or real(*a))
    first = repro.trivial_baselines("dgm4", tmp_path / "d", tmp_path / "cache", log=lambda s: None)
    again = repro.trivial_baselines("dgm4", tmp_path / "d", tmp_path / "cache", log=lambda s: None)
    assert len(calls) == 1 and again == first                       # the second call reads the cache
    assert first["zero_box"]["label"] == B.DGM4_BASELINES["zero_box"] and first["constant"]["metrics"]["AUC"] == 50.0
    assert first["constant"]["metrics"]["F1"] is None               # undefined (no fake token predicted): null, not NaN
    monkeypatch.setattr(repro, "_CODE_FINGERPRINT", "other sources")
    repro.trivial_baselines("dgm4", tmp_path / "d", tmp_path / "cache", log=lambda s: None)
    assert len(calls) == 2                                          # a code change recomputes them
