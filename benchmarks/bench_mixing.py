"""Throughput of SyntheticMixDataset against a plain real-only PatchStore read.

Builds a real store and a synthetic bank of the same size in a temp dir, then times items/s
through a monai DataLoader (2 workers) for: a minimal Dataset doing ``store[i]`` (the reference),
the same read plus the float [3, H, W] image conversion (what the item format costs by itself),
SyntheticMixDataset in modes "real" and "add" (and "add" with HoVerNet targets on --hovernet);
then the same in-process without a DataLoader (the datasets' own cost). Reference and candidates
alternate over several rounds; the median of the per-round ratios is reported.

Run: .venv/bin/python benchmarks/bench_mixing.py [--n 640 --size 128 --rounds 5 --hovernet]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from scipy import ndimage

from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.mixing import SyntheticMixDataset
from nasdm_aug.types import LIZARD


class PlainDataset(torch.utils.data.Dataset):
    """The reference: what a user without this package writes, ``store[i]`` and nothing else."""

    def __init__(self, store: PatchStore, to_float: bool = False) -> None:
        self.store = store
        self.to_float = to_float

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict:
        item = self.store[i]
        image = item["image"]
        if self.to_float:  # the same float [3, H, W] in [0, 1] conversion SyntheticMixDataset does
            image = image.transpose(2, 0, 1).astype(np.float32)
            image *= np.float32(1.0 / 255.0)
        return {"image": image, "inst": item["inst"], "type": item["type"]}


def _patch(rng: np.random.Generator, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tissue-like patch: smooth stain texture plus ~12 disc nuclei (compresses like real data)."""
    yy, xx = np.mgrid[:p, :p]
    inst = np.zeros((p, p), np.int32)
    typ = np.zeros((p, p), np.uint8)
    for k in range(1, 13):
        cy, cx, r = rng.integers(0, p), rng.integers(0, p), rng.integers(3, 8)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        inst[disc], typ[disc] = k, rng.integers(1, 7)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (p, p)), 3)
    image = np.stack([200 + 30 * texture, 150 + 30 * texture, 210 + 20 * texture], -1)
    image[inst > 0] *= np.array([0.4, 0.3, 0.6])
    return np.clip(image, 0, 255).astype(np.uint8), inst, typ


def build_stores(root: Path, n: int, p: int) -> tuple[Path, Path]:
    """A real store of ``n`` patches (all in Train) and a bank with one patch per real mask."""
    rng = np.random.default_rng(0)
    patches = [_patch(rng, p) for _ in range(n)]
    real, bank = root / "real.h5", root / "bank.h5"
    with PatchStoreWriter(real, patch_size=p, type_table=LIZARD) as w:
        for i, (image, inst, typ) in enumerate(patches):
            w.append(image, inst, typ, source=f"img{i // 16}")
        w.set_splits({"Train": [f"img{k}" for k in range((n + 15) // 16)]})
    with PatchStoreWriter(bank, patch_size=p, type_table=LIZARD, origin="synthetic") as w:
        for i, (image, inst, typ) in enumerate(patches):
            w.append(255 - image, inst, typ, source="bank", parent=i, seed=i)
    return real, bank


def items_per_second(dataset, batch_size: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=False)
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["image"])
    return count / (time.perf_counter() - start)


def items_per_second_inprocess(dataset) -> float:
    """Items/s of ``dataset[i]`` in this process: the dataset's own cost, without worker IPC."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def _table(title: str, rates: dict[str, list[float]], ratios: dict[str, list[float]]) -> None:
    print(title)
    for name, values in rates.items():
        extra = f"  ratio vs plain (median) {statistics.median(ratios[name]):.2f}x" if name in ratios else ""
        print(f"  {name:28s} {statistics.median(values):8.0f} items/s{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=640, help="real patches (and as many synthetic)")
    ap.add_argument("--size", type=int, default=128, help="patch size (px)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hovernet", action="store_true", help="also time the HoVerNet-target variant")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        real, bank = build_stores(Path(tmp), args.n, args.size)
        candidates = {
            "plain store[i] + float": PlainDataset(PatchStore(real), to_float=True),
            "mix real": SyntheticMixDataset(real, mode="real"),
            "mix add 0.25+0.75": SyntheticMixDataset(real, bank, mode="add", ratio=0.75),
        }
        if args.hovernet:
            candidates["mix add + hovernet targets"] = SyntheticMixDataset(real, bank, mode="add", ratio=0.75,
                                                                           hovernet_targets=True)
        reference = PlainDataset(PatchStore(real))
        for title, measure in (
            (f"DataLoader, batch {args.batch_size}, {args.workers} workers",
             lambda d: items_per_second(d, args.batch_size, args.workers)),
            ("in-process dataset[i], no DataLoader", items_per_second_inprocess),
        ):
            rates: dict[str, list[float]] = {"plain store[i]": [], **{k: [] for k in candidates}}
            ratios: dict[str, list[float]] = {k: [] for k in candidates}
            for _ in range(args.rounds):
                for name, ds in candidates.items():  # reference right before each candidate: same load
                    ref, got = measure(reference), measure(ds)
                    rates["plain store[i]"].append(ref)
                    rates[name].append(got)
                    ratios[name].append(got / ref)
            _table(f"{title} (n={args.n}, {args.size} px, {args.rounds} rounds)", rates, ratios)


if __name__ == "__main__":
    main()
