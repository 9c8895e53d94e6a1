"""Golden fixtures from the official HAMMER, ASAP and ForgeryTalker code, for `tests/test_official_equivalence.py`.

    python scripts/make_official_fixtures.py --hammer /path/MultiModal-DeepFake --asap /path/ASAP \
        [--forgerytalker /path/Generating-Attribution-Reports] --out tests/golden/official/

Each option is optional; each names a checkout of the official repository (never copied into this project). The
official code is imported from the checkout and runs unmodified (see the generator modules for the few
environment-only patches). The tests need only the committed fixtures, not the official code.

HAMMER / ASAP (`scripts/official_fixtures/dgm4.py`) were generated with
`rshaojimmy/MultiModal-DeepFake@33fc04f3a1f550f923848737c864eea32556f699` and
`CriliasMiller/ASAP@37cd328d7ed114e704fbbda82bb8474a2abd9293`, in this environment (CPython 3.11.7, x86_64):

    python3.11 -m venv venv-dgm4 && . venv-dgm4/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1
    pip install --no-deps transformers==4.8.1 timm==0.4.12
    pip install huggingface-hub==0.0.12 filelock "numpy<2" packaging pyyaml regex requests sacremoses tqdm pillow \
        "opencv-python-headless<4.11" scipy scikit-learn ruamel.yaml safetensors

(this exact recipe, in a fresh venv, reproduced the committed fixtures tensor for tensor; safetensors writes its
header in a varying order, so the files' bytes differ between runs). Resolved: numpy 1.26.4,
opencv-python-headless 4.10.0.84, huggingface-hub 0.0.12, safetensors 0.8.0, PyYAML 6.0.4. Notes:
- torch 2.14.1 + torchvision 0.29.1 (the pair `make test` installs) instead of the local CPU torch 2.13.0: timm
  0.4.12 imports torchvision, and PyPI's torchvision 0.28.0 does not load beside that CPU wheel
  ("operator torchvision::nms does not exist").
- transformers 4.8.1 with `--no-deps`: it pins tokenizers<0.11, which has no Python 3.11 wheel and does not build
  offline (its Rust build fetches git dependencies). No tokenizer is used: token ids are fed directly.
- opencv-python-headless < 4.11 (ASAP's `dataset/__init__.py` imports cv2; 4.11+ wants numpy 2).

ForgeryTalker (`scripts/official_fixtures/forgerytalker.py`, `make_forgerytalker_fixtures(checkout, out, bert_vocab)`)
needs a different environment (transformers 4.33.2, the LAVIS stack; its module docstring gives the recipe), so it
runs as a separate invocation in that venv:

    python scripts/make_official_fixtures.py --forgerytalker /path/Generating-Attribution-Reports \
        --bert-vocab /path/bert-base-uncased/vocab.txt --out tests/golden/official/
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hammer", type=Path, help="checkout of rshaojimmy/MultiModal-DeepFake")
    ap.add_argument("--asap", type=Path, help="checkout of CriliasMiller/ASAP")
    ap.add_argument("--forgerytalker", type=Path, help="checkout of NattyLianJc/Generating-Attribution-Reports")
    ap.add_argument("--bert-vocab", type=Path, default=None,
                    help="ForgeryTalker: bert-base-uncased vocab.txt (or $FORGREPRO_BERT)")
    ap.add_argument("--out", type=Path, default=Path("tests/golden/official"))
    args = ap.parse_args(argv)
    if not (args.hammer or args.asap or args.forgerytalker): ap.error("name at least one official checkout")
    if args.forgerytalker and (args.hammer or args.asap):
        ap.error("HAMMER/ASAP (transformers 4.8.1) and ForgeryTalker (transformers 4.33.2) need different environments: "
                 "run them as two invocations, each in its venv (see this script's docstring)")
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if args.hammer or args.asap:
        dgm4 = importlib.import_module("official_fixtures.dgm4")
        if args.hammer: written += dgm4.make_hammer_fixtures(args.hammer, args.out)
        if args.asap: written += dgm4.make_asap_fixtures(args.asap, args.out)
    if args.forgerytalker:
        try:
            ft = importlib.import_module("official_fixtures.forgerytalker")
        except ModuleNotFoundError as e:
            if e.name != "official_fixtures.forgerytalker": raise
            print("ForgeryTalker: scripts/official_fixtures/forgerytalker.py is missing; no ForgeryTalker fixtures written",
                  file=sys.stderr)
            return 1
        written += list(ft.make_forgerytalker_fixtures(args.forgerytalker, args.out, args.bert_vocab) or [])
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {len(written)} files; {args.out} now holds {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
