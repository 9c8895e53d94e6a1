"""forgrepro.data.text + forgrepro.data.dgm4: HAMMER/ASAP data semantics on hand-made DGM4 folders."""
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forgrepro.core import DataError, IssueReport
from forgrepro.data.batch import DGM4Batch, TextInput
from forgrepro.data.dgm4 import (FAKE_CLS, MULTI_LABEL_CLASSES, AuxTexts, DGM4Collator, DGM4Dataset, DGM4Record,
                                 RandomAugment, boxes_to_cxcywh, dgm4_statistics, find_dgm4_split, fit_box, is_fake,
                                 multi_label, parse_dgm4_record, read_dgm4, resolve_dgm4_image)
from forgrepro.data.io import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Skipped, batch_issues
from forgrepro.data.text import (BERT_BASE_UNCASED_VOCAB_SHA256, bert_tokenizer, pre_caption, tokenize,
                                 tokenize_with_word_labels, vocab_sha256)

# Six verbatim records of the public DGM4 val split (JSONL copy in liuxuannan/FAK-Owl data/metadata_split/bbc/val.json).
REAL_JSONL = """\
{"id": 1576812, "image": "DGM4/origin/bbc/0272/120.jpg", "text": "The image echoed the horror of Prince William when his parents died the Prince and Princess of Wales posed with him outside the hospital", "fake_cls": "text_attribute", "fake_image_box": [], "fake_text_pos": [4, 11], "mtcnn_boxes": [[340, 55, 430, 166], [207, 88, 284, 191]]}
{"id": 1675978, "image": "DGM4/manipulation/HFGI/1675978-HFGI.jpg", "text": "Shashi Tharoor and Sunanda Pushkar lived their lives under constant public scrutiny", "fake_cls": "face_attribute", "fake_image_box": [189, 8, 267, 106], "fake_text_pos": [], "mtcnn_boxes": [[189, 8, 267, 106], [375, 65, 444, 151]]}
{"id": 1542684, "image": "DGM4/manipulation/simswap/1542684-054031-simswap.jpg", "text": "Geeta has said that the family she had previously identified in photos is not hers", "fake_cls": "face_swap", "fake_image_box": [370, 189, 599, 488], "fake_text_pos": [], "mtcnn_boxes": [[0, 41, 232, 421], [370, 189, 599, 488]]}
{"id": 1456992, "image": "DGM4/origin/bbc/0003/451.jpg", "text": "Raul Castro and Barack Obama met during the United Nations General Assembly last week", "fake_cls": "orig", "fake_image_box": [], "fake_text_pos": [], "mtcnn_boxes": [[285, 120, 351, 214], [622, 123, 688, 215]]}
{"id": 1510066, "image": "DGM4/manipulation/infoswap/1510066-045234-infoswap.jpg", "text": "Pictured here with Alibaba chairman Jack Ma Mr Wang is China and also Asia s richest man", "fake_cls": "face_swap&text_swap", "fake_image_box": [526, 140, 597, 232], "fake_text_pos": [0, 1, 9, 10, 12, 13, 14, 15, 16], "mtcnn_boxes": [[526, 140, 597, 232], [114, 103, 182, 179], [766, 84, 815, 160], [679, 145, 713, 186], [348, 92, 380, 132]]}
{"id": 1610881, "image": "DGM4/manipulation/StyleCLIP/1610881-StyleCLIP.jpg", "text": "Cameron and Tyler Winklevoss claim Mark Zuckerberg stole the idea for Facebook from them", "fake_cls": "face_attribute&text_swap", "fake_image_box": [106, 32, 134, 81], "fake_text_pos": [2, 3, 4, 5, 6, 7, 8, 9, 11], "mtcnn_boxes": [[106, 32, 134, 81], [347, 51, 374, 94], [183, 18, 208, 48], [248, 78, 270, 106]]}
"""

W, H = 100, 80


@pytest.fixture(scope="module")
def tok():
    return bert_tokenizer()


def _img(path: Path, size=(W, H), seed=0, mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format=fmt, quality=95)
    return path


def _rec(**kw):
    base = {"id": 1, "image": "DGM4/origin/bbc/0001/1.jpg", "text": "Mr A met Ms B in London", "fake_cls": "orig",
            "fake_image_box": [], "fake_text_pos": [], "mtcnn_boxes": [[10, 10, 40, 50]]}
    return {**base, **kw}


@pytest.fixture
def dgm4(tmp_path):
    "A four-record DGM4 folder: orig + text fake sharing one pristine image, a face swap, and a nested StyleCLIP folder."
    root = tmp_path / "datasets"
    _img(root / "DGM4/origin/bbc/0001/1.jpg", seed=1)
    _img(root / "DGM4/manipulation/simswap/2-000001-simswap.jpg", seed=2)
    _img(root / "DGM4/manipulation/StyleCLIP/StyleCLIP/3-StyleCLIP.jpg", seed=3)     # nested unzip layout
    recs = [_rec(id=1),
            _rec(id=1, text="Mr C met Ms B in Paris", fake_cls="text_swap", fake_text_pos=[1, 5]),
            _rec(id=2, image="DGM4/manipulation/simswap/2-000001-simswap.jpg", fake_cls="face_swap",
                 fake_image_box=[10, 20, 50, 60], mtcnn_boxes=[[60, 5, 70, 15], [10, 20, 50, 60]]),
            _rec(id=3, image="DGM4/manipulation/StyleCLIP/3-StyleCLIP.jpg", fake_cls="face_attribute&text_swap",
                 text="The unaffable senator spoke", fake_image_box=[0, 0, 30, 30], fake_text_pos=[1], mtcnn_boxes=[])]
    (root / "DGM4/metadata").mkdir(parents=True)
    (root / "DGM4/metadata/val.json").write_text(json.dumps(recs))
    return root


# ---------------------------------------------------------------- text
def test_pre_caption_is_the_official_cleaner():
    assert pre_caption("Kenya's CTV: \"Breaking\" (live)!") == "kenyas ctv breaking live"
    assert pre_caption("co-op / <person> said ~ ok?") == "co op person said ok"
    assert pre_caption("  a   b\tc  ") == "a b\tc"           # only runs of 2+ whitespace collapse; tabs survive
    assert pre_caption(" ".join(map(str, range(60)))) == " ".join(map(str, range(50)))


def test_bundled_tokenizer_is_bert_base_uncased(tok):
    assert vocab_sha256(tok) == BERT_BASE_UNCASED_VOCAB_SHA256
    assert (len(tok), tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"])) == (30522, [0, 100, 101, 102, 103, 1996])
    assert tok.tokenize("Café UNAFFABLE") == ["cafe", "una", "##ffa", "##ble"]
    assert bert_tokenizer() is tok


def test_tokenizer_paths_and_verification(tmp_path, monkeypatch, tok):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    with pytest.raises(ValueError, match="not the bert-base-uncased vocabulary"): bert_tokenizer(vocab)
    small = bert_tokenizer(vocab, verify=False)
    assert small("hello world").input_ids == [2, 5, 6, 3]
    monkeypatch.setenv("FORGREPRO_BERT", str(vocab))
    with pytest.raises(ValueError): bert_tokenizer()                    # the env var is honoured (and verified)
    assert bert_tokenizer(verify=False) is small
    with pytest.raises(FileNotFoundError): bert_tokenizer(tmp_path / "missing")


def test_token_labels_hand_example(tok):
    # 'bulmerrizzi' -> bu ##lmer ##riz ##zi ; fake words: 1 (a 4-piece word) and 3
    texts = ["david bulmerrizzi won gold", "it rained"]
    pieces = tok.tokenize(texts[0])
    assert pieces == ["david", "bu", "##lmer", "##riz", "##zi", "won", "gold"]
    ids, attn, lab = tokenize_with_word_labels(tok, texts, [[0, 1, 0, 1, 0], [0, 0, 0, 0, 0]])
    n0 = len(pieces) + 1                                               # [CLS] + pieces, [SEP] removed
    assert ids.shape == (2, n0) and ids[0, 0] == 101 and 102 not in ids.tolist()[0]
    assert attn[0].tolist() == [1] * n0 and attn[1].tolist() == [1, 1, 1] + [0] * (n0 - 3)
    assert lab[0].tolist() == [0, 1, 1, 1, 1, 0, 1]
    assert lab[1].tolist() == [0, 0] + [-100] * (n0 - 3)
    assert ids[1, 3:].eq(0).all()                                      # the old [SEP] slot is padding 0


def _oracle_labels(tok, texts, masks, max_length):
    "Loop-level statement of HAMMER text_input_adjust + evaluation token labels (train.py l.70-101, l.190-201)."
    enc = tok(texts, max_length=max_length, truncation=True)
    ids = [x[:-1] for x in enc["input_ids"]]
    att = [x[:-1] for x in enc["attention_mask"]]
    L = max(len(x) for x in ids)
    ids = [x + [0] * (L - len(x)) for x in ids]
    att = [x + [0] * (L - len(x)) for x in att]
    labels = []
    for i, a in enumerate(att):
        row = [0 if v == 1 else -100 for v in a[1:]]
        sub = enc.word_ids(i)[1:-1]
        for w in [j for j, m in enumerate(masks[i]) if m == 1]:
            for pos, s in enumerate(sub):
                if s == w: row[pos] = 1
        labels.append(row)
    return ids, att, labels


def test_token_labels_match_the_official_semantics_on_random_captions(tok):
    rng = random.Random(0)
    words = ["mr", "bulmerrizzi", "unaffable", "obama", "met", "the", "preGrammy", "in", "kaziranga", "2011", "a"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(24)]
    masks = [[int(rng.random() < 0.3) for _ in range(50)] for _ in texts]
    for max_length in (128, 12):                                       # 12 forces truncation
        ids, attn, lab = tokenize_with_word_labels(tok, texts, masks, max_length)
        o_ids, o_att, o_lab = _oracle_labels(tok, texts, masks, max_length)
        assert ids.tolist() == o_ids and attn.tolist() == o_att and lab.tolist() == o_lab
    ti = tokenize(tok, texts)
    assert isinstance(ti, TextInput) and ti.input_ids.tolist() == _oracle_labels(tok, texts, masks, 128)[0]


# ---------------------------------------------------------------- labels and records
def test_label_constants():
    assert len(FAKE_CLS) == 9 and FAKE_CLS[0] == "orig" and MULTI_LABEL_CLASSES == ("face_swap", "face_attribute", "text_swap", "text_attribute")
    expected = [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (1, 0, 1, 0), (1, 0, 0, 1), (0, 1, 1, 0), (0, 1, 0, 1)]
    assert [multi_label(c) for c in FAKE_CLS] == expected
    assert [is_fake(c) for c in FAKE_CLS] == [False] + [True] * 8


def test_real_records_parse(tmp_path):
    p = tmp_path / "val.json"
    p.write_text(REAL_JSONL)
    recs = read_dgm4(p)
    assert [r.fake_cls for r in recs] == ["text_attribute", "face_attribute", "face_swap", "orig", "face_swap&text_swap", "face_attribute&text_swap"]
    assert recs[1].fake_image_box == (189.0, 8.0, 267.0, 106.0) and recs[0].fake_image_box is None
    assert all(r.fake_image_box in r.mtcnn_boxes for r in recs if r.fake_image_box)
    assert [recs[0].text.split()[i] for i in recs[0].fake_text_pos] == ["horror", "died"]
    assert (recs[4].label, recs[4].multi_label, recs[4].index, recs[4].source) == (1, (1, 0, 1, 0), 4, str(p))


def test_json_array_and_jsonl_give_the_same_records(tmp_path):
    recs = [json.loads(line) for line in REAL_JSONL.splitlines()]
    (tmp_path / "a.json").write_text(json.dumps(recs, indent=2))
    (tmp_path / "b.jsonl").write_text(REAL_JSONL)
    strip = lambda rs: [{**r.__dict__, "source": None} for r in rs]
    assert strip(read_dgm4(tmp_path / "a.json")) == strip(read_dgm4(tmp_path / "b.jsonl"))


@pytest.mark.parametrize("change,kind", [
    ({"id": "1"}, "bad_type"), ({"id": True}, "bad_type"), ({"text": 3}, "bad_type"), ({"image": ""}, "bad_type"),
    ({"fake_text_pos": "1"}, "bad_type"), ({"fake_text_pos": [1.0]}, "bad_type"), ({"fake_image_box": "x"}, "bad_type"),
    ({"fake_cls": "face_swap&text_replace"}, "unknown_fake_cls"), ({"fake_cls": "Orig"}, "unknown_fake_cls"),
    ({"text": ""}, "empty_caption"), ({"text": " ?! "}, "empty_caption"),
    ({"fake_cls": "face_swap", "fake_image_box": [1, 2, 3]}, "bad_box"),
    ({"fake_cls": "face_swap", "fake_image_box": [1, 2, "3", 4]}, "bad_box"),
    ({"fake_cls": "face_swap", "fake_image_box": [1, 2, float("nan"), 4]}, "bad_box"),
    ({"fake_cls": "face_swap", "fake_image_box": [30, 20, 30, 60]}, "degenerate_box"),
    ({"fake_cls": "face_swap"}, "missing_box"), ({"fake_image_box": [1, 2, 3, 4]}, "unexpected_box"),
    ({"fake_cls": "text_swap", "fake_text_pos": [-1]}, "bad_text_pos"),
    ({"fake_cls": "text_swap", "fake_text_pos": [7]}, "text_pos_out_of_range"),       # 7 words: indices 0..6
    ({"fake_text_pos": [0]}, "unexpected_text_pos"),
    ({"mtcnn_boxes": [[1, 2, 3]]}, "bad_mtcnn_boxes"), ({"mtcnn_boxes": 5}, "bad_mtcnn_boxes"),
])
def test_bad_records(change, kind):
    with pytest.raises(DataError) as e: parse_dgm4_record(_rec(**change), "val.json", 7)
    assert e.value.kind == kind and e.value.path == "val.json" and str(e.value.record).startswith("7")


def test_missing_field_and_optional_mtcnn():
    raw = _rec()
    del raw["fake_text_pos"]
    with pytest.raises(DataError, match=r"record 0 \(id 1\): missing field\(s\) \['fake_text_pos'\]"): parse_dgm4_record(raw, "v.json", 0)
    raw = _rec()
    del raw["mtcnn_boxes"]
    assert parse_dgm4_record(raw, "v.json", 0).mtcnn_boxes == ()
    assert parse_dgm4_record(_rec(fake_cls="text_swap", fake_text_pos=[5]), "v.json", 0).fake_text_pos == (5,)


def test_strict_versus_skip_and_report(tmp_path):
    recs = [_rec(id=1), _rec(id=2, fake_cls="fake"), _rec(id=3), _rec(id=4, text=""), "not a record", _rec(id=6)]
    p = tmp_path / "val.json"
    p.write_text(json.dumps(recs))
    with pytest.raises(DataError, match=r"val.json: record 1 \(id 2\): unknown fake_cls 'fake'"): read_dgm4(p)
    rep = IssueReport()
    kept = read_dgm4(p, strict=False, report=rep)
    assert [r.id for r in kept] == [1, 3, 6] and [r.index for r in kept] == [0, 2, 5]
    assert [(i.kind, i.record, i.action) for i in rep.issues] == [                   # in file order
        ("unknown_fake_cls", "1 (id 2)", "skipped"), ("empty_caption", "3 (id 4)", "skipped"), ("not_a_record", 4, "skipped")]
    assert all(i.path == str(p) for i in rep.issues)
    with pytest.raises(ValueError): read_dgm4(p, strict=False)


# ---------------------------------------------------------------- paths
def test_split_lookup(dgm4, tmp_path):
    val = dgm4 / "DGM4/metadata/val.json"
    assert find_dgm4_split(dgm4, "val") == find_dgm4_split(dgm4 / "DGM4", "val") == val
    (dgm4 / "DGM4/metadata/test.jsonl").write_text(json.dumps(_rec()) + "\n")
    assert find_dgm4_split(dgm4, "test") == dgm4 / "DGM4/metadata/test.jsonl"
    assert find_dgm4_split(None, val) == val
    with pytest.raises(DataError) as e: find_dgm4_split(dgm4, "train")
    assert e.value.kind == "missing_split" and "train.json" in str(e.value) and "train.jsonl" in str(e.value)
    with pytest.raises(DataError) as e: find_dgm4_split(tmp_path, "val")
    assert e.value.kind == "bad_root"
    ds = DGM4Dataset(None, val, image_res=16)                         # root inferred from the metadata location
    assert ds.data_root == dgm4 and len(ds) == 4


def test_nested_folder_fallback_and_missing_file(dgm4):
    ds = DGM4Dataset(dgm4, "val", image_res=16)
    assert ds.report.counts() == {"repaired:nested_layout": 1}
    assert ds[3].meta["path"].endswith("StyleCLIP/StyleCLIP/3-StyleCLIP.jpg")
    (dgm4 / "DGM4/manipulation/simswap/2-000001-simswap.jpg").unlink()
    with pytest.raises(DataError) as e: ds[2]
    assert e.value.kind == "missing_file" and "record 2 (id 2) of val.json" in str(e.value) and "2-000001-simswap.jpg" in str(e.value)
    with pytest.raises(DataError): DGM4Dataset(dgm4, "val", check_files=True)
    rep = IssueReport()
    checked = DGM4Dataset(dgm4, "val", strict=False, report=rep, check_files=True)
    assert [r.id for r in checked.records] == [1, 1, 3] and rep.counts()["skipped:missing_file"] == 1


# ---------------------------------------------------------------- boxes and images
def test_box_normalisation_hand_example():
    xywh, clipped = fit_box((10, 20, 50, 60), (W, H))
    assert (xywh, clipped) == ((10, 20, 40, 40), False)
    box = boxes_to_cxcywh(torch.tensor([xywh, xywh]), torch.tensor([[W, H], [W, H]]), torch.tensor([False, True]))
    assert torch.allclose(box[0], torch.tensor([30 / 100, 40 / 80, 40 / 100, 40 / 80]))
    assert torch.allclose(box[1], torch.tensor([(100 - 10 - 40 + 20) / 100, 40 / 80, 40 / 100, 40 / 80]))  # x' = W - x - w
    assert fit_box((10.7, 20.2, 50.9, 60.5), (W, H))[0] == (10, 20, 40, 40)      # official int() truncation of x, y, w, h


def test_dataset_box_and_flip(dgm4):
    ds = DGM4Dataset(dgm4, "val", image_res=16)
    assert torch.allclose(ds[2].box, torch.tensor([0.3, 0.5, 0.4, 0.5])) and ds[0].box.tolist() == [0, 0, 0, 0]
    tr = DGM4Dataset(dgm4, "val", image_res=16, train=True, augment=None, generator=torch.Generator().manual_seed(1))
    seen = {}
    for _ in range(10):
        s = tr[2]
        seen[s.meta["flipped"]] = s
    assert set(seen) == {True, False}
    assert torch.allclose(seen[True].box, torch.tensor([0.7, 0.5, 0.4, 0.5]))       # cx' = 1 - cx
    src = Image.open(dgm4 / "DGM4/manipulation/simswap/2-000001-simswap.jpg").convert("RGB")
    ref = src.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((16, 16), Image.BICUBIC)   # official: hflip, then resize
    assert torch.allclose(seen[True].image, _clip(ref), atol=1e-6)


def _clip(img):
    from torchvision import transforms
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])(img)


def test_eval_image_matches_the_official_test_transform(dgm4):
    from torchvision import transforms
    official = transforms.Compose([transforms.Resize((256, 256), interpolation=Image.BICUBIC), transforms.ToTensor(),
                                   transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    ds = DGM4Dataset(dgm4, "val")
    ref = official(Image.open(dgm4 / "DGM4/origin/bbc/0001/1.jpg").convert("RGB"))
    assert torch.equal(ds[0].image, ref)


def test_box_overflow_is_clipped_and_outside_box_is_an_error(dgm4):
    meta = dgm4 / "DGM4/metadata/val.json"
    recs = json.loads(meta.read_text())
    recs[2]["fake_image_box"] = [90, 70, 120, 95]                      # overflows the 100x80 image
    recs[3]["fake_image_box"] = [150, 10, 170, 30]                     # entirely right of it
    meta.write_text(json.dumps(recs))
    ds = DGM4Dataset(dgm4, "val", image_res=16)
    s = ds[2]
    assert [i.kind for i in s.meta["repairs"]] == ["box_clipped"]
    assert torch.allclose(s.box, torch.tensor([95 / 100, 75 / 80, 10 / 100, 10 / 80]))
    with pytest.raises(DataError) as e: ds[3]
    assert e.value.kind == "box_outside_image" and "record 3 (id 3)" in str(e.value)
    lenient = DGM4Dataset(dgm4, "val", image_res=16, strict=False)
    assert isinstance(lenient[3], Skipped) and lenient[3].issue.kind == "box_outside_image"


def test_oversized_image_is_downscaled_but_box_uses_stored_size(dgm4):
    full = DGM4Dataset(dgm4, "val", image_res=16)[2]
    small = DGM4Dataset(dgm4, "val", image_res=16, max_side=50)[2]
    assert torch.equal(full.box, small.box) and small.meta["orig_size"] == (W, H)
    assert [i.kind for i in small.meta["repairs"]] == ["downscaled"] and small.image.shape == (3, 16, 16)


def test_grayscale_image_is_repaired_and_reported_through_the_batch(dgm4, tok):
    _img(dgm4 / "DGM4/origin/bbc/0001/1.jpg", seed=1, mode="L")
    ds = DGM4Dataset(dgm4, "val", image_res=16)
    b = DGM4Collator(tok)([ds[0], ds[1]])
    assert [(i.kind, i.record) for i in batch_issues(b)] == [("grayscale", "0 (id 1) of val.json"), ("grayscale", "1 (id 1) of val.json")]
    assert torch.allclose(b.image[0, 0], (b.image[0, 1] * CLIP_STD[1] + CLIP_MEAN[1] - CLIP_MEAN[0]) / CLIP_STD[0], atol=1e-5)


def test_word_mask_and_truncated_positions(dgm4):
    recs = json.loads((dgm4 / "DGM4/metadata/val.json").read_text())
    recs[1]["fake_text_pos"] = [1, 5]
    (dgm4 / "DGM4/metadata/val.json").write_text(json.dumps(recs))
    ds = DGM4Dataset(dgm4, "val", image_res=16, max_words=4)
    assert ds.report.counts() == {"repaired:nested_layout": 1, "repaired:text_pos_truncated": 1}
    s = ds[1]
    assert s.fake_word_mask.tolist() == [0, 1, 0, 0] and s.text == "mr c met ms"       # word 5 dropped, caption truncated
    assert DGM4Dataset(dgm4, "val", image_res=16)[1].fake_word_mask[:7].tolist() == [0, 1, 0, 0, 0, 1, 0]


# ---------------------------------------------------------------- skip-and-report through the collator
def test_skipped_samples_reach_the_batch(dgm4, tok):
    p = dgm4 / "DGM4/manipulation/simswap/2-000001-simswap.jpg"
    p.write_bytes(p.read_bytes()[:200])                                 # truncated JPEG
    ds = DGM4Dataset(dgm4, "val", image_res=16, strict=False)
    coll = DGM4Collator(tok)
    b = coll([ds[i] for i in range(4)])
    assert len(b) == 3 and [m["id"] for m in b.meta] == [1, 1, 3]
    assert [(i.kind, i.record, i.action) for i in b.skipped] == [("truncated_image", "2 (id 2) of val.json", "skipped")]
    assert b.skipped[0].path == str(p)
    empty = coll([ds[2]])
    assert len(empty) == 0 and empty.image.shape[0] == 0 and len(empty.skipped) == 1
    with pytest.raises(DataError, match="truncated"): DGM4Dataset(dgm4, "val", image_res=16)[2]


def test_issues_survive_dataloader_workers(dgm4, tok):
    _img(dgm4 / "DGM4/origin/bbc/0001/1.jpg", seed=1, mode="L")
    (dgm4 / "DGM4/manipulation/simswap/2-000001-simswap.jpg").unlink()
    ds = DGM4Dataset(dgm4, "val", image_res=16, strict=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=DGM4Collator(tok))
    report = IssueReport()
    n = 0
    for b in loader:
        assert isinstance(b, DGM4Batch)
        report.extend(batch_issues(b))
        n += len(b)
    assert n == 3 and report.counts() == {"repaired:grayscale": 2, "skipped:missing_file": 1}


def test_batch_contents(dgm4, tok):
    ds = DGM4Dataset(dgm4, "val", image_res=16)
    b = DGM4Collator(tok)([ds[i] for i in range(4)])
    assert b.image.shape == (4, 3, 16, 16) and b.label.tolist() == [0, 1, 1, 1]
    assert b.fake_cls.tolist() == [FAKE_CLS.index(c) for c in ("orig", "text_swap", "face_swap", "face_attribute&text_swap")]
    assert b.multi_label.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0]]
    assert b.token_labels.shape == (4, b.input_ids.shape[1] - 1)
    assert b.token_labels[1, :7].tolist() == [0, 1, 0, 0, 0, 1, 0]       # "mr c met ms b in paris": words 1 and 5
    assert b.token_labels[3, :6].tolist() == [0, 1, 1, 1, 0, 0]          # "the unaffable senator spoke": una ##ffa ##ble
    assert b.faces is None and b.aux_caption is None
    for m, r in zip(b.meta, ds.records):
        assert {k: m[k] for k in ("id", "image", "index", "source", "fake_cls")} == {
            "id": r.id, "image": r.image, "index": r.index, "source": r.source, "fake_cls": r.fake_cls}
        assert m["text"] == pre_caption(r.text)
    assert b.texts == [m["text"] for m in b.meta]


# ---------------------------------------------------------------- faces
def test_face_crops_boxes_and_flip(dgm4):
    # paint the face-swap box of image 2 red and the second mtcnn box blue
    p = dgm4 / "DGM4/manipulation/simswap/2-000001-simswap.jpg"
    a = np.zeros((H, W, 3), np.uint8)
    a[20:60, 10:50] = (255, 0, 0)
    a[5:15, 60:70] = (0, 0, 255)
    Image.fromarray(a).save(p, format="PNG")                             # lossless, despite the .jpg name
    ds = DGM4Dataset(dgm4, "val", image_res=16, face_size=8, max_faces=3)
    s = ds[2]
    assert s.faces.shape == (3, 3, 8, 8) and s.face_mask.tolist() == [True, True, False]
    assert torch.allclose(s.face_boxes[0], torch.tensor([0.1, 0.25, 0.5, 0.75]))   # largest first
    assert torch.allclose(s.face_boxes[1], torch.tensor([0.6, 5 / 80, 0.7, 15 / 80]))
    red = (torch.tensor([1.0, 0, 0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(s.faces[0].mean((1, 2)), red, atol=1e-4) and s.faces[2].abs().sum() == 0
    tr = DGM4Dataset(dgm4, "val", image_res=16, face_size=8, train=True, augment=None, generator=torch.Generator().manual_seed(1))
    f = next(x for x in (tr[2] for _ in range(10)) if x.meta["flipped"])
    assert torch.allclose(f.face_boxes[1], torch.tensor([0.3, 5 / 80, 0.4, 15 / 80]))    # mirrored: 1 - x2, 1 - x1
    assert torch.allclose(f.faces[0], s.faces[0].flip(-1), atol=1e-5)


def test_face_detector_and_whole_image_fallback(dgm4):
    calls = []
    def detect(img):
        calls.append(img.size)
        return [[5, 5, 25, 35]] if len(calls) == 1 else []
    ds = DGM4Dataset(dgm4, "val", image_res=16, face_size=8, face_detector=detect, max_side=50)
    s = ds[3]                                                            # no mtcnn_boxes -> detector, on the 50x40 loaded image
    assert calls == [(50, 40)] and torch.allclose(s.face_boxes[0], torch.tensor([0.1, 0.125, 0.5, 0.875]))
    s = ds[3]                                                            # detector finds nothing -> whole image, counted
    assert torch.allclose(s.face_boxes[0], torch.tensor([0.0, 0, 1, 1]))
    assert [i.kind for i in s.meta["repairs"]] == ["downscaled", "no_face"]
    assert ds[0].face_boxes[0].tolist() == pytest.approx([0.1, 0.125, 0.4, 0.625])     # mtcnn boxes win over the detector
    assert len(calls) == 2


# ---------------------------------------------------------------- RandomAugment
def test_random_augment_ops():
    ra = RandomAugment()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    from PIL import ImageOps
    low = (img // 2 + 40).astype(np.uint8)                               # per-channel min > 0
    for x in (img, low):
        assert np.array_equal(ra.apply("AutoContrast", x), np.asarray(ImageOps.autocontrast(Image.fromarray(x))))
        assert np.array_equal(ra.apply("Equalize", x), np.asarray(ImageOps.equalize(Image.fromarray(x))))
    assert (RandomAugment(bug_compatible=True).apply("AutoContrast", low) == 255).all()     # ALBEF's uint8 negation bug
    assert np.array_equal(ra.apply("Brightness", img), np.minimum(img.astype(np.float32) * np.float32(1.36), 255).astype(np.uint8))
    assert np.array_equal(ra.apply("Identity", img), img)


def test_sharpness_blend_and_overflow_bug():
    img = np.zeros((5, 5, 3), np.uint8)
    img[2, 2] = 255
    out = RandomAugment().apply("Sharpness", img)
    # centre: degenerate = round(5*255/13) = 98; 98 + 1.36 * (255 - 98) = 311.5 -> clipped 255 (ALBEF wraps to 55)
    # neighbour: degenerate = round(255/13) = 20; 20 + 1.36 * (0 - 20) = -7.2 -> clipped 0 (ALBEF wraps to 249)
    assert (out[2, 2, 0], out[1, 2, 0]) == (255, 0)
    bug = RandomAugment(bug_compatible=True).apply("Sharpness", img)
    assert (bug[2, 2, 0], bug[1, 2, 0]) == (55, 249)
    assert np.array_equal(out[0], img[0]) and np.array_equal(out[:, 0], img[:, 0])   # border rows/cols untouched


def test_random_augment_sampling():
    class Spy(RandomAugment):
        def apply(self, name, img):
            self.log.append(name)
            return img
    spy = Spy()
    spy.log = []
    g = torch.Generator().manual_seed(0)
    n = 4000
    for _ in range(n): spy(np.zeros((2, 2, 3), np.uint8), g)
    counts = Counter(spy.log)
    assert abs(len(spy.log) / (2 * n) - 0.5) < 0.02                      # each drawn op applied with p = 0.5
    assert all(abs(c / len(spy.log) - 0.2) < 0.02 for c in counts.values()) and len(counts) == 5
    never = RandomAugment(p=0.0)
    assert np.array_equal(never(np.full((4, 4, 3), 7, np.uint8), g), np.full((4, 4, 3), 7, np.uint8))
    with pytest.raises(ValueError): RandomAugment(augs=["Rotate"])


def test_training_is_reproducible_with_a_generator(dgm4):
    a = DGM4Dataset(dgm4, "val", image_res=16, train=True, generator=torch.Generator().manual_seed(3))
    b = DGM4Dataset(dgm4, "val", image_res=16, train=True, generator=torch.Generator().manual_seed(3))
    for i in (0, 2, 2, 3):
        assert torch.equal(a[i].image, b[i].image)


# ---------------------------------------------------------------- auxiliary texts
def _write_rank_file(path, entries):
    path.write_text("[" + "".join(json.dumps(e) + ",\n" for e in entries) + "]")       # llm_script.py output
    return path


def test_aux_texts_formats_priority_and_keys(dgm4, tmp_path, tok):
    img1 = "DGM4/origin/bbc/0001/1.jpg"
    caps = {img1: "Two men, shaking hands.", "DGM4/manipulation/simswap/2-000001-simswap.jpg": "A man.",
            "DGM4/manipulation/StyleCLIP/3-StyleCLIP.jpg": "A senator."}
    (tmp_path / "caption_train.json").write_text(json.dumps(caps))
    r0 = _write_rank_file(tmp_path / "llm_0.json", [{img1: "real explanation"}, {"DGM4/manipulation/StyleCLIP/3-StyleCLIP.jpg": "old"}])
    r1 = _write_rank_file(tmp_path / "llm_1.json", [{"DGM4/manipulation/simswap/2-000001-simswap.jpg": "swap explanation"},
                                                    {AuxTexts.key(img1, "Mr C met Ms B in Paris"): "text-fake explanation"}])
    (tmp_path / "prompt_engine.json").write_text(json.dumps({"DGM4/manipulation/StyleCLIP/3-StyleCLIP.jpg": "GLM explanation"}))
    aux = AuxTexts.load(captions=tmp_path / "caption_train.json", explanations=[tmp_path / "prompt_engine.json", r0, r1])
    ds = DGM4Dataset(dgm4, "val", image_res=16, aux_texts=aux)
    got = [(s.aux_caption, s.aux_explanation) for s in (ds[i] for i in range(4))]
    assert got == [("two men shaking hands", "real explanation"), ("two men shaking hands", "text fake explanation"),
                   ("a man", "swap explanation"), ("a senator", "glm explanation")]          # first file wins
    b = DGM4Collator(tok)([ds[i] for i in range(4)])
    assert isinstance(b.aux_caption, TextInput) and b.aux_caption.input_ids.shape[0] == 4
    assert b.aux_caption.input_ids[0].tolist()[:5] == [101] + tok.convert_tokens_to_ids(["two", "men", "shaking", "hands"])
    assert 102 not in b.aux_explanation.input_ids.tolist()[2]                             # [SEP] removed as for the news text


def test_aux_texts_missing_conflicts_and_fallback(dgm4, tmp_path):
    img1 = "DGM4/origin/bbc/0001/1.jpg"
    rank = _write_rank_file(tmp_path / "llm_0.json", [{img1: "first"}, {img1: "second"}])
    aux = AuxTexts.load(explanations=rank)
    assert aux.lookup(DGM4Record(1, img1, "x", "orig", None, (), (), "v", 0), "explanation") == "second"
    with pytest.raises(DataError) as e: DGM4Dataset(dgm4, "val", image_res=16, aux_texts=aux)
    assert e.value.kind == "missing_aux_explanation" and "record 2 (id 2) of val.json" in str(e.value)
    rep = IssueReport()
    ds = DGM4Dataset(dgm4, "val", image_res=16, aux_texts=aux, strict=False, report=rep)
    assert [r.id for r in ds.records] == [1, 1]
    assert rep.counts() == {"noted:aux_key_conflict": 1, "repaired:nested_layout": 1, "skipped:missing_aux_explanation": 2}
    rep = IssueReport()
    fb = DGM4Dataset(dgm4, "val", image_res=16, aux_texts=AuxTexts.load(explanations=rank, fallback_to_text=True), report=rep)
    assert fb[3].aux_explanation == "the unaffable senator spoke" and fb[3].aux_caption is None
    assert rep.counts()["repaired:aux_explanation_fallback"] == 2


def test_bad_aux_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"x.jpg": 3}))
    with pytest.raises(DataError, match="expected a string"): AuxTexts.load(captions=tmp_path / "a.json")
    (tmp_path / "b.json").write_text('[{"x.jpg": "ok"},\n{"y.jpg": oops},\n]')
    with pytest.raises(DataError, match="line 2"): AuxTexts.load(captions=tmp_path / "b.json")
    with pytest.raises(DataError) as e: AuxTexts.load(captions=tmp_path / "none.json")
    assert e.value.kind == "missing_file"


# ---------------------------------------------------------------- statistics
def test_statistics_hand_example(dgm4):
    recs = read_dgm4(dgm4 / "DGM4/metadata/val.json")
    st = dgm4_statistics(recs)
    assert list(st.index) == [*FAKE_CLS, "all"]
    assert st.loc["all", "n"] == 4 and st.loc["orig", "n"] == 1 and st.loc["text_attribute", "n"] == 0
    assert st.loc["all", "box_share"] == pytest.approx(0.5)
    assert st.loc["all", "mean_words"] == pytest.approx((7 + 7 + 7 + 4) / 4)
    assert st.loc["all", "fake_word_share"] == pytest.approx(3 / 25)
    assert st.loc["text_swap", "share"] == pytest.approx(0.25) and st.loc["face_swap", "mean_faces"] == 2
