"""What every dataset reader shares: RGB images read and checked, label arrays from .mat / HDF5
files checked for integer ids, instances relabelled 1..N with one class each, and the Tile they
make. Any problem is one :class:`InputError` line naming the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import scipy.io
from PIL import Image

from nasdm_aug.data.tile import Tile
from nasdm_aug.data.tiling import relabel_sequential
from nasdm_aug.utils import InputError

__all__ = ["IMAGE_EXTS", "load_rgb", "rgb_array", "int_labels", "load_mat", "relabel", "class_per_instance",
           "check_one_class", "make_tile", "check_shapes"]

IMAGE_EXTS = (".png", ".tif", ".tiff")
_INT32_MAX = np.iinfo(np.int32).max


# -- images -------------------------------------------------------------------------------------
def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3].

    RGB is taken as is; RGBA whose alpha is fully opaque (255 everywhere) drops the alpha channel;
    anything else (grayscale, palette, 16-bit, translucent RGBA) is refused rather than guessed.

    Raises:
        InputError: the file is unreadable or truncated, or the image is not RGB.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError) for bad files
        raise InputError(f"{path}: unreadable or truncated image ({exc})") from None
    return rgb_array(arr, f"{path}", mode)


def rgb_array(arr: np.ndarray, where: str, mode: str = "") -> np.ndarray:
    """uint8 [H, W, 3] from an image array; integral floats in 0..255 (PanNuke) are converted."""
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        what = f"mode {mode}" if mode else f"shape {arr.shape}"
        raise InputError(f"{where}: image is not RGB ({what}); convert it to 3-channel RGB")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "fiu" or arr.size and (
            arr.min() < 0 or arr.max() > 255 or (arr.dtype.kind == "f" and not np.all(arr == np.round(arr)))
        ):
            raise InputError(f"{where}: image dtype {arr.dtype} is not uint8 and not integral 0..255")
        arr = arr.astype(np.uint8)
    if arr.shape[2] == 4:
        if not np.all(arr[..., 3] == 255):
            raise InputError(f"{where}: image is RGBA with transparent pixels; flatten it to RGB")
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


# -- labels ---------------------------------------------------------------------------------------
def int_labels(arr: np.ndarray, where: str, key: str) -> np.ndarray:
    """int64 copy of an id/class array; floats must be integral, values in 0..int32 max."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"{where}: {key} holds non-integer values")
    elif arr.dtype.kind not in "iub":
        raise InputError(f"{where}: {key} has dtype {arr.dtype}, expected integers")
    out = arr.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() > _INT32_MAX):
        raise InputError(f"{where}: {key} has values outside 0..{_INT32_MAX} (min {out.min()}, max {out.max()})")
    return out


def load_mat(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read keys from a MATLAB v5 (scipy) or v7.3 (HDF5) .mat file.

    MATLAB stores arrays column-major, so v7.3 datasets read by h5py come back transposed;
    they are transposed back here so both versions give the same [H, W] maps and [N, 1] tables.
    """
    out: dict[str, np.ndarray] = {}
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                for k in (*keys, *optional):
                    if k in f:
                        out[k] = np.asarray(f[k][()]).T
        else:
            m = scipy.io.loadmat(path, variable_names=[*keys, *optional])
            out = {k: np.asarray(m[k]) for k in (*keys, *optional) if k in m}
    except Exception as exc:  # scipy/h5py raise ValueError, OSError, TypeError, MatReadError...
        raise InputError(f"{path}: unreadable or truncated .mat file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in keys if k not in out]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing} (has {sorted(out)})")
    return out


def relabel(inst: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Instance map relabelled 1..N (in order of old id) and the old ids [N] of labels 1..N."""
    inst = int_labels(inst, where, "instance map")
    new = relabel_sequential(inst)
    old = np.zeros(int(new.max()) + 1, np.int64)
    old[new] = inst
    return new, old[1:]


def class_per_instance(inst: np.ndarray, cls: np.ndarray, old_ids: np.ndarray, n_types: int, where: str) -> np.ndarray:
    """Each instance's one class [N] from a per-pixel class map (0 = unlabelled pixel).

    Raises:
        InputError: an unknown class id, an instance with no class, or one with two classes.
    """
    n = len(old_ids)
    cls = int_labels(cls, where, "class map")
    m = inst > 0
    ids, c = inst[m].astype(np.int64), cls[m]
    bad = (c > n_types)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: unknown class id {int(c[k])} (instance {old_ids[ids[k] - 1]}); valid 1..{n_types}")
    # a (instance, class) histogram: one bincount instead of a python loop over instances
    counts = np.bincount(ids * (n_types + 1) + c, minlength=(n + 1) * (n_types + 1)).reshape(n + 1, n_types + 1)
    has = counts[1:, 1:] > 0
    check_one_class(has.sum(1), old_ids, where)
    return has.argmax(1) + 1


def check_one_class(n_classes: np.ndarray, old_ids: np.ndarray, where: str) -> None:
    if (n_classes == 0).any():
        raise InputError(f"{where}: instance {old_ids[np.flatnonzero(n_classes == 0)[0]]} has no class")
    if (n_classes > 1).any():
        raise InputError(f"{where}: instance {old_ids[np.flatnonzero(n_classes > 1)[0]]} has two classes")


def make_tile(image: np.ndarray, inst: np.ndarray, classes: np.ndarray, name: str) -> Tile:
    """Tile from a relabelled inst map and classes [N] of instances 1..N."""
    lut = np.concatenate([[0], classes]).astype(np.uint8)
    return Tile(image=image, inst=inst.astype(np.int32, copy=False), type=lut[inst], name=name)


def check_shapes(image: np.ndarray, maps: dict[str, np.ndarray], where: str) -> None:
    for key, arr in maps.items():
        if arr.shape != image.shape[:2]:
            raise InputError(f"{where}: {key} shape {arr.shape} disagrees with image shape {image.shape[:2]}")
