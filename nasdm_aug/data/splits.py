"""Per-image dataset splits of NASDM (Oh et al. 2023, Sec. 4): Test, R2, Train, and R1 a subset of
Train. Of Lizard's 238 images the paper holds out 12 for Test and 36 for R2, trains on 190, of
which 36 form R1 (the real set that synthetic patches replace or join in the studies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["PAPER_COUNTS", "PAPER_TOTAL", "PAPER_FRACTIONS", "SplitSpec", "split_counts", "make_splits", "split_of"]

PAPER_TOTAL = 238
# (Test, R2, R1) image counts of the paper; Train is the rest (190), R1 is taken from Train
PAPER_COUNTS = (12, 36, 36)
PAPER_FRACTIONS = tuple(c / PAPER_TOTAL for c in PAPER_COUNTS)


@dataclass(frozen=True)
class SplitSpec:
    """How many source images go to each split.

    Give either ``counts`` (exact numbers of images) or ``fractions`` (of the number of images,
    rounded); the default is the paper's proportions, which reproduce 12 / 36 / 190 (36 R1)
    exactly on 238 images and scale to other dataset sizes.

    Attributes:
        counts: (Test, R2, R1) image counts, or None to use ``fractions``.
        fractions: (Test, R2, R1) fractions of all images.
        seed: seed of the shuffle that assigns images to splits.
    """

    counts: tuple[int, int, int] | None = None
    fractions: tuple[float, float, float] = PAPER_FRACTIONS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.counts is not None and (len(self.counts) != 3 or min(self.counts) < 0):
            raise ValueError(f"split counts must be three integers >= 0 (Test, R2, R1), got {self.counts}")
        f = self.fractions
        if len(f) != 3 or min(f) < 0 or f[0] + f[1] >= 1 or f[2] > 1 - f[0] - f[1]:
            raise ValueError(
                f"split fractions (Test, R2, R1) must be >= 0 with Test + R2 < 1 and R1 <= Train, got {f}"
            )


def split_counts(n: int, spec: SplitSpec = SplitSpec()) -> dict[str, int]:
    """Number of images per split for ``n`` images.

    With fractions, each count is ``round(fraction * n)``, raised to 1 for a non-zero fraction
    as long as Train keeps at least one image (so 27 CoNSeP images give Test 1, R2 4, Train 22,
    R1 4); Test and R2 come first, then R1 from what Train holds.

    Returns:
        dict with keys ``Test``, ``R2``, ``Train``, ``R1``.

    Raises:
        ValueError: counts that need more images than there are, or ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"need at least one image to split, got {n}")
    if spec.counts is not None:
        test, r2, r1 = spec.counts
        if test + r2 >= n or r1 > n - test - r2:
            raise ValueError(f"split counts Test {test}, R2 {r2}, R1 {r1} need more than the {n} images "
                             "(Train must keep at least one image and hold R1)")
        return {"Test": test, "R2": r2, "Train": n - test - r2, "R1": r1}
    counts = []
    left = n - 1  # Train keeps at least one image
    for frac in spec.fractions[:2]:
        c = min(max(round(frac * n), 1 if frac > 0 else 0), left)
        counts.append(c)
        left -= c
    test, r2 = counts
    train = n - test - r2
    r1 = min(max(round(spec.fractions[2] * n), 1 if spec.fractions[2] > 0 else 0), train)
    return {"Test": test, "R2": r2, "Train": train, "R1": r1}


def make_splits(
    names: Sequence[str], spec: SplitSpec = SplitSpec(), groups: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Assign source images to Test, R2 and Train (disjoint), and R1 inside Train.

    The assignment is a seeded shuffle of the sorted group names, so it depends only on the set
    of names and the seed, not on the order they were read in.

    Args:
        names: image names (unique).
        spec: counts or fractions, and the seed.
        groups: optional group key per name (e.g. the Lizard image a CoNIC patch came from);
            images of one group share a split, and counts then count groups.

    Returns:
        dict split name -> sorted image names, with keys ``Test``, ``R2``, ``Train``, ``R1``.
    """
    if len(set(names)) != len(names):
        raise ValueError("image names must be unique")
    keys = list(groups) if groups is not None else list(names)
    if len(keys) != len(names):
        raise ValueError(f"{len(keys)} groups for {len(names)} names")
    uniq = sorted(set(keys))
    counts = split_counts(len(uniq), spec)
    order = [uniq[i] for i in np.random.default_rng(spec.seed).permutation(len(uniq))]
    bounds = np.cumsum([0, counts["Test"], counts["R2"]])
    of_group = {g: "Test" if k < bounds[1] else "R2" if k < bounds[2] else "Train" for k, g in enumerate(order)}
    r1_groups = set(order[bounds[2]:bounds[2] + counts["R1"]])
    out: dict[str, list[str]] = {"Test": [], "R2": [], "Train": [], "R1": []}
    for name, key in zip(names, keys):
        out[of_group[key]].append(name)
        if key in r1_groups:
            out["R1"].append(name)
    return {k: sorted(v) for k, v in out.items()}


def split_of(splits: dict[str, list[str]]) -> dict[str, str]:
    """Image name -> its one disjoint split (``Test``, ``R2`` or ``Train``; R1 images say ``R1``).

    R1 images are recorded as ``R1`` in the per-patch ``split`` metadata so the column tells
    them apart; they still belong to Train in the store's splits (``store.indices("Train")``).
    """
    out = {n: s for s in ("Test", "R2", "Train") for n in splits.get(s, [])}
    out.update({n: "R1" for n in splits.get("R1", [])})
    return out
