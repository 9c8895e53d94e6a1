"""forgrepro.data.io: metadata files (JSON array / JSONL) and image loading — every bad input has an exact expectation."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from forgrepro.core import DataError, IssueReport
from forgrepro.data.io import (CLIP_MEAN, CLIP_STD, Skipped, batch_issues, load_image, load_mask, read_indexed_records,
                               read_records, to_normalized_tensor)

RECORDS = [{"id": 1, "image": "a.jpg", "text": "x y"}, {"id": 2, "image": "b.jpg", "text": "z"}, {"id": 3, "image": "c.jpg", "text": ""}]


def _rgb(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _kind(fn):
    with pytest.raises(DataError) as e: fn()
    return e.value


# ---------------------------------------------------------------- records
def test_json_array_and_jsonl_are_equivalent(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(RECORDS, indent=4))
    (tmp_path / "b.json").write_text("\n".join(json.dumps(r) for r in RECORDS))          # JSONL with a .json name (FKA-Owl)
    (tmp_path / "c.jsonl").write_text("\ufeff\n" + "\n\n".join(json.dumps(r) for r in RECORDS) + "\n\n")  # BOM, blank lines
    assert read_records(tmp_path / "a.json") == read_records(tmp_path / "b.json") == read_records(tmp_path / "c.jsonl") == RECORDS
    assert [i for i, _ in read_indexed_records(tmp_path / "c.jsonl")] == [0, 1, 2]
    (tmp_path / "empty.json").write_text("[]")
    assert read_records(tmp_path / "empty.json") == []


def test_malformed_json_array_names_line_and_column(tmp_path):
    p = tmp_path / "val.json"
    p.write_text('[\n  {"id": 1},\n  {"id": 2 "text": "x"}\n]')
    e = _kind(lambda: read_records(p))
    assert e.kind == "malformed_json" and e.path == str(p)
    assert "line 3, column 12" in str(e)
    # an irrecoverable array raises even in skip-and-report mode
    with pytest.raises(DataError): read_records(p, strict=False, report=IssueReport())


def test_malformed_jsonl_line_strict_and_skip(tmp_path):
    p = tmp_path / "val.jsonl"
    p.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "text": }\n{"id": 4}\n')
    e = _kind(lambda: read_records(p))
    assert (e.kind, e.record) == ("malformed_json", 2) and "line 3, column 19" in str(e) and "val.jsonl" in str(e)
    rep = IssueReport()
    assert read_indexed_records(p, strict=False, report=rep) == [(0, {"id": 1}), (1, {"id": 2}), (3, {"id": 4})]
    assert rep.counts() == {"skipped:malformed_json": 1} and rep.issues[0].record == 2


def test_non_object_records(tmp_path):
    p = tmp_path / "val.json"
    p.write_text('[{"id": 1}, "oops", {"id": 3}]')
    e = _kind(lambda: read_records(p))
    assert (e.kind, e.record) == ("not_a_record", 1) and "JSON str" in str(e)
    rep = IssueReport()
    assert read_records(p, strict=False, report=rep) == [{"id": 1}, {"id": 3}]
    assert rep.counts() == {"skipped:not_a_record": 1}


def test_missing_empty_and_foreign_files(tmp_path):
    assert _kind(lambda: read_records(tmp_path / "nope.json")).kind == "missing_file"
    (tmp_path / "e.json").write_text("  \n")
    assert _kind(lambda: read_records(tmp_path / "e.json")).kind == "empty_file"
    (tmp_path / "t.csv").write_text("id,text\n1,a\n")
    assert _kind(lambda: read_records(tmp_path / "t.csv")).kind == "malformed_json"
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe[\x00")
    assert _kind(lambda: read_records(tmp_path / "bin.json")).kind == "malformed_json"


def test_skip_mode_requires_a_report(tmp_path):
    p = tmp_path / "val.jsonl"
    p.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(ValueError, match="IssueReport"): read_records(p, strict=False)


# ---------------------------------------------------------------- images: failures
@pytest.fixture
def jpeg(tmp_path):
    p = tmp_path / "ok.jpg"
    Image.fromarray(_rgb(64, 64)).save(p, quality=90)
    return p


def test_missing_image(tmp_path):
    e = _kind(lambda: load_image(tmp_path / "gone.jpg", record="3 (id 9)"))
    assert (e.kind, e.record) == ("missing_file", "3 (id 9)") and "gone.jpg" in str(e)
    assert _kind(lambda: load_image(tmp_path)).kind == "missing_file"       # a directory is not an image


def test_truncated_jpeg_and_png(tmp_path, jpeg):
    (tmp_path / "t.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    assert _kind(lambda: load_image(tmp_path / "t.jpg")).kind == "truncated_image"
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "a.png")
    (tmp_path / "t.png").write_bytes((tmp_path / "a.png").read_bytes()[:3000])
    assert _kind(lambda: load_image(tmp_path / "t.png")).kind == "truncated_image"


def test_corrupt_jpeg_and_unreadable_files(tmp_path, jpeg):
    data = bytearray(jpeg.read_bytes())
    data[20:100] = bytes(80)                                   # wipe the quantisation tables
    (tmp_path / "c.jpg").write_bytes(bytes(data))
    assert _kind(lambda: load_image(tmp_path / "c.jpg")).kind == "corrupt_image"
    (tmp_path / "h.jpg").write_bytes(b"\xff\xd8\xff" + bytes(300))   # JPEG magic, garbage header
    assert _kind(lambda: load_image(tmp_path / "h.jpg")).kind == "unreadable_image"
    (tmp_path / "txt.jpg").write_text("not an image at all")
    assert _kind(lambda: load_image(tmp_path / "txt.jpg")).kind == "unreadable_image"
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "a.png")
    png = bytearray((tmp_path / "a.png").read_bytes())
    i = png.find(b"IDAT")
    png[i + 40:i + 80] = bytes(40)                             # damaged compressed data
    (tmp_path / "c.png").write_bytes(bytes(png))
    assert _kind(lambda: load_image(tmp_path / "c.png")).kind == "corrupt_image"


def test_decompression_bomb_guard(jpeg):
    e = _kind(lambda: load_image(jpeg, max_pixels=64 * 64 - 1))
    assert e.kind == "decompression_bomb" and "4096 pixels" in str(e)
    assert load_image(jpeg, max_pixels=64 * 64).orig_size == (64, 64)


def test_refuses_when_truncated_loading_is_enabled(jpeg, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"): load_image(jpeg)


# ---------------------------------------------------------------- images: repairs
def test_rgb_jpeg_needs_no_repair(jpeg):
    rep = IssueReport()
    li = load_image(jpeg, report=rep)
    assert (li.image.mode, li.orig_size, li.repairs, len(rep)) == ("RGB", (64, 64), (), 0)


@pytest.mark.parametrize("mode,kinds", [("L", ["grayscale"]), ("1", ["grayscale"]), ("CMYK", ["cmyk"]),
                                        ("LAB", ["colorspace"]), ("LA", ["alpha"]), ("RGBA", ["alpha"])])
def test_mode_repairs_are_counted(tmp_path, mode, kinds):
    im = Image.fromarray(_rgb(8, 8)).convert(mode)
    p = tmp_path / ("x.tif" if mode in ("CMYK", "LAB") else "x.png")
    im.save(p)
    rep = IssueReport()
    li = load_image(p, record=4, report=rep)
    assert li.image.mode == "RGB" and list(li.repairs) == kinds
    assert rep.counts() == {f"repaired:{k}": 1 for k in kinds} and all(i.record == 4 for i in rep.issues)


def test_grayscale_is_replicated(tmp_path):
    Image.fromarray(np.array([[0, 77, 255]], np.uint8)).save(tmp_path / "g.png")
    assert np.asarray(load_image(tmp_path / "g.png").image).tolist() == [[[0] * 3, [77] * 3, [255] * 3]]


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.fromarray(_rgb(8, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    p.save(tmp_path / "p.png")
    rep = IssueReport()
    li = load_image(tmp_path / "p.png", report=rep)
    assert np.array_equal(np.asarray(li.image), np.asarray(p.convert("RGB"))) and rep.counts() == {"repaired:palette": 1}
    p.save(tmp_path / "pt.png", transparency=0)
    li = load_image(tmp_path / "pt.png")
    assert li.repairs == ("palette", "alpha")
    transparent = np.asarray(p) == 0
    assert (np.asarray(li.image)[transparent] == 255).all()      # transparent palette entry composited on white


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (200, 100, 0, 255)          # opaque
    a[0, 1] = (0, 0, 0, 0)                # fully transparent black -> white
    a[1, 0] = (0, 0, 0, 128)              # half-transparent black -> mid grey
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png").image).astype(int)
    assert out[0, 0].tolist() == [200, 100, 0] and out[0, 1].tolist() == [255, 255, 255]
    assert abs(out[1, 0, 0] - 127) <= 1


def test_16bit_png_is_rescaled_not_clipped(tmp_path):
    vals = np.array([[0, 257, 1000, 32896, 65535]], np.uint16)
    Image.fromarray(vals).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im: assert im.mode.startswith("I")
    rep = IssueReport()
    li = load_image(tmp_path / "g16.png", report=rep)
    assert np.asarray(li.image)[0, :, 0].tolist() == [0, 1, 4, 128, 255]
    assert rep.counts() == {"repaired:16bit": 1, "repaired:grayscale": 1}
    # PIL's own convert clips instead (what the official loader would have done)
    with Image.open(tmp_path / "g16.png") as im: assert np.asarray(im.convert("L"))[0].tolist() == [0, 255, 255, 255, 255]


def test_32bit_and_float_images(tmp_path):
    Image.fromarray(np.array([[-100000, 0, 100000]], np.int32), mode="I").save(tmp_path / "i.tif")
    li = load_image(tmp_path / "i.tif")
    assert li.repairs == ("32bit", "grayscale") and np.asarray(li.image)[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), mode="F").save(tmp_path / "f.tif")
    li = load_image(tmp_path / "f.tif")
    assert li.repairs == ("float", "grayscale") and np.asarray(li.image)[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[np.nan, 1.0]], np.float32), mode="F").save(tmp_path / "nan.tif")
    assert _kind(lambda: load_image(tmp_path / "nan.tif")).kind == "corrupt_image"


def test_oversized_image_is_downscaled_keeping_orig_size(tmp_path):
    Image.fromarray(_rgb(300, 1000)).save(tmp_path / "big.png")
    rep = IssueReport()
    li = load_image(tmp_path / "big.png", report=rep, max_side=250)
    assert li.image.size == (250, 75) and li.orig_size == (1000, 300) and li.scale == (0.25, 0.25)
    assert rep.counts() == {"repaired:downscaled": 1} and "1000x300" in rep.issues[0].message
    assert load_image(tmp_path / "big.png", max_side=1000).repairs == ()        # not above the limit


def test_exif_orientation_is_not_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6                                                       # "rotate 90° CW to display"
    Image.fromarray(_rgb(20, 50)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    li = load_image(tmp_path / "r.jpg")
    assert li.orig_size == (50, 20) and li.image.size == (50, 20)         # stored frame, like Image.open().convert('RGB')


def test_load_mask_matches_convert_L(tmp_path):
    m = np.zeros((4, 4, 3), np.uint8)
    m[0, 0] = (0, 0, 255)
    m[1, 1] = (255, 255, 255)
    Image.fromarray(m).save(tmp_path / "m.png")
    assert np.array_equal(np.asarray(load_mask(tmp_path / "m.png")), np.asarray(Image.fromarray(m).convert("L")))
    assert _kind(lambda: load_mask(tmp_path / "nope.png", record=2)).kind == "missing_file"


# ---------------------------------------------------------------- tensors and issues
def test_to_normalized_tensor_matches_torchvision():
    from torchvision import transforms
    arr = _rgb(5, 7)
    ref = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])(Image.fromarray(arr))
    assert torch.allclose(to_normalized_tensor(arr), ref, atol=1e-6)


def test_batch_issues_collects_skips_and_repairs():
    from forgrepro.core import Issue
    from forgrepro.data.batch import MMTTBatch
    skip = Issue("missing_file", "a.jpg", 3, "gone", "skipped")
    rep = Issue("grayscale", "b.png", 4, "gray", "repaired")
    b = MMTTBatch(image=torch.zeros(1, 3, 2, 2), mask=torch.zeros(1, 1, 2, 2), multilabel=torch.zeros(1, 21),
                  meta=[{"caption": "x", "repairs": [rep]}], skipped=[Skipped(skip).issue])
    report = IssueReport()
    report.extend(batch_issues(b))
    assert report.counts() == {"repaired:grayscale": 1, "skipped:missing_file": 1}
