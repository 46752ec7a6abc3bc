"""Haematoxylin of a bank's nuclei against the tissue around them, beside real patches.

A HoVerNet learns "nucleus" from how a patch draws its mask nuclei *relative to* the rest of the
patch. A generator that draws the tissue between nuclei with too much haematoxylin (lilac or
purple stroma) teaches it that haematoxylin-rich texture is background, and on real tissue it then
misses the paler nuclei. FID and KID see colour, but not this ratio. The stain is separated by
scikit-image's colour deconvolution (``rgb2hed``, Ruifrok & Johnston's H&E-DAB matrix), in optical
density units.

- ``nuclei``: mean haematoxylin over the mask-nucleus pixels of a patch;
- ``stroma``: mean haematoxylin over the pixels more than ``margin`` px (Euclidean) from every
  mask nucleus: the tissue and background between nuclei;
- ``contrast``: ``nuclei / stroma`` of the averages over patches;
- ``profile``: mean haematoxylin against the signed distance to the nearest nucleus boundary (one
  value per distance in px; negative inside a nucleus, 1 the first pixel outside), as a picture;
- ``off_mask_blobs``: per patch, the dark haematoxylin blobs away from every mask nucleus
  (:func:`off_mask_blobs`): in real patches mostly nuclei nobody annotated, necrotic debris and
  tissue dye; in synthetic ones, nuclei the generator drew where its mask has none.

Each is a mean over patches of per-patch means, so every patch weighs the same, as in FID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from nasdm_aug.data.store import PatchStore

__all__ = ["STROMA_MARGIN_PX", "PROFILE_DISTANCES", "BLOB_MARGIN_PX", "BLOB_MIN_AREA_PX", "BLOB_DARK_GREY",
           "haematoxylin", "stain_statistics", "compare_stain", "store_stain", "nucleus_haematoxylin",
           "off_mask_blobs", "store_off_mask_blobs", "compare_off_mask_blobs", "plot_profiles", "plot_stain_profile"]

STROMA_MARGIN_PX = 3  # "stroma" starts this far from a nucleus: past the boundary's blur and the mask's slack
PROFILE_DISTANCES = tuple(range(-4, 7))
_CHUNK = 256  # patches read at once: bounded memory for banks of any size
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


def _signed_distance(fg: np.ndarray) -> np.ndarray:
    """Rounded signed distance to the boundary: 1, 2, ... outside the nuclei, 0, -1, ... inside."""
    from scipy import ndimage as ndi

    if not fg.any():
        return np.full(fg.shape, np.iinfo(np.int32).max, np.int32)
    outside = ndi.distance_transform_edt(~fg)
    inside = ndi.distance_transform_edt(fg)
    return np.where(fg, 1 - inside, outside).round().astype(np.int32)


class _Sums:
    """Per-patch means accumulated over chunks."""

    def __init__(self, distances: Sequence[int]) -> None:
        self.distances = tuple(distances)
        self.nuclei: list[float] = []
        self.stroma: list[float] = []
        self.profile = [[] for _ in self.distances]
        self.n = 0

    def add(self, images: np.ndarray, insts: np.ndarray, margin: float) -> None:
        h = haematoxylin(images)
        for hp, inst in zip(h, np.asarray(insts)):
            self.n += 1
            fg = inst > 0
            sd = _signed_distance(fg)
            if fg.any():
                self.nuclei.append(float(hp[fg].mean()))
            far = sd > margin
            if far.any():
                self.stroma.append(float(hp[far].mean()))
            for k, d in enumerate(self.distances):
                at = sd == d
                if at.any():
                    self.profile[k].append(float(hp[at].mean()))

    def result(self) -> dict[str, Any]:
        mean = lambda v: float(np.mean(v)) if len(v) else float("nan")  # noqa: E731
        nuclei, stroma = mean(self.nuclei), mean(self.stroma)
        return {"n": self.n, "nuclei": nuclei, "stroma": stroma,
                "contrast": nuclei / stroma if stroma > 0 else float("nan"),
                "profile": {"distance": list(self.distances), "haematoxylin": [mean(v) for v in self.profile]}}


def stain_statistics(images: np.ndarray, insts: np.ndarray, *, margin: float = STROMA_MARGIN_PX,
                     distances: Sequence[int] = PROFILE_DISTANCES) -> dict[str, Any]:
    """``nuclei``, ``stroma``, ``contrast`` and ``profile`` (see the module) of uint8 RGB ``images``
    ``[N, H, W, 3]`` with instance maps ``insts`` ``[N, H, W]`` (0 = no nucleus); ``n`` patches.

    A value no patch has pixels for (no nuclei anywhere, nothing beyond ``margin``) is NaN.
    """
    images, insts = np.asarray(images), np.asarray(insts)
    if images.shape[:-1] != insts.shape:
        raise ValueError(f"images {images.shape} and instance maps {insts.shape} differ in size")
    sums = _Sums(distances)
    sums.add(images, insts, margin)
    return sums.result()


def _chunks(store: PatchStore, indices: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(indices), _CHUNK):
        yield store.read(indices[start:start + _CHUNK], keys=("image", "inst"))


def store_stain(store: PatchStore, indices: Sequence[int] | np.ndarray, *, margin: float = STROMA_MARGIN_PX,
                distances: Sequence[int] = PROFILE_DISTANCES) -> dict[str, Any]:
    """:func:`stain_statistics` of a store's patches ``indices``, read a chunk at a time."""
    sums = _Sums(distances)
    for d in _chunks(store, np.asarray(indices)):
        sums.add(d["image"], d["inst"], margin)
    return sums.result()


def nucleus_haematoxylin(store: PatchStore, indices: Sequence[int] | np.ndarray) -> float:
    """Median haematoxylin of the annotated nucleus pixels of a store's patches ``indices``: what
    "as dark as a nucleus" means for that scanner and stain (to 1e-4, read a chunk at a time).

    Raises:
        ValueError: the patches hold no nucleus pixel.
    """
    counts = np.zeros(len(_H_BINS) - 1, np.int64)
    for d in _chunks(store, np.asarray(indices)):
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
    """:func:`off_mask_blobs` of a store's patches ``indices``, read a chunk at a time."""
    parts = [off_mask_blobs(d["image"], d["inst"], threshold) for d in _chunks(store, np.asarray(indices))]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def compare_off_mask_blobs(synthetic: PatchStore, synthetic_indices: Sequence[int] | np.ndarray, real: PatchStore,
                           real_indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Mean :func:`off_mask_blobs` per patch of both sides, at the real side's
    :func:`nucleus_haematoxylin` (``threshold``; NaN everywhere if the real patches hold no
    nucleus), and ``ratio`` synthetic / real (NaN where the real side has none)."""
    try:
        t = nucleus_haematoxylin(real, real_indices)
    except ValueError:
        return {"threshold": float("nan"), "synthetic": float("nan"), "real": float("nan"), "ratio": float("nan")}
    syn_mean = float(store_off_mask_blobs(synthetic, synthetic_indices, t).mean())
    real_mean = float(store_off_mask_blobs(real, real_indices, t).mean())
    return {"threshold": t, "synthetic": syn_mean, "real": real_mean,
            "ratio": syn_mean / real_mean if real_mean > 0 else float("nan")}


def compare_stain(synthetic: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    """Both sides' statistics and, for ``nuclei``, ``stroma`` and ``contrast``, the ratio synthetic / real."""
    def ratio(k: str) -> float:
        r = real[k]
        return synthetic[k] / r if r and np.isfinite(r) else float("nan")

    return {"synthetic": synthetic, "real": real, "ratio": {k: ratio(k) for k in ("nuclei", "stroma", "contrast")}}


def plot_profiles(reference: tuple[str, dict[str, Any]], others: Sequence[tuple[str, dict[str, Any]]],
                  path: str | Path) -> Path:
    """Haematoxylin against the distance to the nucleus boundary: the ``reference`` (label, profile)
    in black, each of ``others`` beside it (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nasdm_aug.utils import atomic_output

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for k, (label, p) in enumerate([reference, *others]):
        ax.plot(p["distance"], p["haematoxylin"], "k-o" if k == 0 else "-s", ms=4 if k == 0 else 3,
                lw=2 if k == 0 else 1.5, label=label)
    ax.axvline(0.5, color="0.7", lw=0.8)
    ax.set_xlabel("distance to the nucleus boundary (px; inside < 0.5 < outside)")
    ax.set_ylabel("haematoxylin (optical density)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_stain_profile(stain: dict[str, Any], path: str | Path, labels: tuple[str, str] = ("real", "synthetic")) -> Path:
    """:func:`plot_profiles` of a :func:`compare_stain` result: real and synthetic, with their contrasts."""
    real, syn = stain["real"], stain["synthetic"]
    return plot_profiles((f"{labels[0]} (contrast {real['contrast']:.2f})", real["profile"]),
                         [(f"{labels[1]} (contrast {syn['contrast']:.2f})", syn["profile"])], path)
