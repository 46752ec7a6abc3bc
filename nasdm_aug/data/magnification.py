"""Magnification: each format's native objective power, and resampling a Tile to another one.

NASDM works at 20x (Lizard, about 0.5 um per pixel); CoNSeP and PanNuke are scanned at 40x
(about 0.25 um per pixel). A model trained at one magnification sees nuclei twice as large or
small at the other, so ``prepare --magnification`` brings every dataset to one, and the store, the
models trained on it and the banks made from them record it.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from skimage.measure import label

from nasdm_aug.data.tile import Tile
from nasdm_aug.data.tiling import relabel_sequential

__all__ = ["NATIVE_MAGNIFICATION", "microns_per_pixel", "rescale_tile", "check_same_scale"]

# objective power each format is distributed at (Graham et al. 2021 Lizard/CoNIC: 20x; Graham et
# al. 2019 CoNSeP: 40x; Gamper et al. 2020 PanNuke: 40x); the toy tissue is drawn at Lizard's scale
NATIVE_MAGNIFICATION: dict[str, float] = {"lizard": 20.0, "consep": 40.0, "conic": 20.0, "pannuke": 40.0, "toy": 20.0}


def microns_per_pixel(magnification: float) -> float:
    """The usual pixel size at an objective power: 0.25 um at 40x, 0.5 um at 20x (10 / power)."""
    return 10.0 / magnification


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel's centre (nearest neighbour, no half-pixel shift)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def rescale_tile(tile: Tile, factor: float, min_area: int = 4) -> Tile:
    """The tile at ``factor`` times its pixel size (0.5: a 40x image brought to 20x).

    The image is area-averaged (PIL's box filter: each output pixel is the mean of the input
    area it covers); the labels are sampled at the nearest input pixel, so every output pixel
    keeps one instance and its type. Connected pieces of an instance smaller than ``min_area``
    pixels (slivers of nuclei the sampling cut off) are dropped, and instances are relabelled
    1..N in order of their old ids.

    Raises:
        ValueError: ``factor`` not in (0, 1] or a tile that would shrink below one pixel.
    """
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"rescale factor must lie in (0, 1] (downsampling only), got {factor}")
    if factor == 1.0:
        return tile
    h, w = tile.inst.shape
    oh, ow = max(int(round(h * factor)), 0), max(int(round(w * factor)), 0)
    if oh < 1 or ow < 1:
        raise ValueError(f"{tile.name}: {h}x{w} px at x{factor} is smaller than one pixel")
    image = np.asarray(Image.fromarray(tile.image).resize((ow, oh), Image.Resampling.BOX))
    ys, xs = _nearest_index(h, oh), _nearest_index(w, ow)
    inst = tile.inst[np.ix_(ys, xs)]
    typ = tile.type[np.ix_(ys, xs)]
    # label() gives each connected run of one instance id its own component (background 0 stays 0)
    pieces = label(inst, background=0, connectivity=1)
    small = np.bincount(pieces.ravel()) < min_area
    small[0] = False
    inst = np.where(small[pieces], 0, inst)
    typ = np.where(inst > 0, typ, 0).astype(np.uint8)
    return Tile(image=np.ascontiguousarray(image), inst=relabel_sequential(inst).astype(np.int32), type=typ, name=tile.name)


def check_same_scale(what: str, a: dict, other: str, b: dict) -> None:
    """Refuse to combine two things (a model, a store, a bank) of different magnification or patch size.

    ``a`` and ``b`` map ``magnification`` (None or absent: not recorded, as in stores made before
    it was) and ``patch_size``; an unrecorded magnification is not compared.

    Raises:
        InputError: one line naming both sides and both values.
    """
    from nasdm_aug.utils import InputError

    pa, pb = a.get("patch_size"), b.get("patch_size")
    if pa is not None and pb is not None and int(pa) != int(pb):
        raise InputError(f"{what} has {int(pa)}-px patches but {other} has {int(pb)}-px patches")
    ma, mb = a.get("magnification"), b.get("magnification")
    if ma is not None and mb is not None and not math.isclose(float(ma), float(mb), rel_tol=1e-6):
        raise InputError(f"{what} is at {float(ma):g}x but {other} is at {float(mb):g}x magnification")
