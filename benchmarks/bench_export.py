"""Export throughput (patches/s) of every ``nasdm-aug export`` format on a toy Lizard-scale store.

    .venv/bin/python benchmarks/bench_export.py [--images 4] [--size 1000] [--patch-size 128]
        [--work DIR] [--json out.json]

The store: ``--images`` procedural toy images of ``--size`` px (Lizard's images are ~1000 px),
tiled into 128-px patches at stride 64 as ``prepare`` does by default. Each format is exported
once (after one warm-up export of a few patches), to a folder on the same disk, one process; the
figure includes reading the store and writing every file (PNG / TIFF encoding, the .npy arrays,
the CSV tables and manifests).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recipe_sizes import _cpu  # noqa: E402

from nasdm_aug.data.prepare import PrepareConfig, prepare  # noqa: E402
from nasdm_aug.data.store import PatchStore  # noqa: E402
from nasdm_aug.data.toy import write_toy_dataset  # noqa: E402
from nasdm_aug.export import EXPORT_FORMATS, export  # noqa: E402

TO_PANNUKE = {"neutrophil": "inflammatory", "lymphocyte": "inflammatory", "plasma": "inflammatory",
              "eosinophil": "inflammatory"}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--patch-size", type=int, default=128)
    ap.add_argument("--work", default=None, help="folder for the store and the exports (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "toy.h5"
    if not store.exists():
        write_toy_dataset(work / "toy", args.images, 0, size=(args.size, args.size), progress=False, overwrite=True)
        prepare(PrepareConfig(format="lizard", src=str(work / "toy"), out=str(store), patch_size=args.patch_size,
                              stride=args.patch_size // 2), progress=False)
    n = len(PatchStore(store))
    res = {"machine": _cpu(), "patches": n, "patch_size": args.patch_size, "images": args.images, "formats": {}}
    print(json.dumps({k: v for k, v in res.items() if k != "formats"}), flush=True)
    for fmt in EXPORT_FORMATS:
        tmap = TO_PANNUKE if fmt == "pannuke" else None
        out = work / f"out-{fmt}"
        export(store, out, fmt, split="Test", type_map=tmap, overwrite=True, progress=False)  # warm-up
        t0 = time.perf_counter()
        export(store, out, fmt, type_map=tmap, overwrite=True, progress=False)
        dt = time.perf_counter() - t0
        res["formats"][fmt] = {"patches_per_s": n / dt, "seconds": dt, "mb": _du(out) / 1e6}
        print(fmt, json.dumps(res["formats"][fmt]), flush=True)
        shutil.rmtree(out)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
