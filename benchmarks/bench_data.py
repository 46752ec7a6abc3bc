"""Data-layer benchmarks: ``prepare`` throughput on toy tissue at Lizard scale
and on CoNSeP, and PatchStore random-access reads against raw h5py reads of the same file.

    .venv/bin/python benchmarks/bench_data.py                       # full: 238 toy images of 1000 px
    .venv/bin/python benchmarks/bench_data.py --toy-images 8 --reads 500   # a quick check

Prints one JSON object with every number (and writes it to ``--json`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nasdm_aug.data.prepare import PrepareConfig, prepare
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.toy import write_toy_dataset

REPO = Path(__file__).resolve().parents[1]
CONSEP = REPO.parent / "shared" / "data" / "consep" / "Train"
KEYS = ("image", "inst", "type")


class RawH5(Dataset):
    """The baseline: the same three arrays read straight from h5py, handle opened per worker."""

    def __init__(self, path: str) -> None:
        self.path, self._f, self._ds, self._n = path, None, None, None
        with h5py.File(path, "r") as f:
            self._n = f["image"].shape[0]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        if self._f is None:
            self._f = h5py.File(self.path, "r")
            self._ds = [self._f[k] for k in KEYS]  # dataset handles looked up once: the fastest raw path
        return {k: ds[i] for k, ds in zip(KEYS, self._ds)}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_f": None, "_ds": None}


class StoreArrays(Dataset):
    """What a training loop sees: ``PatchStore.__getitem__`` (arrays plus metadata)."""

    def __init__(self, path: str) -> None:
        self.store = PatchStore(path)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict:
        item = self.store[i]
        return {k: item[k] for k in KEYS}


def _toy(out: Path, n: int, unique: int, size: int) -> dict:
    """Toy tissue in the Lizard layout: ``unique`` generated images, copied up to ``n`` names.

    Copies keep the generator (1-5 s per 1000-px image on a shared 2-core box) out of a
    benchmark of ``prepare``, whose cost per image depends on the image size and nuclei count,
    not on whether two images are alike.
    """
    unique = min(unique or n, n)
    t = time.perf_counter()
    write_toy_dataset(out, unique, 0, size=(size, size), progress=True)
    seconds = time.perf_counter() - t
    for i in range(unique, n):
        for sub, ext in (("Images", ".png"), ("Labels", ".mat")):
            shutil.copyfile(out / sub / f"toy_{i % unique:05d}{ext}", out / sub / f"toy_{i:05d}{ext}")
    return {"unique_images": unique, "images": n, "seconds": round(seconds, 1),
            "seconds_per_image": round(seconds / unique, 2)}


def _time_prepare(fmt: str, src: str, out: Path, **kw) -> dict:
    cpu = time.process_time()
    summary = prepare(PrepareConfig(format=fmt, src=src, out=str(out), overwrite=True, **kw), progress=True)
    cpu = time.process_time() - cpu  # this process only (workers=1): the cost without other jobs' contention
    size = out.stat().st_size
    return {"images": summary["images"], "patches": summary["patches"], "seconds": summary["seconds"],
            "cpu_seconds": round(cpu, 1),
            "images_per_s": summary["images_per_s"], "patches_per_s": summary["patches_per_s"],
            "store_mb": round(size / 1e6, 1), "nuclei": sum(summary["nuclei"].values())}


def _reads_one_process(ds: Dataset, idx: np.ndarray) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to read ``idx`` one patch at a time."""
    t, c = time.perf_counter(), time.process_time()
    for i in idx:
        ds[int(i)]
    return time.perf_counter() - t, time.process_time() - c


def _reads_loader(ds: Dataset, idx: np.ndarray, workers: int, batch: int) -> float:
    """Wall seconds to read ``idx`` through a DataLoader (worker start-up included, as in training)."""
    loader = DataLoader(ds, batch_size=batch, sampler=idx.tolist(), num_workers=workers)
    t = time.perf_counter()
    assert sum(len(b["image"]) for b in loader) == len(idx)
    return time.perf_counter() - t


def bench_reads(path: Path, n_reads: int, rounds: int, workers: int, batch: int, seed: int = 0) -> dict:
    """Store vs raw h5py on the same indices, in A-B-B-A order per round so load drifts hit both.

    The overhead is (store time / raw time - 1) per round, median over rounds; single-process
    reads also report it from CPU time, which other jobs on a shared machine do not inflate.
    """
    store, raw = StoreArrays(str(path)), RawH5(str(path))
    rng = np.random.default_rng(seed)
    _reads_one_process(store, rng.integers(0, len(raw), 200))  # warm the page cache and meta columns
    _reads_one_process(raw, rng.integers(0, len(raw), 200))
    wall, cpu, loader = [], [], []
    t_store = t_raw = c_store = c_raw = d_store = d_raw = 0.0
    for _ in range(rounds):
        idx = rng.integers(0, len(raw), n_reads)  # the same indices for both
        (w1, c1), (w2, c2), (w3, c3), (w4, c4) = (_reads_one_process(d, idx) for d in (store, raw, raw, store))
        wall.append((w1 + w4) / (w2 + w3) - 1)
        cpu.append((c1 + c4) / (c2 + c3) - 1)
        l1, l2, l3, l4 = (_reads_loader(d, idx, workers, batch) for d in (store, raw, raw, store))
        loader.append((l1 + l4) / (l2 + l3) - 1)
        t_store, t_raw, c_store, c_raw = t_store + w1 + w4, t_raw + w2 + w3, c_store + c1 + c4, c_raw + c2 + c3
        d_store, d_raw = d_store + l1 + l4, d_raw + l2 + l3
    n = 2 * rounds * n_reads
    return {
        "patches": len(raw), "reads_per_round": n_reads, "rounds": rounds, "loader_workers": workers, "batch": batch,
        "store_1p_patches_per_s": round(n / t_store, 1), "raw_1p_patches_per_s": round(n / t_raw, 1),
        "store_1p_cpu_patches_per_s": round(n / c_store, 1), "raw_1p_cpu_patches_per_s": round(n / c_raw, 1),
        "store_dl_patches_per_s": round(n / d_store, 1), "raw_dl_patches_per_s": round(n / d_raw, 1),
        "overhead_1p_wall": round(float(np.median(wall)), 4), "overhead_1p_cpu": round(float(np.median(cpu)), 4),
        "overhead_dl_wall": round(float(np.median(loader)), 4),
        "overhead_dl_wall_rounds": [round(v, 3) for v in loader],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy-images", type=int, default=238, help="toy images (Lizard has 238)")
    ap.add_argument("--toy-size", type=int, default=1000, help="toy image side in pixels")
    ap.add_argument("--toy-unique", type=int, default=34, help="generated images (the rest are copies); 0 = all")
    ap.add_argument("--toy-cache", type=Path, default=None, help="reuse/keep the generated toy folder here")
    ap.add_argument("--consep", type=Path, default=CONSEP, help="CoNSeP Train folder (skipped if absent)")
    ap.add_argument("--reads", type=int, default=1000, help="random reads per round")
    ap.add_argument("--rounds", type=int, default=5, help="store/raw/raw/store rounds")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--batch", type=int, default=32, help="DataLoader batch size")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
                 "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmp = Path(tmp)
        # 1. toy tissue at Lizard scale: generate once (timed apart), then prepare from the Lizard layout
        toy_dir = args.toy_cache or tmp / "toy"
        if not (toy_dir / "Images").is_dir():
            res["toy_generate"] = _toy(toy_dir, args.toy_images, args.toy_unique, args.toy_size)
        res["prepare_toy"] = _time_prepare("lizard", str(toy_dir), tmp / "toy.h5")
        # 2. real CoNSeP (27 images, 1000 x 1000)
        consep_store = None
        if (args.consep / "Images").is_dir():
            consep_store = tmp / "consep.h5"
            res["prepare_consep"] = _time_prepare("consep", str(args.consep), consep_store)
        # 3. random-access reads, store vs raw h5py, on the CoNSeP store (else the toy one)
        path = consep_store or tmp / "toy.h5"
        res["reads"] = {"file": path.name, **bench_reads(path, args.reads, args.rounds, args.workers, args.batch)}
        shutil.rmtree(tmp / "toy", ignore_errors=True)
    res["load_avg_end"] = os.getloadavg()
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
