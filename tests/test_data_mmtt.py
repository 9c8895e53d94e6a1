"""forgrepro.data.mmtt: ForgeryTalker/MMTT data semantics on hand-made folders."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forgrepro.core import DataError, IssueReport
from forgrepro.data.batch import MMTTBatch
from forgrepro.data.io import CLIP_MEAN, CLIP_STD, Skipped, batch_issues
from forgrepro.data.mmtt import (FACIAL_SYNONYMS, MLM_SYNONYMS, REGIONS, MMTTCollator, MMTTDataset, caption_to_multilabel,
                                 find_mmtt_split, mmtt_data_root, multilabel_to_regions, random_resized_crop_params,
                                 read_mmtt, to_coco_references)
from forgrepro.data.text import blip_pre_caption


def regions(caption):
    return multilabel_to_regions(caption_to_multilabel(caption))


# ---------------------------------------------------------------- regions and regex
def test_region_constants():
    assert REGIONS == ("eye", "pupil", "lip", "mouth", "nose", "ear", "cheek", "forehead", "chin", "jaw", "eyebrow",
                       "tooth", "tongue", "beard", "mustache", "skin", "hair", "wrinkle", "freckle", "scar", "dimple")
    assert tuple(FACIAL_SYNONYMS) == REGIONS == tuple(MLM_SYNONYMS)
    assert FACIAL_SYNONYMS["mouth"] == ("mouth", "mouths", "oral cavity", "buccal")
    assert FACIAL_SYNONYMS["wrinkle"] == ("wrinkle", "wrinkles", "line", "lines", "crease", "creases")
    assert sum(map(len, FACIAL_SYNONYMS.values())) == 83 and sum(map(len, MLM_SYNONYMS.values())) == 65
    assert MLM_SYNONYMS["hair"] == ("hair", "locks", "tresses") and MLM_SYNONYMS["dimple"] == ("dimple", "dimples")


@pytest.mark.parametrize("caption,expected", [
    ("The EYES are too bright", ["eye"]),
    ("The eyelid looks smeared", []),                                     # 'eye' is not a whole word in 'eyelid'
    ("Her eyebrows are thin", ["eyebrow"]),                               # not 'brow' -> forehead
    ("Her brows are thin", ["forehead"]),
    ("Strange facial hair", ["beard", "hair"]),                           # multi-word synonym + 'hair'
    ("facial-hair", ["hair"]),                                            # the multi-word synonym needs a space
    ("inside the oral cavity", ["mouth"]),
    ("oral  cavity", []),
    ("a buccal fold", ["mouth", "cheek"]),                                # buccal is listed under both
    ("chinese earrings, hairline", []),
    ("Teeth, tongue; moustache.", ["tooth", "tongue", "mustache"]),
    ("lines on the FOREHEAD near a scar", ["forehead", "wrinkle", "scar"]),
    ("", []),
])
def test_caption_regex(caption, expected):
    assert regions(caption) == expected


def test_regex_equals_the_per_synonym_search():
    "The compiled alternation must agree with to_mutilabel.py's one re.search per synonym."
    rng = np.random.default_rng(0)
    vocab = [s for syns in FACIAL_SYNONYMS.values() for s in syns] + ["eyelid", "chinese", "earring", "the", "-", ".", "Hair", "LIPS"]
    for _ in range(300):
        cap = " ".join(rng.choice(vocab, size=rng.integers(1, 8)))
        ref = [int(any(re.search(r"\b" + re.escape(s) + r"\b", cap, re.IGNORECASE) for s in FACIAL_SYNONYMS[r])) for r in REGIONS]
        assert caption_to_multilabel(cap) == ref


# ---------------------------------------------------------------- records
def _ann(**kw):
    cap = kw.pop("caption", "The nose and the left eye are blurred.")
    base = {"image_id": "celeb_1", "img_path": "dataset/celeb512/1.png", "mask_path": "dataset/celeb512/1_mask.png",
            "caption": cap, "instance_id": "11", "multilabel": caption_to_multilabel(cap) if isinstance(cap, str) else [0] * 21}
    return {**base, **kw}


@pytest.mark.parametrize("change,kind", [
    ({"image_id": 3}, "bad_type"), ({"caption": None}, "bad_type"), ({"img_path": ""}, "bad_type"),
    ({"instance_id": "11a"}, "bad_type"), ({"instance_id": True}, "bad_type"), ({"mask_path": 5}, "bad_type"),
    ({"caption": "   "}, "empty_caption"), ({"multilabel": [0] * 20}, "bad_multilabel"),
    ({"multilabel": [2] + [0] * 20}, "bad_multilabel"), ({"multilabel": [True] + [0] * 20}, "bad_multilabel"),
    ({"multilabel": "0" * 21}, "bad_multilabel"),
])
def test_bad_records(tmp_path, change, kind):
    p = tmp_path / "eval-mutilabel.json"
    p.write_text(json.dumps([_ann(), _ann(image_id="celeb_2", **{k: v for k, v in change.items() if k != "image_id"})
                             if "image_id" not in change else {**_ann(), **change}]))
    with pytest.raises(DataError) as e: read_mmtt(p)
    assert e.value.kind == kind and e.value.path == str(p) and str(e.value.record).startswith("1")
    rep = IssueReport()
    assert [r.image_id for r in read_mmtt(p, strict=False, report=rep)] == ["celeb_1"]
    assert rep.counts() == {f"skipped:{kind}": 1}


def test_missing_field_names_record(tmp_path):
    a = _ann()
    del a["instance_id"]
    (tmp_path / "t.json").write_text(json.dumps([a]))
    with pytest.raises(DataError, match=r"record 0 \(celeb_1\): missing field\(s\) \['instance_id'\]"): read_mmtt(tmp_path / "t.json")


def test_multilabel_mismatch_is_kept_and_counted(tmp_path):
    stored = [0] * 21
    stored[REGIONS.index("lip")] = 1
    p = tmp_path / "train-mutilabel.json"
    p.write_text(json.dumps([_ann(), _ann(image_id="celeb_2", multilabel=stored), _ann(image_id="celeb_3", multilabel=None)]))
    rep = IssueReport()
    recs = read_mmtt(p, report=rep)
    assert recs[1].multilabel == tuple(stored) and recs[2].multilabel == tuple(caption_to_multilabel(_ann()["caption"]))
    assert rep.counts() == {"noted:multilabel_mismatch": 1, "repaired:multilabel_from_caption": 1}
    assert rep.issues[0].record == "1 (celeb_2)" and "['eye', 'lip', 'nose']" in rep.issues[0].message
    with pytest.warns(UserWarning, match="multilabel_mismatch"): read_mmtt(p)


def test_mask_path_forms(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps([_ann(mask_path=""), _ann(mask_path=None), {k: v for k, v in _ann().items() if k != "mask_path"},
                             _ann(instance_id=12)]))
    recs = read_mmtt(p)
    assert [r.mask_path for r in recs] == [None, None, None, "dataset/celeb512/1_mask.png"] and recs[3].instance_id == 12


# ---------------------------------------------------------------- locating files
def test_roots_and_splits(tmp_path):
    base = tmp_path / "proj/dataset"
    (base / "dataset").mkdir(parents=True)
    for name in ("train-mutilabel.json", "train-mutilabel-simple.json", "eval-mutilabel-simple.json", "test-mutilabel.json"):
        (base / name).write_text("[]")
    for r in (tmp_path / "proj", base, base / "dataset"):
        assert mmtt_data_root(r) == base
    assert find_mmtt_split(base, "train").name == "train-mutilabel.json"
    assert find_mmtt_split(base, "train", simple=True).name == "train-mutilabel-simple.json"
    assert find_mmtt_split(base, "val").name == find_mmtt_split(base, "eval").name == "eval-mutilabel-simple.json"
    assert find_mmtt_split(None, base / "test-mutilabel.json") == base / "test-mutilabel.json"
    with pytest.raises(DataError) as e: find_mmtt_split(base, "eval", simple=False)
    assert e.value.kind == "missing_split"
    with pytest.raises(DataError) as e: mmtt_data_root(tmp_path / "elsewhere")
    assert e.value.kind == "bad_root"


# ---------------------------------------------------------------- dataset
S = 32


@pytest.fixture
def mmtt(tmp_path):
    "Annotation root with one 64x48 image whose manipulated square [8:40, 8:40] (rows, cols) is bright, and its mask."
    root = tmp_path / "dataset"
    d = root / "dataset/celeb512"
    d.mkdir(parents=True)
    img = np.zeros((48, 64, 3), np.uint8)
    img[8:40, 8:40] = 255
    Image.fromarray(img).save(d / "1.png")
    m = np.zeros((48, 64, 3), np.uint8)
    m[8:40, 8:40] = (0, 7, 0)                                         # any value > 0 after convert('L') counts
    Image.fromarray(m).save(d / "1_mask.png")
    anns = [_ann(), _ann(image_id="celeb_2", instance_id="12", mask_path="", caption="Real face.", multilabel=[0] * 21)]
    (root / "eval-mutilabel.json").write_text(json.dumps(anns))
    return root


def test_eval_sample_matches_the_official_processing(mmtt):
    from torchvision import transforms
    ds = MMTTDataset(mmtt, "eval", image_size=S)
    assert ds.report.counts() == {"repaired:no_mask": 1}
    s = ds[0]
    ref = transforms.Compose([transforms.Resize((S, S), interpolation=transforms.InterpolationMode.BICUBIC),
                              transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])(
        Image.open(mmtt / "dataset/celeb512/1.png").convert("RGB"))
    assert torch.equal(s.image, ref)
    raw = np.asarray(Image.open(mmtt / "dataset/celeb512/1_mask.png").convert("L")) > 0
    ref_mask = transforms.Compose([transforms.Resize((S, S), interpolation=transforms.InterpolationMode.NEAREST),
                                   transforms.ToTensor()])(Image.fromarray(raw.astype(np.uint8) * 255)) > 0.5
    assert s.mask.dtype == torch.float32 and torch.equal(s.mask.bool(), ref_mask)
    assert s.meta["caption"] == "the nose and the left eye are blurred" and s.meta["caption_raw"] == _ann()["caption"]
    assert multilabel_to_regions(s.multilabel) == ["eye", "nose"]
    assert ds[1].mask.sum() == 0 and ds[1].mask.shape == (1, S, S)


def test_missing_or_corrupt_mask_is_an_error(mmtt):
    (mmtt / "dataset/celeb512/1_mask.png").unlink()
    with pytest.raises(DataError) as e: MMTTDataset(mmtt, "eval", image_size=S)[0]
    assert e.value.kind == "missing_file" and "record 0 (celeb_1) of eval-mutilabel.json" in str(e.value)
    with pytest.raises(DataError): MMTTDataset(mmtt, "eval", check_files=True)
    (mmtt / "dataset/celeb512/1_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    ds = MMTTDataset(mmtt, "eval", image_size=S, strict=False)
    assert isinstance(ds[0], Skipped) and ds[0].issue.kind == "unreadable_image"


HI, LO = (1 - CLIP_MEAN[0]) / CLIP_STD[0], -CLIP_MEAN[0] / CLIP_STD[0]   # white / black after normalisation


def _iou_with_bright(s):
    "IoU of the mask with the image pixels brighter than mid-grey."
    m, b = s.mask[0].bool(), s.image[0] > (HI + LO) / 2
    return ((m & b).sum() / (m | b).sum().clamp(min=1)).item()


def test_synchronised_augmentation_moves_the_mask_with_the_image(mmtt):
    g = torch.Generator().manual_seed(0)
    ds = MMTTDataset(mmtt, "eval", image_size=S, train=True, generator=g)
    flips = set()
    for _ in range(20):
        s = ds[0]
        flips.add(s.meta["flipped"])
        assert s.mask.sum() > 0 and _iou_with_bright(s) > 0.85, _iou_with_bright(s)
        assert s.mask[0][s.image[0] > 0.99 * HI].all()                    # every fully bright pixel is masked ...
        assert not s.mask[0][s.image[0] < 0.99 * LO].any()                # ... and no fully dark one
    assert flips == {True, False}


def test_official_unsynchronised_augmentation_misaligns(mmtt):
    g = torch.Generator().manual_seed(0)
    ds = MMTTDataset(mmtt, "eval", image_size=S, train=True, sync_aug=False, generator=g)
    raw = np.asarray(Image.open(mmtt / "dataset/celeb512/1_mask.png").convert("L")) > 0
    ref = torch.from_numpy(np.asarray(Image.fromarray(raw.astype(np.uint8) * 255).resize((S, S), Image.NEAREST)) > 127).float()
    ious = []
    for _ in range(20):
        s = ds[0]
        assert torch.equal(s.mask[0], ref)                               # the mask is only resized ...
        ious.append(_iou_with_bright(s))                                  # ... so it misses the moved square
    assert sum(i < 0.6 for i in ious) >= 10, ious


def test_mask_size_mismatch_is_rescaled_and_counted(mmtt):
    m = np.zeros((24, 32), np.uint8)
    m[4:20, 4:20] = 255                                                # same square at half resolution
    Image.fromarray(m).save(mmtt / "dataset/celeb512/1_mask.png")
    ds = MMTTDataset(mmtt, "eval", image_size=S, train=True, generator=torch.Generator().manual_seed(1))
    for _ in range(6):
        s = ds[0]
        assert [i.kind for i in s.meta["repairs"]] == ["mask_size_mismatch"] and _iou_with_bright(s) > 0.8


def test_random_resized_crop_params_match_torchvision():
    from torchvision.transforms import RandomResizedCrop
    img = Image.new("RGB", (64, 48))
    for seed in range(20):
        torch.manual_seed(seed)
        ref = RandomResizedCrop.get_params(img, [0.5, 1.0], [3 / 4, 4 / 3])
        torch.manual_seed(seed)
        assert random_resized_crop_params((64, 48), (0.5, 1.0)) == tuple(ref)
    torch.manual_seed(0)
    ref = RandomResizedCrop.get_params(Image.new("RGB", (200, 10)), [0.9, 1.0], [3 / 4, 4 / 3])
    assert random_resized_crop_params((200, 10), (0.9, 1.0)) == tuple(ref) == (0, 93, 10, 13)   # fallback: centre crop, ratio 4/3


def test_grayscale_input_and_collation(mmtt):
    Image.open(mmtt / "dataset/celeb512/1.png").convert("L").save(mmtt / "dataset/celeb512/1.png")
    ds = MMTTDataset(mmtt, "eval", image_size=S)
    (mmtt / "dataset/celeb512/1_mask.png").unlink()
    lenient = MMTTDataset(mmtt, "eval", image_size=S, strict=False)
    b = MMTTCollator()([ds[1], lenient[0], lenient[1]])
    assert isinstance(b, MMTTBatch) and b.image.shape == (2, 3, S, S) and b.mask.shape == (2, 1, S, S) and b.multilabel.shape == (2, 21)
    assert [(i.kind, i.action) for i in batch_issues(b)] == [("missing_file", "skipped"), ("grayscale", "repaired"), ("grayscale", "repaired")]
    assert b.captions == ["real face", "real face"] and [m["instance_id"] for m in b.meta] == ["12", "12"]
    empty = MMTTCollator()([lenient[0]])
    assert len(empty) == 0 and len(empty.skipped) == 1


def test_coco_references_match_togt(mmtt):
    recs = read_mmtt(mmtt / "eval-mutilabel.json")
    coco = to_coco_references(recs + recs[:1])
    assert coco == {"annotations": [{"image_id": "celeb_1", "caption": _ann()["caption"], "id": "11"},
                                    {"image_id": "celeb_2", "caption": "Real face.", "id": "12"},
                                    {"image_id": "celeb_1", "caption": _ann()["caption"], "id": "11"}],
                    "images": [{"id": "celeb_1"}, {"id": "celeb_2"}]}
    assert json.loads(json.dumps(coco)) == coco


def test_blip_caption_processor():
    assert blip_pre_caption('The "left" eye: (blurred)! Isn\'t it?') == "the left eye blurred isn't it?"
    assert blip_pre_caption(" ".join(["w"] * 300)) == " ".join(["w"] * 256)
