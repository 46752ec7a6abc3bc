"""Toy-tissue speed and type frequencies.

Run: .venv/bin/python benchmarks/bench_toy.py [--images 238] [--size 1000] [--out /tmp/toy-bench]
Times generate_toy_tile alone (wall and CPU per image) and write_toy_dataset end to end (PNG + .mat),
then prints the measured nuclei-type shares of each frequency option.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

from nasdm_aug.data.toy import FREQUENCIES, generate_toy_tile, write_toy_dataset


def time_generate(n: int, size: int) -> dict:
    generate_toy_tile(0, (size, size))  # warm-up (imports, caches)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        generate_toy_tile(np.random.default_rng([1, i]), (size, size))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"images": n, "wall_s_per_image": round(wall / n, 3), "cpu_s_per_image": round(cpu / n, 3),
            "images_per_s_wall": round(n / wall, 2), "images_per_s_cpu": round(n / cpu, 2)}  # fmt: skip


def time_write(out: str, n: int, size: int, frequencies: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cpu = time.process_time()
    summary = write_toy_dataset(out, n, seed=0, size=(size, size), frequencies=frequencies, progress=False)
    cpu = time.process_time() - cpu
    total = sum(summary["nuclei"].values())
    mb = sum(f.stat().st_size for f in os.scandir(out + "/Images")) + sum(f.stat().st_size for f in os.scandir(out + "/Labels"))
    shutil.rmtree(out, ignore_errors=True)
    return {"frequencies": frequencies, "images": n, "wall_s": summary["seconds"], "cpu_s": round(cpu, 1),
            "nuclei": total, "nuclei_per_image": round(total / n), "MB_on_disk": round(mb / 2**20),
            "shares": {k: round(v / total, 4) for k, v in summary["nuclei"].items()}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=238, help="images in the end-to-end write (Lizard: 238)")
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--generate", type=int, default=20, help="images for the generate-only timing")
    ap.add_argument("--out", default="/tmp/toy-bench")
    args = ap.parse_args()
    print("load average before:", os.getloadavg())
    print(json.dumps(time_generate(args.generate, args.size), indent=1))
    for freq in FREQUENCIES:
        n = args.images if freq == "lizard" else max(1, args.images // 6)
        print(json.dumps(time_write(args.out, n, args.size, freq), indent=1))
    print("load average after:", os.getloadavg())


if __name__ == "__main__":
    main()
