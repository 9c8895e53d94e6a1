"""forgrepro.data.faces: offline MTCNN / Haar detection, the counted whole-image fallback, and crops."""
import socket
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from forgrepro.core import IssueReport
from forgrepro.data.faces import (FaceDetector, HaarFaceDetector, MTCNNFaceDetector, crop_faces,
                                  detect_faces_or_whole, select_faces)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def hopper():
    cbook = pytest.importorskip("matplotlib.cbook")
    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except Exception:  # pragma: no cover - matplotlib without its sample data
        pytest.skip("matplotlib sample photo grace_hopper.jpg not available")
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def mtcnn():
    """Built with every network path blocked: the shipped weights must be enough."""
    def refuse(*args, **kwargs):
        raise AssertionError("MTCNNFaceDetector tried to use the network")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(urllib.request, "urlopen", refuse)
        mp.setattr(torch.hub, "download_url_to_file", refuse)
        mp.setattr(socket.socket, "connect", refuse)
        det = MTCNNFaceDetector(device="cpu")
    return det


def _blank(size=(200, 160)):
    return Image.new("RGB", size, (127, 127, 127))


def test_mtcnn_is_a_face_detector_and_finds_the_face(mtcnn, hopper):
    assert isinstance(mtcnn, FaceDetector)
    faces = mtcnn(hopper)
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0]
    w, h = hopper.size
    # the face is in the upper half, horizontally central, and a sizeable part of the portrait
    assert 0 <= x1 < w / 2 < x2 <= w and 0 <= y1 < y2 < 0.8 * h and (x2 - x1) * (y2 - y1) > 0.1 * w * h


def test_mtcnn_batch_mixed_sizes_keeps_order(mtcnn, hopper):
    small = hopper.resize((256, 300))
    out = mtcnn.detect_batch([hopper, _blank(), small, _blank((64, 64)), hopper])
    assert [len(f) for f in out] == [1, 0, 1, 0, 1]
    assert out[0] == out[4]
    np.testing.assert_allclose(np.array(out[2][0]) * 2, out[0][0], atol=20)  # same face at half scale


def test_mtcnn_keep_all_false_keeps_the_largest(hopper):
    two = Image.new("RGB", (1100, 600), (255, 255, 255))
    two.paste(hopper, (0, 0)); two.paste(hopper.resize((256, 300)), (700, 150))
    all_faces = MTCNNFaceDetector(keep_all=True)(two)
    assert len(all_faces) == 2 and all_faces == select_faces(all_faces)
    largest = MTCNNFaceDetector(keep_all=False)(two)
    assert largest == all_faces[:1]


def test_blank_image_falls_back_to_whole_image_and_is_counted(mtcnn):
    report = IssueReport()
    assert mtcnn(_blank()) == []
    boxes = detect_faces_or_whole(_blank(), mtcnn, report, record="id-3")
    assert boxes == [(0.0, 0.0, 200.0, 160.0)]
    assert report.counts() == {"repaired:no_face": 1} and report.issues[0].record == "id-3"
    # no report given: the fallback still applies
    assert detect_faces_or_whole(_blank(), mtcnn) == [(0.0, 0.0, 200.0, 160.0)]


def test_fallback_names_the_file(tmp_path, mtcnn):
    path = tmp_path / "blank.png"
    _blank().save(path)
    report = IssueReport()
    with Image.open(path) as im:
        detect_faces_or_whole(im, mtcnn, report, record=0)
    assert report.issues[0].path == str(path)


def test_haar_detector(hopper):
    haar = HaarFaceDetector()
    assert isinstance(haar, FaceDetector)
    assert len(haar(hopper)) == 1 and haar(_blank()) == []
    with pytest.raises(FileNotFoundError):
        HaarFaceDetector("missing.xml")


def test_crop_faces_shapes_order_and_values(mtcnn, hopper):
    boxes = detect_faces_or_whole(hopper, mtcnn)
    crops = crop_faces(hopper, boxes, size=96, margin=0.1)
    assert crops.shape == (1, 3, 96, 96) and crops.dtype == torch.float32
    assert 0 <= crops.min() and crops.max() <= 1
    normed = crop_faces(hopper, boxes, size=96, margin=0.1, normalize=True)
    torch.testing.assert_close(normed[0, 0], (crops[0, 0] - 0.485) / 0.229)
    # largest first, capped at max_faces
    arr = np.zeros((50, 50, 3), np.uint8)
    arr[:10, :10] = 50; arr[20:50, 20:50] = 200
    got = crop_faces(Image.fromarray(arr), [(0, 0, 10, 10), (20, 20, 50, 50)], size=5, max_faces=1)
    torch.testing.assert_close(got, torch.full((1, 3, 5, 5), 200 / 255))


def test_crop_margin_is_clipped_to_image():
    arr = np.full((40, 40, 3), 90, np.uint8)
    crops = crop_faces(Image.fromarray(arr), [(0, 0, 40, 40)], size=8, margin=0.5)  # grows beyond every edge
    torch.testing.assert_close(crops, torch.full((1, 3, 8, 8), 90 / 255))  # no zero padding leaks in
