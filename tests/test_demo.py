"""forgrepro.demo: the app's API through gradio_client, and an end-to-end run in headless Chromium."""
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forgrepro.data.text import bert_tokenizer
from forgrepro.experiment import ExperimentSpec, build_task
from forgrepro.predict import DGM4Predictor

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("ex")
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8))
    im.save(d / "example.png")
    return str(d / "example.png"), "President Obama greets crowds in Berlin"


@pytest.fixture(scope="module")
def app(example):
    import gradio as gr
    from forgrepro.data.faces import MTCNNFaceDetector
    from forgrepro.demo import MAX_FILE_SIZE, build_demo
    tok, det = bert_tokenizer(), MTCNNFaceDetector()          # the real detector (shipped weights)
    preds = {}
    for m in ("hammer", "asap"):
        torch.manual_seed(0)
        task = build_task(ExperimentSpec(m))
        preds[DGM4Predictor(m, task, task.build_model()).name] = DGM4Predictor(m, task, task.build_model(), tokenizer=tok, face_detector=det)
    demo = build_demo(preds, examples=[example], synthetic=True, face_detector=det)
    port = _free_port()
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, max_file_size=MAX_FILE_SIZE,
                allowed_paths=[str(Path(example[0]).parent)], quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_not_launched_on_import_or_build():
    import forgrepro.demo as d
    from forgrepro.demo import build_demo
    blocks = build_demo({}, synthetic=False)
    assert not getattr(blocks, "is_running", False) and getattr(blocks, "server", None) is None


def test_api_verdict(app, example):
    from gradio_client import Client, handle_file
    c = Client(app, verbose=False)
    status, table, overlay, w0, w1, ft, mask = c.predict(handle_file(example[0]), example[1], api_name="/analyse")
    assert status.startswith("✅ Analysed with 2 method(s)")
    assert "| HAMMER | **" in table and "| ASAP | **" in table and "P(fake)" in table
    assert Path(overlay).is_file() and Image.open(overlay).size == (160, 120)
    words = [d["token"].strip() for d in w0]
    assert words == ["president", "obama", "greets", "crowds", "in", "berlin"]
    assert "not available" in ft and mask is None


@pytest.mark.parametrize("content,caption,message", [
    (b"this is not an image", "a caption", "cannot read the upload as an image"),
    (None, "a caption", "truncated"),
    ("png", "   ", "empty caption"),
])
def test_api_bad_uploads(app, tmp_path, example, content, caption, message):
    from gradio_client import Client, handle_file
    if content is None:  # a truncated JPEG
        f = tmp_path / "cut.jpg"
        Image.open(example[0]).convert("RGB").save(f, "JPEG"); data = f.read_bytes(); f.write_bytes(data[: len(data) // 2])
    elif content == "png": f = Path(example[0])
    else: f = tmp_path / "fake.png"; f.write_bytes(content)
    c = Client(app, verbose=False)
    status, table, overlay, *_ = c.predict(handle_file(str(f)), caption, api_name="/analyse")
    assert status.startswith("❌") and message in status and overlay is None
    # the server is still alive
    assert c.predict(handle_file(example[0]), example[1], api_name="/analyse")[0].startswith("✅")


def test_upload_size_limit(app, tmp_path, example):
    from gradio_client import Client, handle_file
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * (11 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)size|large|413"):
        Client(app, verbose=False).predict(handle_file(str(big)), "a caption", api_name="/analyse")


def _chromium() -> tuple[str, str] | None:
    b = shutil.which("chromium") or shutil.which("chromium-browser")
    d = shutil.which("chromedriver")
    return (b, d) if b and d else None


@pytest.mark.skipif(_chromium() is None, reason="Debian chromium + chromium-driver not installed (apt-get install -y chromium chromium-driver)")
def test_end_to_end_chromium(app, example, tmp_path):
    selenium = pytest.importorskip("selenium", reason="selenium not installed")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    browser, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
              "--disable-gpu", "--window-size=1400,1800"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
    try:
        drv.get(app)
        wait = WebDriverWait(drv, 60)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]")))
        assert "Synthetic-data models" in drv.find_element(By.ID, "synthetic-banner").text
        drv.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(example[0])
        box = drv.find_element(By.CSS_SELECTOR, "#caption textarea")
        box.clear(); box.send_keys(example[1])
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#image img")))
        drv.find_element(By.ID, "submit").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "Analysed with 2 method(s)"))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#overlay img")))
        assert "HAMMER" in drv.find_element(By.ID, "verdicts").text and "P(fake)" in drv.find_element(By.ID, "verdicts").text
        src = drv.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src")
        assert src and ("/file=" in src or "/gradio_api/file" in src or src.startswith("data:"))
        # the tracked reports/demo_screenshot.png is refreshed only on request (FORGREPRO_SCREENSHOT=path)
        shot = Path(os.environ.get("FORGREPRO_SCREENSHOT") or tmp_path / "demo_screenshot.png")
        assert drv.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        drv.quit()
