"""Pasting whole real nuclei: the nucleus pool and the placement shared by ``RandNucleiPasted``
(copy-paste augmentation of images) and ``recombine_masks`` (new layouts for rare types).

Imports no MONAI, so the synthesis config can hold the paste options without loading it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from nasdm_aug.config import ConfigBase
from nasdm_aug.data.store import PatchStore
from nasdm_aug.utils import InputError

__all__ = ["PasteOptions", "NucleusPool", "Placement", "place_nucleus", "blend_placements"]

_SQUARE = np.ones((3, 3), bool)  # 8-connected: the margin is a Chebyshev distance in pixels


@dataclass(frozen=True)
class PasteOptions(ConfigBase):
    """Which real nuclei may be pasted and how each is placed.

    Args:
        min_area: smallest nucleus (pixels) taken into the pool, and smallest after scaling.
        max_area: largest nucleus (pixels) taken into the pool and after scaling; None: no bound.
        scale: range of the linear scale factor drawn per paste; the draw is clipped so the
            scaled area stays within ``[min_area, max_area]``.
        flip_rotate: apply one of the 8 flips / quarter turns at random (shape-preserving).
        whole_only: take only nuclei that do not touch their patch's border (a cut nucleus
            pasted elsewhere would show a straight cut edge).
        allow_overlap: place without looking at the nuclei already there; the pasted nucleus
            covers their pixels (else a placement that covers or comes within ``margin`` pixels of
            any nucleus is redrawn, ``max_tries`` times, then the nucleus is skipped).
        margin: pixels (8-connected) kept free between a pasted nucleus and any other.
        max_tries: positions tried per nucleus before it is skipped.
        feather: Gaussian sigma (pixels) of the image's edge blend; 0 pastes a hard edge.
    """

    min_area: int = 10
    max_area: int | None = None
    scale: tuple[float, float] = (0.9, 1.1)
    flip_rotate: bool = True
    whole_only: bool = True
    allow_overlap: bool = False
    margin: int = 1
    max_tries: int = 20
    feather: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        if len(self.scale) != 2 or not (0 < self.scale[0] <= self.scale[1] < math.inf):
            raise InputError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if self.min_area < 1 or (self.max_area is not None and self.max_area < self.min_area):
            raise InputError(f"area bounds must satisfy 1 <= min_area <= max_area, got "
                             f"min_area={self.min_area}, max_area={self.max_area}")
        if self.margin < 0 or self.max_tries < 1 or not (self.feather >= 0):
            raise InputError(f"need margin >= 0, max_tries >= 1 and feather >= 0; got margin={self.margin}, "
                             f"max_tries={self.max_tries}, feather={self.feather}")

    @property
    def border(self) -> int:
        """Pixels kept around a nucleus's crop: room for the margin and the feathered edge."""
        return max(self.margin, int(math.ceil(2 * self.feather)), 1)


class NucleusPool:
    """Whole real nuclei cut from a store's patches, each with its type and crop.

    A nucleus's crop is its bounding box plus ``options.border`` pixels (edge-padded where the
    patch ends): the mask, and with ``with_image`` the RGB pixels. Crops are packed into flat
    buffers, so a pool pickles into DataLoader workers as a few arrays. A nucleus's type is the
    type at its first pixel (instances are single-typed); nuclei of type 0 or outside
    ``options.min_area`` / ``max_area`` or, with ``whole_only``, touching the patch border are
    left out.

    Args:
        store: the PatchStore.
        indices: patch indices to take nuclei from (duplicates ignored).
        options: the area bounds, ``whole_only`` and the crop border.
        with_image: keep the image crops (masks only, for new layouts, when False).
        progress: show a tqdm bar over the patches.
        batch_size: patches read at a time.

    Attributes:
        patch: int64 [n] store index of each nucleus's patch (ascending).
        type: uint8 [n] type id of each nucleus.
        area: int64 [n] pixels of each nucleus.
        n_types: number of types of the store's table.
        source: the store's path.
    """

    def __init__(self, store: PatchStore, indices: Sequence[int] | np.ndarray, options: PasteOptions, *,
                 with_image: bool = True, progress: bool = False, batch_size: int = 256) -> None:
        idx = np.unique(np.asarray(indices, np.int64))
        self.n_types = store.type_table.n_types
        self.source = str(store.path)
        self.with_image = with_image
        b, lo, hi = options.border, options.min_area, options.max_area
        keys = ("inst", "type", "image") if with_image else ("inst", "type")
        patch, types, areas, shapes, masks, images = [], [], [], [], [], []
        bar = tqdm(total=len(idx), desc="nucleus pool", unit="patch", disable=not progress, leave=False)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            data = store.read(chunk, keys=keys)
            for row, index in enumerate(chunk):
                inst, tmap = data["inst"][row], data["type"][row]
                img = np.pad(data["image"][row], ((b, b), (b, b), (0, 0)), mode="edge") if with_image else None
                counts = np.bincount(inst.ravel())
                h, w = inst.shape
                for label, box in enumerate(ndimage.find_objects(inst), start=1):
                    if box is None or counts[label] < lo or (hi is not None and counts[label] > hi):
                        continue
                    y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
                    if options.whole_only and (y0 == 0 or x0 == 0 or y1 == h or x1 == w):
                        continue
                    own = inst[box] == label
                    t = int(tmap[box][own][0])  # the first pixel in raster order, as type_counts reads it
                    if not 1 <= t <= self.n_types:
                        continue
                    masks.append(np.pad(own, b).ravel())
                    if with_image:
                        images.append(img[y0:y1 + 2 * b, x0:x1 + 2 * b].reshape(-1))
                    patch.append(int(index))
                    types.append(t)
                    areas.append(int(counts[label]))
                    shapes.append((y1 - y0 + 2 * b, x1 - x0 + 2 * b))
            bar.update(len(chunk))
        bar.close()
        self.patch = np.asarray(patch, np.int64)
        self.type = np.asarray(types, np.uint8)
        self.area = np.asarray(areas, np.int64)
        self._shape = np.asarray(shapes, np.int64).reshape(-1, 2)
        sizes = self._shape.prod(1)
        self._offset = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        self._masks = np.concatenate(masks) if masks else np.zeros(0, bool)
        self._images = np.concatenate(images) if images else np.zeros(0, np.uint8)
        # per type: its nuclei and their patches, both ascending, so one patch's nuclei are one run
        self._by_type = {t: np.flatnonzero(self.type == t) for t in range(1, self.n_types + 1)}
        self._patch_by_type = {t: self.patch[ids] for t, ids in self._by_type.items()}

    def __len__(self) -> int:
        return len(self.patch)

    def crop(self, j: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Nucleus ``j``'s mask bool [h, w] and image uint8 [h, w, 3] (None without images); views."""
        h, w = (int(v) for v in self._shape[j])
        a, z = int(self._offset[j]), int(self._offset[j + 1])
        mask = self._masks[a:z].reshape(h, w)
        image = self._images[3 * a:3 * z].reshape(h, w, 3) if self.with_image else None
        return mask, image

    def counts(self) -> np.ndarray:
        """int64 [n_types]: nuclei of each type id 1..n_types in the pool."""
        return np.asarray([len(self._by_type[t]) for t in range(1, self.n_types + 1)], np.int64)

    def _excluded_run(self, t: int, exclude: int | None) -> tuple[int, int]:
        if exclude is None:
            return 0, 0
        pats = self._patch_by_type[t]
        return int(np.searchsorted(pats, exclude, "left")), int(np.searchsorted(pats, exclude, "right"))

    def available(self, exclude: int | None = None) -> np.ndarray:
        """int64 [n_types]: nuclei of each type outside patch ``exclude`` (all for None)."""
        out = self.counts()
        if exclude is not None:
            for t in range(1, self.n_types + 1):
                lo, hi = self._excluded_run(t, exclude)
                out[t - 1] -= hi - lo
        return out

    def draw(self, t: int, rng: np.random.RandomState, exclude: int | None = None) -> int | None:
        """A nucleus of type ``t`` drawn uniformly, never one of patch ``exclude``; None if none is left."""
        ids = self._by_type.get(int(t), np.zeros(0, np.int64))
        lo, hi = self._excluded_run(int(t), exclude) if len(ids) else (0, 0)
        n = len(ids) - (hi - lo)
        if n <= 0:
            return None
        r = int(rng.randint(n))
        return int(ids[r if r < lo else r + (hi - lo)])

    def __repr__(self) -> str:
        return f"NucleusPool({os.path.basename(self.source)!r}, n={len(self)}, per_type={self.counts().tolist()})"


@dataclass
class Placement:
    """One pasted nucleus.

    Attributes:
        pool_index: the nucleus's index in the pool.
        inst_id: its new instance id.
        type_id: its type id.
        y, x: where the crop's top-left corner lies in the patch (may be negative: the crop's
            border can hang over the patch edge; the nucleus itself is always inside).
        mask: bool [h, w] the nucleus in crop coordinates, as pasted (flipped, turned, scaled).
        image: float32 [h, w, 3] the crop's pixels in 0..255, or None (masks only).
        alpha: float32 [h, w] the blend weight: 1 on the nucleus, fading over about 2 ``feather``
            pixels outside it; None without an image.
    """

    pool_index: int
    inst_id: int
    type_id: int
    y: int
    x: int
    mask: np.ndarray
    image: np.ndarray | None = None
    alpha: np.ndarray | None = None

    def windows(self, shape: tuple[int, int]) -> tuple["Window", "Window"]:
        """(patch window, crop window): the parts of patch and crop that overlap."""
        return _windows(self.y, self.x, self.mask.shape, shape)


Window = tuple[slice, slice]


def _windows(y: int, x: int, crop: tuple[int, int], patch: tuple[int, int]) -> tuple[Window, Window]:
    py0, px0 = max(y, 0), max(x, 0)
    py1, px1 = min(y + crop[0], patch[0]), min(x + crop[1], patch[1])
    return (slice(py0, py1), slice(px0, px1)), (slice(py0 - y, py1 - y), slice(px0 - x, px1 - x))


def _transformed(pool: NucleusPool, j: int, rng: np.random.RandomState,
                 options: PasteOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """Nucleus ``j``'s mask and float image after a random flip / quarter turn and scale."""
    mask, image = pool.crop(j)
    if options.flip_rotate:
        k = int(rng.randint(8))
        mask = np.rot90(mask, k % 4)
        image = None if image is None else np.rot90(image, k % 4)
        if k >= 4:
            mask = mask[:, ::-1]
            image = None if image is None else image[:, ::-1]
    s = float(rng.uniform(*options.scale))
    area = float(pool.area[j])
    s = max(s, math.sqrt(options.min_area / area))
    if options.max_area is not None:
        s = min(s, math.sqrt(options.max_area / area))
    image = None if image is None else image.astype(np.float32)
    if abs(s - 1.0) > 1e-6:
        # mask and image in one interpolation pass: the mask as a fourth channel
        both = mask[..., None].astype(np.float32) if image is None else np.dstack([image, mask])
        both = ndimage.zoom(both, (s, s, 1), order=1)
        mask = both[..., -1] >= 0.5
        image = None if image is None else np.clip(both[..., :3], 0, 255)
    mask = np.ascontiguousarray(mask)
    # keep the crop's border after scaling, so the margin test and the feather stay inside it
    b = options.border
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) and (rows[0] < b or cols[0] < b or mask.shape[0] - rows[-1] <= b or mask.shape[1] - cols[-1] <= b):
        mask = np.pad(mask, b)
        image = None if image is None else np.pad(image, ((b, b), (b, b), (0, 0)), mode="edge")
    return mask, image


def place_nucleus(inst: np.ndarray, type_map: np.ndarray, pool: NucleusPool, j: int, rng: np.random.RandomState,
                  options: PasteOptions, new_id: int) -> Placement | None:
    """Place pool nucleus ``j`` into ``inst`` / ``type_map`` [H, W] (changed in place) as ``new_id``.

    1. Flip / turn and scale the crop (see :class:`PasteOptions`).
    2. Draw a position with the nucleus wholly inside the patch; unless ``allow_overlap``, redraw
       while the nucleus grown by ``margin`` pixels would touch a pixel of any nucleus, up to
       ``max_tries`` times.
    3. Write ``new_id`` and the nucleus's type on its pixels.

    The image is not touched here (see :func:`blend_placements`), so every image key of an item
    gets the same paste.

    Returns:
        The :class:`Placement`, or None when the nucleus found no room (nothing written).
    """
    mask, image = _transformed(pool, j, rng, options)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    t0, t1, l0, l1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    h, w = inst.shape
    if t1 - t0 > h or l1 - l0 > w:
        return None
    m = options.margin
    probe = ndimage.binary_dilation(mask, _SQUARE, iterations=m) if m and not options.allow_overlap else mask
    for _ in range(1 if options.allow_overlap else options.max_tries):
        y, x = int(rng.randint(-t0, h - t1 + 1)), int(rng.randint(-l0, w - l1 + 1))
        win, cwin = _windows(y, x, mask.shape, (h, w))
        if options.allow_overlap or not inst[win][probe[cwin]].any():
            break
    else:
        return None
    own = mask[cwin]
    inst[win][own] = new_id
    type_map[win][own] = pool.type[j]
    alpha = None
    if image is not None:
        alpha = mask.astype(np.float32)
        if options.feather > 0:
            # twice the blurred mask: >= 1 along the nucleus's edge, so the nucleus itself is pasted
            # whole and the blend happens in a rim of the source's own background around it
            alpha = np.maximum(alpha, np.minimum(2 * ndimage.gaussian_filter(alpha, options.feather), 1))
    return Placement(int(j), int(new_id), int(pool.type[j]), y, x, mask, image, alpha)


def blend_placements(image: np.ndarray, placements: Sequence[Placement], inst: np.ndarray, unit: float) -> np.ndarray:
    """Blend the pasted crops into ``image`` float32 [3, H, W] (in place) and return it.

    ``unit`` is the image's value for 255 (1/255 for an image in [0, 1]). A crop's rim never
    changes a pixel of another nucleus of the final ``inst`` (so without overlap every nucleus
    already there keeps its pixels exactly), and the nucleus itself replaces the pixels under it.
    """
    for p in placements:
        win, cwin = p.windows(inst.shape)
        here = inst[win]
        a = p.alpha[cwin] * ((here == p.inst_id) | (here == 0))
        crop = p.image[cwin].transpose(2, 0, 1) * np.float32(unit)
        region = image[(slice(None), *win)]
        region += a * (crop - region)
    return image
