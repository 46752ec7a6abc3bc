"""Haematoxylin of H&E patches, and the dark blobs a patch holds away from its annotated nuclei.

The stain is separated by scikit-image's colour deconvolution (``rgb2hed``, Ruifrok & Johnston's
H&E-DAB matrix), in optical density units. :func:`off_mask_blobs` finds what an annotation left
out: in real patches mostly nuclei nobody annotated, necrotic debris and tissue dye; in synthetic
ones, nuclei the generator drew where its mask has none. It lives with the data because the
trainer's data filter (``TrainConfig.drop_unannotated``) uses it; :mod:`nasdm_aug.metrics.stain`
reports it for banks.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from nasdm_aug.data.store import PatchStore

__all__ = ["BLOB_MAGNIFICATION", "BLOB_MARGIN_PX", "BLOB_MIN_AREA_PX", "BLOB_DARK_GREY", "haematoxylin", "nucleus_haematoxylin",
           "off_mask_blobs", "store_off_mask_blobs", "read_chunks"]

_CHUNK = 256  # patches read at once: bounded memory for banks of any size
# blob geometry at 20x; a store at another magnification scales it (store_off_mask_blobs)
BLOB_MAGNIFICATION = 20.0
BLOB_MARGIN_PX = 2  # a blob starts this far from an annotated nucleus: past its blurred boundary
BLOB_MIN_AREA_PX = 12  # about a 4-px disc, the smallest nucleus at 20x; smaller dark specks are chromatin or noise
BLOB_DARK_GREY = 60  # pixels darker than this grey (mean of R, G, B) are folds or black artefacts, not nuclei
_H_BINS = np.linspace(-0.5, 1.5, 20001)  # haematoxylin OD histogram for a median in bounded memory (1e-4 wide)


def haematoxylin(images: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density of uint8 RGB ``images`` ``[..., H, W, 3]`` (``rgb2hed``'s first channel)."""
    from skimage.color import rgb2hed

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images [..., H, W, 3], got {images.dtype} {images.shape}")
    return rgb2hed(images)[..., 0]


def read_chunks(store: PatchStore, indices: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    """``image`` and ``inst`` of a store's patches ``indices``, ``_CHUNK`` at a time: bounded memory."""
    for start in range(0, len(indices), _CHUNK):
        yield store.read(indices[start:start + _CHUNK], keys=("image", "inst"))


def nucleus_haematoxylin(store: PatchStore, indices: Sequence[int] | np.ndarray) -> float:
    """Median haematoxylin of the annotated nucleus pixels of a store's patches ``indices``: what
    "as dark as a nucleus" means for that scanner and stain (to 1e-4, read a chunk at a time).

    Raises:
        ValueError: the patches hold no nucleus pixel.
    """
    counts = np.zeros(len(_H_BINS) - 1, np.int64)
    for d in read_chunks(store, np.asarray(indices)):
        counts += np.histogram(haematoxylin(d["image"])[d["inst"] > 0], bins=_H_BINS)[0]
    total = counts.sum()
    if total == 0:
        raise ValueError(f"{store.path}: the patches hold no annotated nucleus to measure haematoxylin on")
    cum, centres = np.cumsum(counts), (_H_BINS[:-1] + _H_BINS[1:]) / 2
    middle = np.searchsorted(cum, [(total + 1) // 2, total // 2 + 1])  # one value, or the middle two
    return float(centres[middle].mean())


def off_mask_blobs(images: np.ndarray, insts: np.ndarray, threshold: float, *, margin: float = BLOB_MARGIN_PX,
                   min_area: int = BLOB_MIN_AREA_PX) -> np.ndarray:
    """Per patch, the number of dark blobs away from every annotated nucleus.

    A blob is a 4-connected region of at least ``min_area`` pixels whose haematoxylin exceeds
    ``threshold`` (:func:`nucleus_haematoxylin` of the real data: as dark as a typical nucleus),
    all farther than ``margin`` px (Euclidean) from every nucleus of ``insts`` and none darker than
    grey ``BLOB_DARK_GREY``. In real patches these are mostly unannotated nuclei, necrotic debris
    and tissue dye; in a generated patch, nuclei drawn where its mask has none.

    Args:
        images: uint8 RGB ``[N, H, W, 3]``.
        insts: instance maps ``[N, H, W]`` (0 = no nucleus).
        threshold: haematoxylin optical density above which a pixel counts as dark.

    Returns:
        int64 ``[N]``.
    """
    from scipy import ndimage as ndi

    images, insts = np.asarray(images), np.asarray(insts)
    if images.shape[:-1] != insts.shape:
        raise ValueError(f"images {images.shape} and instance maps {insts.shape} differ in size")
    dark = haematoxylin(images) > threshold
    dark &= images.mean(axis=-1) >= BLOB_DARK_GREY
    out = np.zeros(len(images), np.int64)
    for i, inst in enumerate(insts):
        far = ndi.distance_transform_edt(inst == 0) > margin if (inst > 0).any() else np.ones(inst.shape, bool)
        cand = dark[i] & far
        labels, n = ndi.label(cand)
        if n:
            out[i] = int((np.bincount(labels.ravel(), minlength=n + 1)[1:] >= min_area).sum())
    return out


def store_off_mask_blobs(store: PatchStore, indices: Sequence[int] | np.ndarray, threshold: float) -> np.ndarray:
    """:func:`off_mask_blobs` of a store's patches ``indices``, read a chunk at a time, with the margin
    and the smallest blob scaled from 20x to the store's magnification (20x where it records none):
    at 40x a nucleus spans twice the pixels, and 20x's 12-px blobs would be chromatin specks."""
    f = (store.magnification or BLOB_MAGNIFICATION) / BLOB_MAGNIFICATION
    margin, min_area = BLOB_MARGIN_PX * f, max(1, round(BLOB_MIN_AREA_PX * f * f))
    parts = [off_mask_blobs(d["image"], d["inst"], threshold, margin=margin, min_area=min_area)
             for d in read_chunks(store, np.asarray(indices))]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
