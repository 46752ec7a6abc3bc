"""Per-image dataset splits of NASDM (Shrivastava & Fletcher 2023, Sec. 4): Test, R2, Train, and R1 a subset of
Train. Of Lizard's 238 images the paper holds out 12 for Test and 36 for R2, trains on 190, of
which 36 form R1 (the real set that synthetic patches replace or join in the studies).

On small datasets the paper's fractions alone would leave the held-out splits with one or two
images (CoNSeP's 27 would give Test a single image), so with fractions each non-zero split gets at
least ``SplitSpec.min_images`` images while Train keeps as many; and given per-image nuclei counts
per type, ``make_splits`` picks, among seeded shuffles, one whose Test, R2 and R1 each hold every
nucleus type of the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["PAPER_COUNTS", "PAPER_TOTAL", "PAPER_FRACTIONS", "TYPE_SEARCH_TRIES", "SplitSpec", "split_counts",
           "make_splits", "split_of", "split_type_coverage"]

PAPER_TOTAL = 238
# (Test, R2, R1) image counts of the paper; Train is the rest (190), R1 is taken from Train
PAPER_COUNTS = (12, 36, 36)
PAPER_FRACTIONS = tuple(c / PAPER_TOTAL for c in PAPER_COUNTS)
# further seeded shuffles ``make_splits`` tries, after the seed's own, to put every type in every split
TYPE_SEARCH_TRIES = 200
# the splits that must hold every type (Train holds R1, so it does too)
_COVERED = ("Test", "R2", "R1")


@dataclass(frozen=True)
class SplitSpec:
    """How many source images go to each split.

    Give either ``counts`` (exact numbers of images) or ``fractions`` (of the number of images,
    rounded); the default is the paper's proportions, which reproduce 12 / 36 / 190 (36 R1)
    exactly on 238 images and scale to other dataset sizes. With fractions, each split whose
    fraction is > 0 (Test, R2, R1) gets at least ``min_images`` images as long as Train keeps at
    least ``min_images`` too (27 images: Test 3, R2 4, Train 20, R1 4); see ``split_counts`` for
    datasets too small for that. ``min_images`` does not apply to explicit ``counts``.

    Attributes:
        counts: (Test, R2, R1) image counts, or None to use ``fractions``. Test + R2 may take
            every image (Train then is empty and R1 must be 0); R1 must fit in Train.
        fractions: (Test, R2, R1) fractions of all images.
        seed: seed of the shuffle that assigns images to splits.
        min_images: with fractions, the least number of images of a non-zero split (>= 1;
            1 is the plain rounding with one image kept for each non-zero split).
    """

    counts: tuple[int, int, int] | None = None
    fractions: tuple[float, float, float] = PAPER_FRACTIONS
    seed: int = 0
    min_images: int = 3

    def __post_init__(self) -> None:
        if self.counts is not None and (len(self.counts) != 3 or min(self.counts) < 0):
            raise ValueError(f"split counts must be three integers >= 0 (Test, R2, R1), got {self.counts}")
        f = self.fractions
        if len(f) != 3 or min(f) < 0 or f[0] + f[1] >= 1 or f[2] > 1 - f[0] - f[1]:
            raise ValueError(
                f"split fractions (Test, R2, R1) must be >= 0 with Test + R2 < 1 and R1 <= Train, got {f}"
            )
        if self.min_images < 1:
            raise ValueError(f"split min_images must be >= 1, got {self.min_images}")


def split_counts(n: int, spec: SplitSpec = SplitSpec()) -> dict[str, int]:
    """Number of images per split for ``n`` images.

    With explicit counts, Test and R2 take their numbers, Train the rest (possibly none) and R1
    its number from Train: ``(14, 0, 0)`` on 14 images puts every image in Test.

    With fractions, each count is ``round(fraction * n)``, raised to ``spec.min_images`` for a
    non-zero fraction (Test and R2 first, then R1 from what Train holds) as long as Train keeps
    at least ``min_images`` images: 238 images give the paper's 12 / 36 / 190 (36 R1), CoNSeP's 27
    give Test 3, R2 4, Train 20, R1 4. If the dataset is too small for that, the minimum drops
    one image at a time (Train keeping as many as the minimum) down to 1; if even one image each
    does not fit, Test, then R2, get one image while Train keeps one (3 images: one each, R1 the
    Train image; 2 images: Test 1, Train 1; 1 image: all Train). Fractions never fail for
    ``n`` >= 1, and Train always keeps at least one image.

    Returns:
        dict with keys ``Test``, ``R2``, ``Train``, ``R1``.

    Raises:
        ValueError: ``n`` < 1, or counts with Test + R2 > ``n`` or R1 > Train.
    """
    if n < 1:
        raise ValueError(f"need at least one image to split, got {n}")
    if spec.counts is not None:
        test, r2, r1 = spec.counts
        if test + r2 > n:
            raise ValueError(f"split counts Test {test} + R2 {r2} = {test + r2} images need more than the "
                             f"{n} images (Test + R2 must be <= {n})")
        train = n - test - r2
        if r1 > train:
            raise ValueError(f"split count R1 {r1} needs more than the {train} Train images "
                             f"({n} images - Test {test} - R2 {r2}); R1 is taken from Train (R1 <= Train)")
        return {"Test": test, "R2": r2, "Train": train, "R1": r1}
    f_test, f_r2, f_r1 = spec.fractions

    def at_least(frac: float, m: int) -> int:
        return max(round(frac * n), m) if frac > 0 else 0

    for m in range(spec.min_images, 0, -1):
        test, r2 = at_least(f_test, m), at_least(f_r2, m)
        train = n - test - r2
        if train >= m:
            return {"Test": test, "R2": r2, "Train": train, "R1": min(at_least(f_r1, m), train)}
    # too few images for one each: Test, then R2, take one while Train keeps one
    left = n - 1
    test = min(at_least(f_test, 1), left)
    r2 = min(at_least(f_r2, 1), left - test)
    train = n - test - r2
    return {"Test": test, "R2": r2, "Train": train, "R1": min(at_least(f_r1, 1), train)}


def _as_type_counts(type_counts, n_names: int) -> np.ndarray:
    tc = np.asarray(type_counts, dtype=float)
    if tc.ndim != 2 or tc.shape[0] != n_names:
        raise ValueError(f"type_counts must have shape [{n_names} names, n_types], got {list(tc.shape)}")
    if not np.all(np.isfinite(tc)) or (tc < 0).any():
        raise ValueError("type_counts must be finite and >= 0")
    return tc


def _coverage_score(per_split: list[np.ndarray], present: np.ndarray) -> tuple[int, float]:
    """(types present, nuclei of its rarest present type) of the worst split; higher is better."""
    worst = None
    for tc in per_split:
        sub = tc[present]
        have = sub > 0
        key = (int(have.sum()), float(sub[have].min()) if have.any() else 0.0)
        worst = key if worst is None or key < worst else worst
    return worst


def _cover_types(perm: np.ndarray, rng: np.random.Generator, uniq: list[str], keys: list[str], tc: np.ndarray,
                 counts: dict[str, int], slices: dict[str, slice], tries: int) -> np.ndarray:
    """The permutation of the groups ``uniq`` that :func:`make_splits` uses with type counts.

    ``perm`` (the seed's) if Test, R2 and R1 each hold every type present, else the first of up to
    ``tries`` further permutations drawn from ``rng`` that does, else the one with the best worst
    split (:func:`_coverage_score`; the earliest on ties).

    Args:
        keys: the group of each image, the rows of ``tc`` (nuclei per type per image).
        counts, slices: the splits' sizes (:func:`split_counts`) and their places in a permutation.
    """
    index = {g: i for i, g in enumerate(uniq)}
    per_group = np.zeros((len(uniq), tc.shape[1]))
    np.add.at(per_group, [index[k] for k in keys], tc)
    present = per_group.sum(axis=0) > 0
    covered = [s for s in _COVERED if counts[s] > 0]
    if not (covered and present.any()):
        return perm
    best, best_score = perm, None
    for attempt in range(tries + 1):
        cand = perm if attempt == 0 else rng.permutation(len(uniq))
        score = _coverage_score([per_group[cand[slices[s]]].sum(axis=0) for s in covered], present)
        if score[0] == int(present.sum()):  # every split holds every type
            best = cand
            break
        if best_score is None or score > best_score:
            best, best_score = cand, score
    return best


def make_splits(
    names: Sequence[str], spec: SplitSpec = SplitSpec(), groups: Sequence[str] | None = None,
    type_counts: np.ndarray | Sequence[Sequence[float]] | None = None, *, tries: int = TYPE_SEARCH_TRIES,
) -> dict[str, list[str]]:
    """Assign source images to Test, R2 and Train (disjoint), and R1 inside Train.

    The assignment is a seeded shuffle of the sorted group names, so it depends only on the set
    of names and the seed, not on the order they were read in: the sorted groups are ordered by
    ``np.random.default_rng(spec.seed).permutation``, and the first ones go to Test, the next to
    R2, the rest to Train, whose first ones form R1.

    With ``type_counts``, the seed's permutation is kept if Test, R2 and R1 (those with at least
    one image) each hold every type present in the dataset; otherwise up to ``tries`` further
    permutations drawn from the same seeded generator are tried in turn, and the first that does
    is used. If none does, the one with the best worst split is used: most types present, then
    most nuclei of its rarest present type (the earliest such permutation on ties). The result is
    deterministic given the names, groups, counts and seed. Without ``type_counts`` the seed's
    permutation is always used.

    Args:
        names: image names (unique).
        spec: counts or fractions, and the seed.
        groups: optional group key per name (e.g. the Lizard image a CoNIC patch came from);
            images of one group share a split, and counts then count groups.
        type_counts: optional [len(names), n_types] nuclei per type per image (in the order of
            ``names``); a group's counts are the sums over its images.
        tries: the most further permutations to try for type coverage.

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
    bounds = np.cumsum([0, counts["Test"], counts["R2"]])
    slices = {"Test": slice(bounds[0], bounds[1]), "R2": slice(bounds[1], bounds[2]),
              "R1": slice(bounds[2], bounds[2] + counts["R1"])}
    rng = np.random.default_rng(spec.seed)
    perm = rng.permutation(len(uniq))
    if type_counts is not None:
        perm = _cover_types(perm, rng, uniq, keys, _as_type_counts(type_counts, len(names)), counts, slices, tries)
    order = [uniq[i] for i in perm]
    of_group = {g: "Test" if k < bounds[1] else "R2" if k < bounds[2] else "Train" for k, g in enumerate(order)}
    r1_groups = set(order[slices["R1"]])
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


def split_type_coverage(
    splits: dict[str, list[str]], names: Sequence[str], type_counts: np.ndarray | Sequence[Sequence[float]]
) -> dict[str, list[int]]:
    """Nuclei per type in each split: split name -> ``type_counts`` summed over its images.

    Args:
        splits: split name -> image names (as ``make_splits`` returns).
        names: image names, the rows of ``type_counts``.
        type_counts: [len(names), n_types] nuclei per type per image.

    Raises:
        ValueError: a split names an image that is not in ``names``.
    """
    tc = _as_type_counts(type_counts, len(names))
    row = {n: i for i, n in enumerate(names)}
    out = {}
    for split, members in splits.items():
        missing = sorted(set(members) - set(row))
        if missing:
            raise ValueError(f"split {split} names images not in names: {missing[:5]}")
        total = tc[[row[n] for n in members]].sum(axis=0) if members else np.zeros(tc.shape[1])
        out[split] = [int(round(v)) for v in total]
    return out
