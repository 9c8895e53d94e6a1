"""Synthetic DGM4 / MMTT twins: determinism, official on-disk format, exact labels, no global giveaway."""
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from forgrepro.data.render_face import REGIONS
from forgrepro.data.render_photo import to_uint8
from forgrepro.data.synth_dgm4 import (FAKE_CLS, class_counts, has_face_attribute, has_face_swap, has_text_attribute,
                                       has_text_swap, make_person_pool, make_synth_dgm4, plan_item, render_item_images)
from forgrepro.data.synth_mmtt import (ARTIFACTS, FACIAL_SYNONYMS, KINDS, RegionEdit, caption_to_multilabel,
                                       make_synth_mmtt, render_sample, write_explanation)

SPLITS = ('train', 'val', 'test')
N = {'train': 90, 'val': 45, 'test': 45}
BOX_KEYS = {'id', 'image', 'text', 'fake_cls', 'fake_image_box', 'fake_text_pos', 'mtcnn_boxes'}
CLEAN_TEXT = re.compile(r'[A-Za-z0-9]+( [A-Za-z0-9]+)*')


# ----------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def dgm4(tmp_path_factory):
    root = tmp_path_factory.mktemp('dgm4')
    return make_synth_dgm4(root, n_train=N['train'], n_val=N['val'], n_test=N['test'], seed=3, workers=1)


@pytest.fixture(scope='module')
def dgm4_records(dgm4):
    return {s: json.loads((dgm4 / 'DGM4' / 'metadata' / f'{s}.json').read_text()) for s in SPLITS}


@pytest.fixture(scope='module')
def mmtt(tmp_path_factory):
    return make_synth_mmtt(tmp_path_factory.mktemp('mmtt'), n_train=12, n_val=6, n_test=6, seed=5, image_size=96, workers=1)


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[..., ::-1]


# -------------------------------------------------------------------------------------------------------- determinism
def test_dgm4_deterministic_and_worker_independent(dgm4, tmp_path):
    again = make_synth_dgm4(tmp_path / 'again', n_train=N['train'], n_val=N['val'], n_test=N['test'], seed=3, workers=2)
    m1, m2 = (json.loads((r / 'synth_manifest.json').read_text()) for r in (dgm4, again))
    assert m1['fingerprint'] == m2['fingerprint']                 # every byte of every image, metadata and aux file
    for s in SPLITS:
        assert (dgm4 / 'DGM4' / 'metadata' / f'{s}.json').read_bytes() == (again / 'DGM4' / 'metadata' / f'{s}.json').read_bytes()
    other = make_synth_dgm4(tmp_path / 'other', n_train=20, n_val=5, n_test=5, seed=4, workers=1)
    assert json.loads((other / 'synth_manifest.json').read_text())['fingerprint'] != m1['fingerprint']


def test_mmtt_deterministic_and_worker_independent(mmtt, tmp_path):
    again = make_synth_mmtt(tmp_path / 'again', n_train=12, n_val=6, n_test=6, seed=5, image_size=96, workers=2)
    fp = lambda r: json.loads((r.parent / 'synth_manifest.json').read_text())['fingerprint']
    assert fp(mmtt) == fp(again)
    assert (mmtt / 'train-mutilabel.json').read_bytes() == (again / 'train-mutilabel.json').read_bytes()


# ------------------------------------------------------------------------------------------------------- DGM4 format
def test_dgm4_layout_and_fields(dgm4, dgm4_records):
    assert (dgm4 / 'synth_manifest.json').exists()
    for s in SPLITS:
        raw = (dgm4 / 'DGM4' / 'metadata' / f'{s}.json').read_text()
        assert raw.lstrip().startswith('[')                        # a JSON array, as the official files
        recs = dgm4_records[s]
        assert len(recs) == N[s]
        for r in recs:
            assert set(r) == BOX_KEYS
            assert isinstance(r['id'], int) and isinstance(r['image'], str) and isinstance(r['text'], str)
            assert r['fake_cls'] in FAKE_CLS
            assert isinstance(r['fake_text_pos'], list) and all(type(p) is int for p in r['fake_text_pos'])
            for b in r['mtcnn_boxes'] + ([r['fake_image_box']] if r['fake_image_box'] else []):
                assert isinstance(b, list) and len(b) == 4 and all(type(v) is int for v in b)
            assert (dgm4 / r['image']).is_file()


def test_dgm4_file_naming(dgm4_records):
    for r in (r for s in SPLITS for r in dgm4_records[s]):
        img, i = r['image'], r['id']
        if has_face_swap(r['fake_cls']):
            assert re.fullmatch(rf'DGM4/manipulation/(simswap|infoswap)/{i}-\d{{6}}-\1\.jpg', img), img
        elif has_face_attribute(r['fake_cls']):
            assert re.fullmatch(rf'DGM4/manipulation/(StyleCLIP|HFGI)/{i}-\1\.jpg', img), img
        else:   # orig and text-only fakes use the pristine image
            assert re.fullmatch(r'DGM4/origin/(guardian|bbc|usa_today|washington_post)/\d{4}/\d{3}\.jpg', img), img


def test_dgm4_boxes(dgm4, dgm4_records):
    for r in (r for s in SPLITS for r in dgm4_records[s]):
        H, W = _read_rgb(dgm4 / r['image']).shape[:2]
        assert r['mtcnn_boxes'], r
        for x0, y0, x1, y1 in r['mtcnn_boxes']:
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        image_fake = has_face_swap(r['fake_cls']) or has_face_attribute(r['fake_cls'])
        assert bool(r['fake_image_box']) == image_fake
        if image_fake: assert r['fake_image_box'] in r['mtcnn_boxes']


def test_dgm4_text_format_and_positions(dgm4_records):
    for r in (r for s in SPLITS for r in dgm4_records[s]):
        words = r['text'].split(' ')
        assert CLEAN_TEXT.fullmatch(r['text']) and len(words) <= 30, r['text']
        pos = r['fake_text_pos']
        assert pos == sorted(set(pos)) and all(0 <= p < len(words) for p in pos)
        assert bool(pos) == (has_text_swap(r['fake_cls']) or has_text_attribute(r['fake_cls']))


def test_dgm4_text_labels_against_pristine_caption(dgm4_records):
    "TA: exactly the flipped words differ from the pristine caption; TS: positions = words not in the pristine caption."
    checked = Counter()
    for s in SPLITS:
        by_id = defaultdict(list)
        for r in dgm4_records[s]: by_id[r['id']].append(r)
        for recs in by_id.values():
            orig = next((r for r in recs if r['fake_cls'] in ('orig', 'face_swap', 'face_attribute')), None)
            if orig is None: continue
            ow = orig['text'].split(' ')
            for r in recs:
                nw = r['text'].split(' ')
                if has_text_attribute(r['fake_cls']):
                    assert len(nw) == len(ow)
                    assert [i for i, (a, b) in enumerate(zip(ow, nw)) if a != b] == r['fake_text_pos']
                    checked['ta'] += 1
                elif has_text_swap(r['fake_cls']):
                    seen = {w.lower() for w in ow}
                    assert [i for i, w in enumerate(nw) if w.lower() not in seen] == r['fake_text_pos']
                    checked['ts'] += 1
                else: assert r['text'] == orig['text']
    assert checked['ta'] and checked['ts']


def test_dgm4_class_proportions(dgm4, dgm4_records):
    manifest = json.loads((dgm4 / 'synth_manifest.json').read_text())
    for s in SPLITS:
        expected = {k: v for k, v in class_counts(N[s]).items() if v}
        assert Counter(r['fake_cls'] for r in dgm4_records[s]) == expected
        assert manifest['counts'][s] == expected
    big = class_counts(10000)                                       # the DGM4 pie chart (dgm4_hammer.md §1.3)
    assert abs(big['orig'] / 1e4 - 0.337) < 0.01 and abs(big['face_swap'] / 1e4 - 0.216) < 0.01


def test_dgm4_grouped_by_id(dgm4_records):
    ids = {s: {r['id'] for r in dgm4_records[s]} for s in SPLITS}
    images = {s: {r['image'] for r in dgm4_records[s]} for s in SPLITS}
    for a, b in (('train', 'val'), ('train', 'test'), ('val', 'test')):
        assert not ids[a] & ids[b] and not images[a] & images[b]
    for s in SPLITS:
        per_id = defaultdict(list)
        for r in dgm4_records[s]: per_id[r['id']].append(r['fake_cls'])
        assert all(1 <= len(v) <= 5 and len(set(v)) == len(v) for v in per_id.values())
        pristine_per_id = defaultdict(set)
        for r in dgm4_records[s]:
            if r['image'].startswith('DGM4/origin/'): pristine_per_id[r['id']].add(r['image'])
        assert all(len(v) == 1 for v in pristine_per_id.values())   # one pristine image per item, shared by orig/text-only


def test_dgm4_manipulation_is_local():
    "Before encoding, a manipulated image equals its pristine source outside fake_image_box, bit for bit."
    pool = make_person_pool(0)
    n = 0
    for j, classes in enumerate([['face_swap', 'face_attribute'], ['face_swap&text_swap', 'orig'],
                                 ['face_attribute&text_attribute'], ['face_swap&text_attribute', 'face_attribute&text_swap']]):
        item = plan_item(np.random.default_rng(j), pool, classes, split='val', index=j, news_id=100 + j, source='bbc',
                         origin_path=f'DGM4/origin/bbc/0000/{j:03d}.jpg', difficulty=0.5, image_width=(288, 352),
                         jpeg_quality=(72, 95))
        out = render_item_images(item, 0.5, 0)
        pristine = out.images[item.origin_path]
        for path, (x0, y0, x1, y1) in out.fake_boxes.items():
            assert list(out.fake_boxes[path]) in [list(b) for b in out.mtcnn_boxes]
            outside = np.ones(pristine.shape[:2], bool); outside[y0:y1, x0:x1] = False
            assert np.array_equal(out.images[path][outside], pristine[outside])
            assert np.abs(out.images[path][~outside] - pristine[~outside]).mean() > 0.003      # and it did change inside
            n += 1
    assert n == 6


def test_dgm4_files_differ_mainly_in_the_box(dgm4, dgm4_records):
    "On disk (JPEG), a manipulated image still differs from its pristine source more inside the box than outside."
    n = 0
    for s in SPLITS:
        by_id = defaultdict(list)
        for r in dgm4_records[s]: by_id[r['id']].append(r)
        for recs in by_id.values():
            pristine = next((r['image'] for r in recs if r['image'].startswith('DGM4/origin/')), None)
            for r in recs:
                if pristine is None or not r['fake_image_box']: continue
                a, b = _read_rgb(dgm4 / pristine).astype(float), _read_rgb(dgm4 / r['image']).astype(float)
                assert a.shape == b.shape
                x0, y0, x1, y1 = r['fake_image_box']
                inside = np.zeros(a.shape[:2], bool); inside[y0:y1, x0:x1] = True
                grow = np.zeros_like(inside); grow[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = True
                d = np.abs(a - b).mean(-1)
                assert d[inside].mean() > d[~grow].mean(), r['image']
                n += 1
    assert n > 5


def test_dgm4_aux_texts(dgm4, dgm4_records):
    surnames = {p.last for p in make_person_pool(3)}
    for s in SPLITS:
        caps = json.loads((dgm4 / 'aux' / f'caption_{s}.json').read_text())
        expl = json.loads((dgm4 / 'aux' / f'explanation_{s}.json').read_text())
        for r in dgm4_records[s]:
            assert r['image'] in caps
            assert not set(caps[r['image']].split()) & surnames             # the VLM caption never names people
            key = f"{r['image']}\t{r['text']}"
            assert key in expl
            named = [w for w in r['text'].split() if w in surnames]
            assert all(w in expl[key] for w in named)                       # the explanation follows the text


# ------------------------------------------------------------------------------------------------------- MMTT format
def test_mmtt_layout_and_records(mmtt):
    assert mmtt.name == 'dataset' and (mmtt.parent / 'synth_manifest.json').exists()
    seen_ids, seen_inst = set(), set()
    for fname, n in (('train-mutilabel.json', 12), ('eval-mutilabel.json', 6), ('test-mutilabel.json', 6)):
        recs = json.loads((mmtt / fname).read_text())
        assert isinstance(recs, list) and len(recs) == n
        for r in recs:
            assert list(r) == ['image_id', 'img_path', 'mask_path', 'caption', 'instance_id', 'multilabel']
            assert re.fullmatch(r'[a-zA-Z0-9]+_\d+', r['image_id']) and r['instance_id'].isdigit()
            assert r['img_path'].startswith('dataset/') and r['mask_path'].endswith('.png')
            assert len(r['multilabel']) == 21 and set(r['multilabel']) <= {0, 1}
            assert r['image_id'] not in seen_ids and r['instance_id'] not in seen_inst
            seen_ids.add(r['image_id']); seen_inst.add(r['instance_id'])
            img = _read_rgb(mmtt / r['img_path'])
            mask = cv2.imread(str(mmtt / r['mask_path']), cv2.IMREAD_UNCHANGED)
            assert img.shape == (96, 96, 3) and mask.shape == (96, 96) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
            manipulated = not r['image_id'].startswith('real_')
            assert bool(mask.any()) == manipulated                         # mask non-empty <=> manipulated
            assert r['multilabel'] == caption_to_multilabel(r['caption'])  # official regex on the caption
            assert bool(sum(r['multilabel'])) == manipulated


@pytest.mark.parametrize('kind', KINDS)
def test_mmtt_masks_exact_and_labels_match_regions(kind):
    for seed in range(6):
        s = render_sample(kind, seed, size=80)
        assert np.array_equal(s.image[~s.mask], s.pristine[~s.mask])       # nothing altered outside the mask
        if s.mask.any():                                                     # ... and every masked pixel altered
            assert np.all(np.any(to_uint8(s.image[s.mask]) != to_uint8(s.pristine[s.mask]), -1))
        regions = {e.region for e in s.edits}
        assert [REGIONS[i] for i, v in enumerate(s.multilabel) if v] == [r for r in REGIONS if r in regions]
        assert (kind == 'real') == (not regions) == (not s.mask.any())


def test_mmtt_explanations_never_leak_other_regions():
    rng = np.random.default_rng(0)
    paired = ('eye', 'pupil', 'ear', 'cheek', 'eyebrow')
    for _ in range(400):
        k = int(rng.integers(1, 5))
        regions = [REGIONS[i] for i in rng.choice(21, k, replace=False)]
        edits = [RegionEdit(r, ('left', 'right', 'both')[rng.integers(3)] if r in paired else '',
                            (*ARTIFACTS, 'edit')[rng.integers(6)], float(rng.uniform(0.3, 2)), 'greenish') for r in regions]
        kind = ('inpaint', 'faceswap', 'attribute')[rng.integers(3)]
        text = write_explanation(edits, kind, rng, 'sad')
        assert caption_to_multilabel(text) == [int(r in regions) for r in REGIONS], text


def test_mmtt_synonym_dictionary_is_official():
    assert tuple(FACIAL_SYNONYMS) == REGIONS
    assert FACIAL_SYNONYMS['wrinkle'] == ['wrinkle', 'wrinkles', 'line', 'lines', 'crease', 'creases']
    assert FACIAL_SYNONYMS['mouth'] == ['mouth', 'mouths', 'oral cavity', 'buccal']
    assert caption_to_multilabel('outline of the eyelids') == [0] * 21                     # whole words only
    assert caption_to_multilabel('BUCCAL area')[REGIONS.index('cheek')] == 1               # case-insensitive, shared synonym


# ------------------------------------------------------------------------------------------------- global giveaway
def test_no_global_giveaway(dgm4, dgm4_records):
    "Global image statistics must not separate pristine from face-manipulated images (grouped CV AUC)."
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    images = {r['image']: (int(bool(r['fake_image_box'])), r['id']) for s in SPLITS for r in dgm4_records[s]}
    paths = sorted(images)
    feats = []
    for p in paths:
        img = _read_rgb(dgm4 / p).astype(np.float32) / 255
        hist = [np.histogram(img[..., c], 8, (0, 1))[0] / img[..., c].size for c in range(3)]
        feats.append(np.concatenate([img.shape[:2], [(dgm4 / p).stat().st_size / 1e3], img.mean((0, 1)), img.std((0, 1)), *hist]))
    X, y = np.array(feats), np.array([images[p][0] for p in paths])
    groups = np.array([images[p][1] for p in paths])
    scores = np.zeros(len(y))
    for tr, te in GroupKFold(5).split(X, y, groups):
        scores[te] = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X[tr], y[tr]).predict_proba(X[te])[:, 1]
    auc = roc_auc_score(y, scores)
    assert auc < 0.7, f"global statistics separate pristine from manipulated images (AUC {auc:.3f})"
