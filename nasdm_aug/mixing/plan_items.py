"""The items of a mixing plan and what the planners share: exact counts of fractions, the plan
record (origin, index and real mask of every item) and the picks from a synthetic bank."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from nasdm_aug.data.store import PatchStore


__all__ = ["MixPlan", "PlanInputs", "count_of", "add_count", "group_by_parent", "bank_candidates", "spread_pick",
           "describe_filter", "ORIGIN_NAMES"]

ORIGIN_NAMES = ("real", "synthetic")


def count_of(fraction: float, n: int) -> int:
    """Exact count for a fraction of ``n`` items: round half up, ``floor(fraction * n + 0.5)``.

    Python's ``round`` rounds half to even (``round(2.5) == 2``); half-up is what a reader of
    "25% of 10" expects (3). The tiny epsilon absorbs float error such as ``0.15 * 10``.
    """
    return int(math.floor(fraction * n + 0.5 + 1e-9))


def add_count(base_fraction: float, ratio: float, n: int) -> int:
    """Synthetic patches of mode "add": ``count_of(ratio, n)``, but never more than the masks
    outside the base when base and ratio together are at most the whole split: rounding both half
    up would otherwise ask 25% + 75% of 34 patches for 9 + 26, one more than the 25 left."""
    n_syn = count_of(ratio, n)
    if base_fraction + ratio <= 1.0 + 1e-9:
        n_syn = min(n_syn, n - count_of(base_fraction, n))
    return n_syn


def describe_filter(min_fidelity: float | None, top_fraction: float | None) -> str:
    """A fidelity filter in words: ``"min_fidelity 0.5"``, ``"top_fraction 0.25"`` or ``""`` (none)."""
    if min_fidelity is not None:
        return f"min_fidelity {min_fidelity:g}"
    return "" if top_fraction is None else f"top_fraction {top_fraction:g}"


@dataclass(frozen=True, eq=False)
class MixPlan:
    """The exact items of a mixed dataset, in order.

    Attributes:
        config: the config that made the plan.
        origin: [N] uint8, 0 = real store, 1 = synthetic bank.
        index: [N] int64, patch index in that store.
        mask: [N] int64, index of the real patch whose mask the item carries (the item itself
            when real, the bank's ``parent`` when synthetic; -1 for a generated mask).
        n_split: number of real patches in the split.
        base: real indices of the ``add`` base (empty for other modes).
        stats: extra named numbers for the summary (a place for later modes, e.g. per-type counts).
        sources: display names of the real store and the bank.
        fidelity_kept: with a fidelity filter (``config.min_fidelity`` / ``top_fraction``), the
            bank patches it kept and the bank's size; None without one.
    """

    config: Any  # the nasdm_aug.mixing.plan.MixConfig (not imported: plan builds on this module)
    origin: np.ndarray
    index: np.ndarray
    mask: np.ndarray
    n_split: int
    base: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stats: dict = field(default_factory=dict)
    sources: tuple[str, str] = ("", "")
    fidelity_kept: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.entries())

    def entries(self) -> list[tuple[str, int]]:
        """``[(origin name, store index), ...]`` in dataset order."""
        return [(ORIGIN_NAMES[o], int(i)) for o, i in zip(self.origin, self.index)]

    def counts(self) -> dict[str, int]:
        """Number of items per origin: ``{"real": ..., "synthetic": ...}``."""
        n_syn = int(self.origin.sum())
        return {"real": len(self) - n_syn, "synthetic": n_syn}

    def indices(self, origin: str) -> np.ndarray:
        """Store indices of the items of one origin (``"real"`` or ``"synthetic"``), in plan order."""
        return self.index[self.origin == ORIGIN_NAMES.index(origin)]

    def summary(self) -> str:
        """A few printable lines saying exactly what the dataset holds."""
        c, cfg = self.counts(), self.config
        split = "whole store" if cfg.split is None else f"split {cfg.split!r}"
        lines = [
            f"mix plan: mode {cfg.mode!r}, {split}, ratio {cfg.resolved_ratio:g}, seed {cfg.seed}",
            f"  real store {self.sources[0]}: {self.n_split} patches in the split",
        ]
        if cfg.mode == "add":
            lines.append(f"  base: {len(self.base)} real patches ({cfg.base_fraction:g} of {self.n_split}); "
                         f"synthetic parents all outside the base")
        if self.sources[1]:
            lines.append(f"  synthetic bank {self.sources[1]}")
        if self.fidelity_kept is not None:
            kept, total = self.fidelity_kept
            lines.append(f"  fidelity filter {describe_filter(cfg.min_fidelity, cfg.top_fraction)}: kept {kept} of "
                         f"the bank's {total} patches")
        lines += [f"  {k}: {_stat(v)}" for k, v in self.stats.items()]
        lines.append(f"  items: {len(self)} = {c['real']} real + {c['synthetic']} synthetic")
        for name in ORIGIN_NAMES:
            lines.append(f"  {name} indices: {_short(self.indices(name))}")
        return "\n".join(lines)


def _stat(value: Any) -> str:
    if isinstance(value, Mapping):  # per-type numbers: "neutrophil 12, epithelial 300, ..."
        return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _short(idx: np.ndarray, k: int = 12) -> str:
    head = ", ".join(str(int(i)) for i in idx[:k])
    return f"[{head}{', ...' if len(idx) > k else ''}] ({len(idx)})"


@dataclass
class PlanInputs:
    real: PatchStore
    bank: PatchStore | None
    split_idx: np.ndarray  # [n] sorted real indices of the split
    config: Any  # the nasdm_aug.mixing.plan.MixConfig (not imported: plan builds on this module)
    rng: np.random.Generator
    keep: np.ndarray | None = None  # [len(bank)] bool: patches passing the fidelity filter; None: no filter

    @property
    def ratio(self) -> float:
        return self.config.resolved_ratio

    def where(self) -> str:
        return "the whole store" if self.config.split is None else f"split {self.config.split!r}"

    def kept(self, bank_idx: np.ndarray) -> np.ndarray:
        """The bank indices among ``bank_idx`` that the fidelity filter keeps (all without one)."""
        return bank_idx if self.keep is None else bank_idx[self.keep[bank_idx]]

    def filter_note(self) -> str:
        """``"; min_fidelity 0.5 keeps 20 of the bank's 30 patches"`` for messages about too few
        candidates; "" without a filter."""
        if self.keep is None:
            return ""
        return (f"; {describe_filter(self.config.min_fidelity, self.config.top_fraction)} keeps "
                f"{int(self.keep.sum())} of the bank's {len(self.keep)} patches")


# -- helpers ---------------------------------------------------------------------------------------
def bank_candidates(inp: PlanInputs, parents: np.ndarray | None) -> np.ndarray:
    """Bank indices whose parent is in ``parents`` (all with a parent when None), plus generated ones if
    asked, less those the fidelity filter leaves out."""
    par = inp.bank.meta("parent")
    keep = (par >= 0) if parents is None else np.isin(par, parents)
    if inp.config.include_generated:
        keep |= par < 0
    if inp.keep is not None:
        keep &= inp.keep
    return np.flatnonzero(keep).astype(np.int64)


def group_by_parent(bank: PatchStore) -> dict[int, np.ndarray]:
    """Bank indices per real parent index (generated patches, parent -1, left out), in bank order."""
    par = bank.meta("parent")
    order = np.argsort(par, kind="stable")
    uniq, starts = np.unique(par[order], return_index=True)
    groups = np.split(order, starts[1:])
    return {int(p): g.astype(np.int64) for p, g in zip(uniq, groups) if p >= 0}


def spread_pick(cand: np.ndarray, parents: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``k`` of ``cand`` at random, spreading over distinct masks first.

    When a bank holds several synthetic patches per mask, a plain random draw could take two of
    one mask before any of another; here round ``r`` takes the ``r``-th patch of every mask (masks
    in random order) before round ``r + 1`` starts. Generated patches (parent -1) each count as
    their own mask.
    """
    if k == 0:
        return np.zeros(0, np.int64)
    perm = rng.permutation(len(cand))
    cand, parents = cand[perm], parents[perm].astype(np.int64)
    groups = np.where(parents >= 0, parents, -2 - np.arange(len(parents)))  # generated: unique keys
    _, group_id = np.unique(groups, return_inverse=True)
    group_rank = rng.permutation(group_id.max() + 1)[group_id]
    occurrence = np.zeros(len(cand), np.int64)  # r-th member of its group in the shuffled order
    seen: dict[int, int] = {}
    for j, g in enumerate(group_id):
        occurrence[j] = seen.get(int(g), 0)
        seen[int(g)] = occurrence[j] + 1
    order = np.lexsort((group_rank, occurrence))
    return cand[order[:k]]
