"""forgrepro.predict: a DGM4 method on single image-caption pairs, its visual explanations, upload validation, ForgeryTalker wrapper."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from forgrepro.core import DataError
from forgrepro.data.dgm4 import MULTI_LABEL_CLASSES, DGM4Dataset
from forgrepro.data.text import bert_tokenizer
from forgrepro.experiment import ExperimentSpec, build_task
from forgrepro.predict import (DGM4Predictor, ForgeryTalkerPredictor, explained_forward, face_crop_box, grad_cam,
                               normalise_map, prediction_batch, token_grid, validate_caption, validate_image, vision_block,
                               word_scores)

torch.set_num_threads(1)


class FixedFaces:
    "A face detector returning fixed boxes (the real MTCNN is exercised in test_demo)."
    def __init__(self, boxes): self.boxes, self.calls = boxes, 0
    def __call__(self, image):
        self.calls += 1
        return list(self.boxes)


def _image(w=160, h=90, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8))


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO(); im.save(buf, "JPEG", quality=90); return buf.getvalue()


@pytest.fixture(scope="module")
def tok():
    return bert_tokenizer()


@pytest.fixture(scope="module", params=["hammer", "asap", "m4blip"])
def random_predictor(request, tok):
    torch.manual_seed(0)
    task = build_task(ExperimentSpec(request.param))
    if request.param == "m4blip":   # random weights on purpose here; M4-BLIP says so when built without M4BlipWeights
        with pytest.warns(UserWarning, match="initialised RANDOMLY"): model = task.build_model()
    else: model = task.build_model()
    return DGM4Predictor(request.param, task, model, tokenizer=tok, face_detector=FixedFaces([(20, 10, 60, 70)]))


def test_prediction_fields(random_predictor):
    p = random_predictor.predict(_image(), "Angela Merkel meets students in $5 shirts")
    assert p.image_size == (160, 90) and 0 <= p.p_fake <= 1 and p.is_fake == (p.p_fake > 0.5)
    assert list(p.type_probs) == list(MULTI_LABEL_CLASSES) and all(0 <= v <= 1 for v in p.type_probs.values())
    assert set(p.types) == {c for c, v in p.type_probs.items() if v >= 0.5}
    x1, y1, x2, y2 = p.box
    assert 0 <= x1 <= x2 <= 160 and 0 <= y1 <= y2 <= 90
    assert p.words == ("angela", "merkel", "meets", "students", "in", "$5", "shirts")
    assert len(p.word_fake) == len(p.word_probs) == len(p.words)
    assert not any(np.isnan(p.word_probs))
    assert p.faces == ((20.0, 10.0, 60.0, 70.0),) and not p.no_face_found and p.elapsed_ms > 0
    if random_predictor.method == "m4blip": assert "p_fake_llm" in p.extra


def test_box_in_original_pixels(random_predictor):
    "The model's normalised box maps onto the original (non-square) image, whatever its size."
    a = random_predictor.predict(_image(160, 90), "a caption", faces=[(20, 10, 60, 70)])
    b = random_predictor.predict(_image(160, 90).resize((320, 180)), "a caption", faces=[(40, 20, 120, 140)])
    assert b.image_size == (320, 180)
    # same resized input (up to resampling), so the same normalised box scaled by 2
    assert np.allclose(np.array(b.box) / 2, a.box, atol=3)


def test_word_flags_follow_token_logits(tok):
    text = "obama visits $5 merkel"
    lt = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0], [0, 3.0], [1.0, 0], [1.0, 0]])  # obama|visits|$|5|mer|##kel
    words, probs, flags = word_scores(tok, text, lt)
    assert words == ["obama", "visits", "$5", "merkel"] and flags.tolist() == [False, True, True, False]
    assert probs[2] == pytest.approx(torch.tensor([0, 3.0]).softmax(0)[1].item())


def test_same_batch_as_dataset(random_predictor, tmp_path):
    "The predictor feeds the model what the test split of DGM4Dataset gives for the same image and caption."
    im = _image(120, 100, seed=3)
    (tmp_path / "DGM4/metadata").mkdir(parents=True); (tmp_path / "DGM4/origin").mkdir()
    im.save(tmp_path / "DGM4/origin/a.png")
    (tmp_path / "DGM4/metadata/test.json").write_text(json.dumps([{
        "id": 1, "image": "DGM4/origin/a.png", "text": "The Minister, smiling, in Paris!", "fake_cls": "orig",
        "fake_image_box": None, "fake_text_pos": [], "mtcnn_boxes": [[10, 10, 50, 60]]}]))
    n = random_predictor.needs
    ref = random_predictor.collate([DGM4Dataset(tmp_path, "test", image_res=n.image_res, face_size=n.face_size,
                                                max_faces=n.max_faces)[0]])
    got = prediction_batch(random_predictor, im, "The Minister, smiling, in Paris!", [(10, 10, 50, 60)])
    for k in ("image", "input_ids", "attention_mask", "faces", "face_mask", "face_boxes"):
        a, b = getattr(got, k), getattr(ref, k)
        assert (a is None and b is None) or torch.equal(a, b), k


def test_no_face_fallback(random_predictor):
    p = random_predictor.predict(_image(), "a caption", faces=[])
    assert p.no_face_found and p.faces == ((0.0, 0.0, 160.0, 90.0),)


def test_detector_used_when_faces_not_given(tok):
    task = build_task(ExperimentSpec("hammer"))
    det = FixedFaces([(1, 2, 30, 40)])
    p = DGM4Predictor("hammer", task, task.build_model(), tokenizer=tok, face_detector=det).predict(_image(), "a b")
    assert det.calls == 1 and p.faces == ((1.0, 2.0, 30.0, 40.0),)


@pytest.mark.parametrize("make,kind", [
    (lambda: Image.open(io.BytesIO(_jpeg(_image())[:len(_jpeg(_image())) // 2])), "truncated_image"),
    (lambda: b"not an image", "unreadable_image"),
    (lambda: "/etc/passwd", "unreadable_image"),
    (lambda: None, "no_image"),
    (lambda: Image.new("RGB", (5000, 4000)), "too_large"),
    (lambda: Image.new("RGB", (4097, 10)), "too_large"),
])
def test_bad_images(make, kind):
    with pytest.raises(DataError) as e: validate_image(make())
    assert e.value.kind == kind


@pytest.mark.parametrize("caption", ["", "   ", ".,;!", None, 12])
def test_bad_captions(random_predictor, caption):
    with pytest.raises(DataError, match="empty caption"): random_predictor.predict(_image(), caption, faces=[])


def test_rgba_upload_like_stored_files():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))                  # fully transparent red
    assert np.asarray(validate_image(rgba))[0, 0].tolist() == [255, 255, 255]   # composited on white, as load_image


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    synth = pytest.importorskip("forgrepro.data.synth_dgm4")
    from forgrepro.experiment import run_experiment
    d = tmp_path_factory.mktemp("run")
    root = synth.make_synth_dgm4(d / "data", n_train=32, n_val=8, n_test=8, workers=1)
    spec = ExperimentSpec("hammer", "tiny", "full", train={"epochs": 1, "batch_size": 16, "max_steps": 1, "warmup_steps": 0,
                                                        "vocab": "words"})   # the opt-in word vocabulary: reloaded from the run
    with pytest.warns(UserWarning, match=r"metric .* is nan"):   # 8 test records: per-type subsets are empty
        run_experiment(spec, root, d / "run", device="cpu")
    return d


def test_trained_checkpoint(trained_run, tok):
    from forgrepro.data.dgm4 import read_dgm4, resolve_dgm4_image
    pred = DGM4Predictor.from_run(trained_run / "run", face_detector=FixedFaces([]))
    vocab = (trained_run / "run/tokenizer/vocab.txt").read_text().splitlines()   # a word-vocabulary row: its own words
    assert pred.tokenizer.get_vocab() == {t: i for i, t in enumerate(vocab)} and len(vocab) < len(tok)
    with pytest.raises(ValueError, match="pass no tokenizer"):   # bert ids would index past the run's embeddings
        DGM4Predictor.from_run(trained_run / "run", tokenizer=tok, face_detector=FixedFaces([]))
    data = trained_run / "data"
    r = read_dgm4(data / "DGM4/metadata/test.json")[0]
    with Image.open(resolve_dgm4_image(data, r)) as im: p, size = pred.predict(im, r.text, faces=r.mtcnn_boxes), im.size
    assert pred.method == "hammer" and pred.name == "HAMMER" and not pred.model.training
    assert len(p.words) == len(r.text.split()) and p.image_size == size


def test_forgerytalker_wrapper_resizes_mask():
    def explain(model, image):
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        m = np.zeros((4, 4), bool); m[:2, :2] = True
        return {"regions": ["nose"], "region_probs": {"nose": 0.8}, "mask": m, "explanation": "nose edited"}
    p = ForgeryTalkerPredictor(object(), explain).predict(_image(160, 90))
    assert p.mask.shape == (90, 160) and p.mask[:45, :80].all() and not p.mask[45:, :].any()
    assert p.regions == ("nose",) and p.region_probs == {"nose": 0.8} and p.explanation == "nose edited"


# ------------------------------------------------------------------ visual explanations
def test_grad_cam_hand_computed():
    "α_c = mean_n ∂y/∂A_nc; map = ReLU(Σ_c α_c A_nc), worked out by hand for N = 4 patches, C = 3 channels."
    A = torch.tensor([[[2., 0., 1.], [0., 1., -1.], [1., 1., 1.], [-1., 2., 0.]]])
    G = torch.tensor([[[0., 2., 1.], [2., 0., 1.], [0., 2., 1.], [2., 0., 1.]]])      # α = (1, 1, 1)
    assert grad_cam(A, G).tolist() == [[3., 0., 3., 1.]]
    G2 = torch.tensor([[[4., 0., 0.], [0., 0., 0.], [0., 0., 0.], [0., 0., -4.]]])    # α = (1, 0, -1)
    assert grad_cam(A, G2).tolist() == [[1., 1., 0., 0.]]
    assert normalise_map(token_grid(grad_cam(A, G)[0])).tolist() == [[1., 0.], [1., 1 / 3]]


class _LinearReadout(torch.nn.Module):
    "A 'vision block' (a linear map) whose patch tokens are read out linearly: fake log-odds y = Σ_n v_n (B_n · w)."
    def __init__(self, v, w, W):
        super().__init__()
        self.visual_encoder = torch.nn.Module(); self.visual_encoder.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 3, bias=False)])
        self.visual_encoder.blocks[0].weight.data = W
        self.v, self.w = v, w
    def forward(self, x):
        b = self.visual_encoder.blocks[-1](x)
        y = (self.v * (b[:, 1:] @ self.w)).sum(-1)
        return type("Out", (), {"logits_bin": torch.stack([-y / 2, y / 2], -1)})()


def test_grad_cam_through_hooks_on_a_linear_model():
    "∂y/∂B_n = v_n w, so α = mean(v)·w and the map is ReLU(mean(v) · B_n·w): known in closed form."
    torch.manual_seed(1)
    v, w, W, x = torch.tensor([0., 3., 1., 0.]), torch.tensor([1., 2., -1.]), torch.randn(3, 3), torch.randn(1, 5, 3)
    model = _LinearReadout(v, w, W)
    out, ex = explained_forward(model, x, vision_block(model))
    B = x[0, 1:] @ W.T
    want = torch.relu(v.mean() * (B @ w))
    np.testing.assert_allclose(ex.gradcam, normalise_map(want.reshape(2, 2).numpy()), atol=1e-6)
    assert ex.score == pytest.approx(float((out.logits_bin[0, 1] - out.logits_bin[0, 0]).detach()), abs=1e-6)
    assert ex.attention is None                                             # no localiser on this model


def test_explain_keeps_the_answer(random_predictor):
    "explain=True gives the same prediction, plus maps on the method's patch grid."
    img = _image(120, 90, seed=5)
    a = random_predictor.predict(img, "Angela Merkel meets students in Paris", faces=[(20, 10, 60, 70)])
    b = random_predictor.predict(img, "Angela Merkel meets students in Paris", faces=[(20, 10, 60, 70)], explain=True)
    assert a.explanation is None and b.explanation is not None
    assert b.p_fake == pytest.approx(a.p_fake, abs=1e-5) and b.types == a.types and b.word_fake == a.word_fake
    np.testing.assert_allclose(b.box, a.box, atol=1e-3)
    g = random_predictor.needs.image_res // random_predictor.task.cfg.vision.patch_size
    assert b.explanation.gradcam.shape == (g, g) and b.explanation.gradcam.max() == pytest.approx(1.0)
    assert b.explanation.attention.shape == (g, g) and b.explanation.attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert b.explanation.score == pytest.approx(np.log(b.p_fake / (1 - b.p_fake)), abs=1e-4)


@pytest.mark.parametrize("method", ["hammer", "asap"])
def test_query_attention_is_the_localisers(method, tok):
    "The attention map is that of `cls_token_local` over the patches the aggregator really reads (recomputed by hand)."
    torch.manual_seed(0)
    task = build_task(ExperimentSpec(method))
    pred = DGM4Predictor(method, task, task.build_model(), tokenizer=tok, face_detector=FixedFaces([]))
    img = _image(100, 100, seed=2)
    p = pred.predict(img, "a man at a rally in London", faces=[], explain=True)
    m, batch = pred.model, prediction_batch(pred, img, "a man at a rally in London")
    loc = m.localizer
    with torch.no_grad():
        image = m.visual_encoder(batch.image)
        text = m.text_encoder.encode_text(batch.input_ids, batch.attention_mask)
        tokens = loc.it_cross_attn(image, text, batch.attention_mask == 0, loc.norm_layer_it_cross_atten)
        k, q = loc.norm_layer_aggr(tokens[:, 1:]), loc.norm_layer_aggr(loc.cls_token_local)
        w = loc.aggregator(q, k, k, need_weights=True)[1][0, 0]
    np.testing.assert_allclose(p.explanation.attention, w.reshape(p.explanation.attention.shape).numpy(), atol=1e-6)


def test_forgerytalker_reads_face_crops():
    "One explanation per face crop (largest faces, left to right); masks placed back into the photo."
    calls = []
    def explain(model, image):
        calls.append(image.size)
        return {"regions": ["eye"], "region_probs": {"eye": 0.6}, "mask": np.ones((8, 8), bool), "explanation": "eye"}
    pred = ForgeryTalkerPredictor(object(), explain, max_faces=2)
    fts = pred.predict_faces(_image(200, 100), [(150, 10, 190, 60), (10, 10, 30, 30), (60, 20, 110, 70)])
    assert [f.crop for f in fts] == [face_crop_box((60, 20, 110, 70), (200, 100)), face_crop_box((150, 10, 190, 60), (200, 100))]
    assert calls == [(75, 75), (75, 75)]                                    # 1.5 x the longest side (50)
    for f in fts:
        x1, y1, x2, y2 = f.crop
        assert f.mask.shape == (100, 200) and f.mask[y1:y2, x1:x2].all() and f.mask.sum() == (x2 - x1) * (y2 - y1)


def test_explain_refuses_the_loader_tuple():
    "Issue 15: the demo passed load_forgerytalker's (model, llm_tokenizer, qformer_tokenizer) as the model."
    from forgrepro.predict import explain
    with pytest.raises(TypeError, match="load_forgerytalker returns"):
        explain((torch.nn.Linear(1, 1), None, None), _image())
