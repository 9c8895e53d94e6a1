"""The docs site (`make docs` = scripts/build_docs.py): nbdev's processing of the notebooks rendered to HTML, one page
per module. Here the index and one API page (forgrepro.core) are built into a temporary folder and opened in headless
Chromium: the index lists the module pages, the API page shows its title and the rendered `show_doc` of a function."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> tuple[str, str] | None:
    b = shutil.which("chromium") or shutil.which("chromium-browser")
    d = shutil.which("chromedriver")
    return (b, d) if b and d else None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_docs.py"), "--out", str(out / "site"),
                          "--cache", str(out / "proc"), "--only", "00_core", "--workers", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return out / "site"


def test_build_writes_a_page_per_module(site):
    assert sorted(p.name for p in site.glob("*.html")) == ["core.html", "index.html"]
    core = (site / "core.html").read_text()
    assert 'id="override"' in core and "dotted-key overrides" in core     # show_doc of forgrepro.core.override
    assert '{target="_blank"' not in core and "#| export" not in core    # Quarto attributes and directives gone


@pytest.mark.skipif(_chromium() is None, reason="Debian chromium + chromium-driver not installed (make browser)")
def test_site_renders_in_headless_chromium(site):
    pytest.importorskip("selenium", reason="selenium not installed")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    browser, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
              "--disable-gpu", "--window-size=1400,1800"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
    try:
        drv.get((site / "index.html").as_uri())
        assert drv.title == "forgrepro"
        assert drv.find_element(By.TAG_NAME, "h1").text.strip().startswith("forgrepro")
        links = {a.text: a.get_attribute("href") for a in drv.find_elements(By.CSS_SELECTOR, "#forgrepro-nav li a")}
        assert links.get("core", "").endswith("/core.html"), links
        drv.get(links["core"])                                              # follow the sidebar to the API page
        assert drv.title.startswith("core") and drv.find_element(By.TAG_NAME, "h1").text.strip().startswith("core")
        assert drv.find_element(By.ID, "override").is_displayed()           # show_doc's heading for the function ...
        body = " ".join(drv.find_element(By.TAG_NAME, "body").text.split())
        assert re.search(r"def override ?\( ?cfg", body), body[:3000]   # ... its signature ...
        assert "Copy of frozen dataclass cfg with dotted-key overrides applied" in body       # ... and its docstring
        assert drv.execute_script("return document.querySelectorAll('.jp-Cell').length") > 10
    finally:
        drv.quit()
