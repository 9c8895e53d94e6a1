"""Generation speed of the default synthetic sets.

Generates the default DGM4 and MMTT twins (the parameters `make_synth_dgm4` / `make_synth_mmtt` use when called
without overrides) into a temporary folder and prints, per set: records, image files written, wall seconds,
images per second and the process CPU seconds (parent + workers). Target: both default sets in under a minute
of wall time on 2 cores.

    python benchmarks/bench_synth.py               # default worker count (min(2, cpu count))
    python benchmarks/bench_synth.py --workers 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    "CPU seconds of this process and its finished children."
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--workers', type=int, default=None)
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args()
    from forgrepro.data.synth_dgm4 import make_synth_dgm4
    from forgrepro.data.synth_mmtt import make_synth_mmtt
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, workers {args.workers or 'default'}")
    total_wall, total_images = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn, pattern in (('DGM4', make_synth_dgm4, 'DGM4/**/*.jpg'), ('MMTT', make_synth_mmtt, 'dataset/dataset/**/images/*')):
            out = Path(tmp) / name.lower()
            cpu0, t0 = _cpu(), time.perf_counter()
            fn(out, seed=args.seed, workers=args.workers)
            wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
            manifest = json.loads((out / 'synth_manifest.json').read_text())
            images = sum(1 for _ in out.glob(pattern))
            records = sum(v['records'] for v in (manifest['stats'] if 'stats' in manifest else manifest['counts']).values())
            total_wall += wall; total_images += images
            print(f"{name}: {records} records, {images} images, {wall:.1f}s wall, {images / wall:.1f} images/s, "
                  f"{cpu:.1f}s CPU, params {manifest['parameters']}")
    print(f"total: {total_images} images in {total_wall:.1f}s wall ({total_images / total_wall:.1f} images/s)")


if __name__ == '__main__':
    main()
