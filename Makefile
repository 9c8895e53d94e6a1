# forgrepro — the two commands a fresh machine needs:
#   make reproduce   set up .venv, then regenerate every paper table on the built-in synthetic data
#   make test        set up .venv, then run every test (nbdev_test included), ending in pytest's summary
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.forgrepro-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export PYTHONHASHSEED := 0

.PHONY: setup browser test reproduce demo screenshot export clean-nbs check-nbs bench lock

setup: $(STAMP)

# torch/torchvision first (this machine's local wheels), then the package with every pinned dependency.
$(STAMP): settings.ini setup.py requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c requirements-lock.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (forgrepro)" >/dev/null
	touch $(STAMP)

# Headless Chromium + driver for the demo's end-to-end test (Debian packages; the test skips without them).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver \
	  || echo "WARNING: could not install chromium/chromium-driver; the browser test will be skipped"; \
	fi

test: setup browser
	$(PY) -m pytest tests -ra

# Every paper table on the synthetic twins (tiny models, CPU); finished rows are reused, REPRO_ARGS=--force reruns them.
# Real data: $(VENV)/bin/forgrepro reproduce --data /path/to/DGM4 --mmtt /path/to/MMTT --scale paper --device cuda
reproduce: setup
	$(VENV)/bin/forgrepro reproduce --data synthetic --scale tiny --device cpu --jobs 2 --threads 1 --dataset-card $(REPRO_ARGS)

demo: setup
	$(VENV)/bin/forgrepro demo

# The README screenshot: the four demo rows (reused when runs/ holds them for this code; the tables go to a temporary
# folder), then the headless-Chromium test serving them (tests/test_demo.py).
screenshot: setup browser
	$(VENV)/bin/forgrepro reproduce hammer_t2 asap_main m4blip_main forgerytalker_main --data synthetic --scale tiny \
	  --device cpu --jobs 2 --threads 1 --no-figures --no-baselines --reports $$(mktemp -d)
	FORGREPRO_SCREENSHOT=reports/demo_screenshot.png $(PY) -m pytest tests/test_demo.py -k chromium -q

bench: setup
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

export: setup
	$(VENV)/bin/nbdev_export

clean-nbs: setup
	$(VENV)/bin/nbdev_clean

# Fails when a notebook is not exported or not clean (the same check runs inside `make test`).
check-nbs: setup
	$(PY) -m pytest tests/test_hygiene.py -q

# Refresh the pinned versions after changing settings.ini (run in a working .venv).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e' > requirements-lock.txt
