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
  (:func:`nasdm_aug.data.stain.off_mask_blobs`): in real patches mostly nuclei nobody annotated, necrotic debris and
  tissue dye; in synthetic ones, nuclei the generator drew where its mask has none.

Each is a mean over patches of per-patch means, so every patch weighs the same, as in FID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nasdm_aug.data.stain import (
    BLOB_DARK_GREY,
    BLOB_MARGIN_PX,
    BLOB_MIN_AREA_PX,
    haematoxylin,
    nucleus_haematoxylin,
    off_mask_blobs,
    read_chunks,
    store_off_mask_blobs,
)
from nasdm_aug.data.store import PatchStore

__all__ = ["STROMA_MARGIN_PX", "PROFILE_DISTANCES", "BLOB_MARGIN_PX", "BLOB_MIN_AREA_PX", "BLOB_DARK_GREY",
           "haematoxylin", "stain_statistics", "compare_stain", "store_stain", "nucleus_haematoxylin",
           "off_mask_blobs", "store_off_mask_blobs", "compare_off_mask_blobs", "plot_profiles", "plot_stain_profile"]

STROMA_MARGIN_PX = 3  # "stroma" starts this far from a nucleus: past the boundary's blur and the mask's slack
PROFILE_DISTANCES = tuple(range(-4, 7))


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


def store_stain(store: PatchStore, indices: Sequence[int] | np.ndarray, *, margin: float = STROMA_MARGIN_PX,
                distances: Sequence[int] = PROFILE_DISTANCES) -> dict[str, Any]:
    """:func:`stain_statistics` of a store's patches ``indices``, read a chunk at a time."""
    sums = _Sums(distances)
    for d in read_chunks(store, np.asarray(indices)):
        sums.add(d["image"], d["inst"], margin)
    return sums.result()


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
