"""Tiny real store + synthetic bank for the mixing tests (16 px, 32 real patches, 30 synthetic).

Real: 8 images x 4 patches; Train = img0..img5 (24 patches, indices 0..23), R1 = img0..img2,
R2 = img3..img5, Test = img6, img7 (indices 24..31). Nuclei are asymmetric rectangles; the image
marks them in channel 0 (real) or channel 1 (synthetic) so alignment and origin can be checked.
Bank: one patch per Train patch (parent = its index, bank indices 0..23), one per Test patch
24..27 (bank 24..27), and 2 from generated masks (parent -1, bank 28, 29).
"""

from __future__ import annotations

import numpy as np

from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.types import LIZARD

P = 16
SPLITS = {"Train": [f"img{i}" for i in range(6)], "R1": ["img0", "img1", "img2"],
          "R2": ["img3", "img4", "img5"], "Test": ["img6", "img7"]}


def make_mask(i: int, p: int = P) -> tuple[np.ndarray, np.ndarray]:
    """Instance and type maps [p, p] with 2 asymmetric rectangles, seeded by ``i``."""
    rng = np.random.default_rng(1000 + i)
    inst = np.zeros((p, p), np.int32)
    typ = np.zeros((p, p), np.uint8)
    for k in (1, 2):
        y, x = rng.integers(0, p - 6, 2)
        h, w = rng.integers(2, 6), rng.integers(3, 7)
        inst[y:y + h, x:x + w] = k
        typ[y:y + h, x:x + w] = rng.integers(1, 7)
    return inst, typ


def make_image(inst: np.ndarray, channel: int, i: int) -> np.ndarray:
    """uint8 [p, p, 3]: 220 on nuclei in ``channel``, a weak per-patch pattern elsewhere."""
    img = np.full((*inst.shape, 3), 10 + (i % 40), np.uint8)
    img[..., channel][inst > 0] = 220
    return img


def write_real(path, n=32, p=P, table=LIZARD):
    with PatchStoreWriter(path, patch_size=p, type_table=table, origin="real") as w:
        for i in range(n):
            inst, typ = make_mask(i, p)
            w.append(make_image(inst, 0, i), inst, typ, source=f"img{i // 4}", y=0, x=i)
        w.set_splits(SPLITS)
    return path


def write_bank(path, parents, p=P, table=LIZARD, origin="synthetic"):
    with PatchStoreWriter(path, patch_size=p, type_table=table, origin=origin) as w:
        for j, par in enumerate(parents):
            inst, typ = make_mask(par if par >= 0 else 500 + j, p)
            typ = np.minimum(typ, table.n_types)
            w.append(make_image(inst, 1, j), inst, typ, source="bank", parent=int(par), seed=j)
    return path


BANK_PARENTS = list(range(24)) + [24, 25, 26, 27, -1, -1]
