"""Is the synthetic DGM4 twin learnable but free of global giveaways?

Three probes on a generated set (default parameters unless told otherwise):

(a) GLOBAL image statistics -> pristine vs image-manipulated (face swap / face attribute) image files.
    Features: width, height, JPEG bytes, per-channel mean/std, 8-bin per-channel histograms. Logistic
    regression, 5-fold cross-validation grouped by news id. Target: AUC < 0.6 (no global giveaway).
(b) LOCAL evidence -> a tiny CNN trained for ~1 minute on one thread on ground-truth face crops
    (pristine faces vs the manipulated face of FS/FA images), train split -> test split AUC.
    Target at the default difficulty: clearly above chance, not perfect (~0.7-0.9).
(c) TEXT alone -> bag-of-words (1-2 grams) logistic regression, text-manipulated (TS/TA and combos) vs not,
    train -> test AUC. Target: near chance at difficulty 1 (text manipulations only detectable against the image);
    below it the text-attribute generator's own words (generator 1.1, probability 1 - difficulty) leak a little.

(d) with --mmtt: the synthetic MMTT twin, GLOBAL image statistics (as (a)) -> authentic vs manipulated face.
    Logistic regression, stratified 5-fold cross-validation over every split. Target: AUC < 0.6 (the manipulation
    must be found in the face, not in the file). `--mmtt synthetic` reads the cached tiny set of `forgrepro reproduce`.

Measured 2026-12-03: (d) on the tiny reproduction set (configs/data/synthetic.yaml, 3,408 images, 852 authentic):
    AUC 0.542 (`python benchmarks/check_synth_difficulty.py --mmtt synthetic --skip-dgm4`).

Measured 2026-11-23 (generator 1.1, 1 thread, --cnn-seconds 20):
    default set (difficulty 0.5, 1800/200/400):              (a) 0.544  (b) 0.931  (c) 0.566
    reproduction set (difficulty 0, 1200/128/320, cached by `forgrepro reproduce`): (a) 0.555  (b) 0.988  (c) 0.604

Usage:
    python benchmarks/check_synth_difficulty.py                    # generate the default set in a temp dir
    python benchmarks/check_synth_difficulty.py --root DIR         # reuse a generated set (folder containing DGM4/)
    python benchmarks/check_synth_difficulty.py --difficulty 0.6 --cnn-seconds 60
    python benchmarks/check_synth_difficulty.py --mmtt synthetic --skip-dgm4   # (d) only, on the cached tiny synth-mmtt
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def global_features(path: Path) -> np.ndarray:
    "Global statistics of one image file: size, bytes, channel mean/std, 8-bin channel histograms."
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
    h, w = img.shape[:2]
    hist = [np.histogram(img[..., c], bins=8, range=(0, 1))[0] / (h * w) for c in range(3)]
    return np.concatenate([[w, h, path.stat().st_size / 1000], img.mean((0, 1)), img.std((0, 1)), *hist])


def load_split(root: Path, split: str) -> list[dict]:
    return json.loads((root / 'DGM4' / 'metadata' / f'{split}.json').read_text())


def probe_global(root: Path) -> float:
    "(a) grouped 5-fold CV AUC of a logistic regression on global image statistics."
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    images = {}
    for split in ('train', 'val', 'test'):
        for r in load_split(root, split):
            images[r['image']] = (int(bool(r['fake_image_box'])), r['id'])
    paths = sorted(images)
    X = np.stack([global_features(root / p) for p in paths])
    y = np.array([images[p][0] for p in paths])
    groups = np.array([images[p][1] for p in paths])
    scores = np.zeros(len(y))
    for tr, te in GroupKFold(5).split(X, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)).fit(X[tr], y[tr])
        scores[te] = clf.predict_proba(X[te])[:, 1]
    return float(roc_auc_score(y, scores))


def face_crops(root: Path, split: str, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    "Ground-truth face crops: every face of pristine images (label 0) and the manipulated face of FS/FA images (1)."
    seen, crops, labels = set(), [], []
    for r in load_split(root, split):
        if r['image'] in seen: continue
        seen.add(r['image'])
        img = cv2.imread(str(root / r['image']), cv2.IMREAD_COLOR)[..., ::-1]
        boxes = [r['fake_image_box']] if r['fake_image_box'] else r['mtcnn_boxes']
        for x0, y0, x1, y1 in boxes:
            crops.append(cv2.resize(img[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA))
            labels.append(int(bool(r['fake_image_box'])))
    return np.stack(crops), np.array(labels)


def probe_cnn(root: Path, seconds: float = 60.0, seed: int = 0) -> tuple[float, int, int]:
    "(b) tiny CNN on face crops, trained for `seconds` on one thread: (test AUC, epochs, train crops)."
    import torch
    from sklearn.metrics import roc_auc_score
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    Xtr, ytr = face_crops(root, 'train')
    Xte, yte = face_crops(root, 'test')
    to_t = lambda X: torch.tensor(X, dtype=torch.float32).permute(0, 3, 1, 2) / 255 - 0.5
    Xtr_t, Xte_t = to_t(Xtr), to_t(Xte)
    ytr_t = torch.tensor(ytr, dtype=torch.float32)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    pos_weight = torch.tensor((ytr == 0).sum() / max(1, (ytr == 1).sum()))
    t0, epochs = time.perf_counter(), 0
    g = torch.Generator().manual_seed(seed)
    while time.perf_counter() - t0 < seconds:
        perm = torch.randperm(len(ytr_t), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            xb = Xtr_t[idx]
            if torch.rand(1, generator=g) < 0.5: xb = xb.flip(3)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xb).squeeze(1), ytr_t[idx], pos_weight=pos_weight)
            opt.zero_grad(); loss.backward(); opt.step()
            if time.perf_counter() - t0 > seconds: break
        epochs += 1
    with torch.no_grad(): scores = torch.cat([net(Xte_t[i:i + 256]).squeeze(1) for i in range(0, len(Xte_t), 256)]).numpy()
    return float(roc_auc_score(yte, scores)), epochs, len(ytr)


def probe_text(root: Path) -> float:
    "(c) bag-of-words logistic regression, text-manipulated vs not, train -> test AUC."
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    tr, te = load_split(root, 'train'), load_split(root, 'test')
    lab = lambda rs: np.array([int('text' in r['fake_cls']) for r in rs])
    vec = CountVectorizer(ngram_range=(1, 2), lowercase=True, min_df=2)
    Xtr = vec.fit_transform([r['text'] for r in tr])
    clf = LogisticRegression(max_iter=3000, C=0.5).fit(Xtr, lab(tr))
    return float(roc_auc_score(lab(te), clf.predict_proba(vec.transform([r['text'] for r in te]))[:, 1]))


def probe_mmtt_global(root: Path) -> tuple[float, int, int]:
    "(d) stratified 5-fold CV AUC of a logistic regression on global image statistics, authentic vs manipulated MMTT faces."
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from forgrepro.data.mmtt import mmtt_data_root, read_mmtt
    from forgrepro.data.synth_mmtt import explanation_kind   # the twin's authentic faces have an all-black mask too
    files = sorted(Path(root).rglob('*-mutilabel.json'))
    if not files: raise FileNotFoundError(f"no MMTT annotation files (*-mutilabel.json) under {root}")
    data_root = mmtt_data_root(files[0].parent)
    images = {}
    for f in files:
        for r in read_mmtt(f): images[r.img_path] = int(explanation_kind(r.caption) != 'real')
    paths = sorted(images)
    X = np.stack([global_features(data_root / p) for p in paths])
    y = np.array([images[p] for p in paths])
    scores = np.zeros(len(y))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)).fit(X[tr], y[tr])
        scores[te] = clf.predict_proba(X[te])[:, 1]
    return float(roc_auc_score(y, scores)), len(y), int((y == 0).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--root', type=Path, help='existing synthetic set (folder containing DGM4/); default: generate one')
    ap.add_argument('--difficulty', type=float, default=None, help='generate with this difficulty (default: the default)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--cnn-seconds', type=float, default=60.0)
    ap.add_argument('--mmtt', help="also probe a synthetic MMTT set (d): its folder, or 'synthetic' for the cached tiny set")
    ap.add_argument('--skip-dgm4', action='store_true', help='run only (d)')
    args = ap.parse_args()
    if args.mmtt:
        if args.mmtt == 'synthetic':
            from forgrepro.repro import synthetic_dataset
            mroot = synthetic_dataset('mmtt', 'tiny')
        else: mroot = Path(args.mmtt)
        auc_d, n, n_auth = probe_mmtt_global(Path(mroot))
        print(f"(d) MMTT global-statistics logistic regression, authentic vs manipulated ({n} images, {n_auth} authentic): "
              f"AUC = {auc_d:.3f}  (target < 0.6)")
    if args.skip_dgm4: return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            from forgrepro.data.synth_dgm4 import make_synth_dgm4
            kw = {} if args.difficulty is None else {'difficulty': args.difficulty}
            t0 = time.perf_counter()
            root = make_synth_dgm4(tmp, seed=args.seed, **kw)
            print(f"generated {root} in {time.perf_counter() - t0:.1f}s")
        params = json.loads((Path(root) / 'synth_manifest.json').read_text())['parameters']
        print(f"set: {params}")
        auc_a = probe_global(Path(root))
        print(f"(a) global-statistics logistic regression, pristine vs image-manipulated: AUC = {auc_a:.3f}  (target < 0.6)")
        auc_b, epochs, n = probe_cnn(Path(root), args.cnn_seconds, args.seed)
        print(f"(b) tiny CNN on face crops ({n} train crops, {epochs} epochs in {args.cnn_seconds:.0f}s, 1 thread): "
              f"test AUC = {auc_b:.3f}  (target ~0.7-0.9)")
        auc_c = probe_text(Path(root))
        print(f"(c) bag-of-words text-only, text-manipulated vs not: test AUC = {auc_c:.3f}  (target ~0.5)")


if __name__ == '__main__':
    main()
