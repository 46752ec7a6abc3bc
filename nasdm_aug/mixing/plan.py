"""Mixing plans: which real and which synthetic patches a training set holds.

The modes follow the NASDM paper's studies: addition (Sec. 4.3.3), replacement (Sec. 4.3.4) and
synthetic versus real (Sec. 4.3.5), plus rare-type balancing and a real-only baseline. A plan is
seeded and deterministic.

Each mode is one :class:`MixMode` record in ``MIX_MODES`` (keyed by :class:`Mode`): its default
ratio and valid range, whether it needs a bank, its count rule and its planner. A new mode is one
record and one planner here; the studies ask :func:`planned_counts` instead of keeping a copy.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from nasdm_aug.config import ConfigBase
from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.balance import (check_target_name, greedy_balance, l1_to_target, named_values, needed_types,
                                      resolve_target, type_counts)
from nasdm_aug.data.magnification import check_same_scale
from nasdm_aug.utils import InputError

__all__ = ["MODES", "Mode", "MixMode", "MIX_MODES", "MixConfig", "MixPlan", "build_plan", "check_bank_fits", "count_of",
           "planned_counts"]

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


@dataclass(frozen=True)
class MixConfig(ConfigBase):
    """How a mixed training set is drawn (validated on construction).

    Args:
        mode: ``"add"``, ``"replace"``, ``"synthetic"``, ``"real"`` or ``"balance"`` (see ``SyntheticMixDataset``).
        split: real split the plan draws from (``"Train"``, ``"R1"``, ``"R2"``); None = whole store.
        ratio: mode-specific fraction (``add``: synthetic count / real split size, >= 0;
            ``replace``: fraction replaced, in [0, 1]; ``synthetic`` / ``real``: fraction taken,
            in (0, 1]; ``balance``: most synthetic patches / real split size, in (0, 1]); None takes
            ``MIX_MODES[mode].default_ratio``.
        base_fraction: ``add`` only: fraction of the real split kept as the real base, in (0, 1].
        include_generated: ``add`` / ``synthetic``: also draw bank patches made from generated
            masks (parent -1); they carry no real mask, so they cannot leak one.
        seed: seed of the plan's generator.
        target: ``balance`` only: the target type distribution: ``"uniform"``, ``"sqrt"`` (square
            roots of the real split's counts), a dict ``{type name: weight}`` (unnamed types weigh
            0) or a tuple of ``n_types`` weights.
    """

    mode: str = "add"
    split: str | None = "Train"
    ratio: float | None = None
    base_fraction: float = 0.25
    include_generated: bool = False
    seed: int = 0
    target: str | tuple[float, ...] | dict[str, float] = "sqrt"

    def __post_init__(self) -> None:
        if isinstance(self.target, (list, tuple)):  # JSON gives a list; keep the config hashable-ish
            object.__setattr__(self, "target", tuple(float(w) for w in self.target))
        if isinstance(self.target, str):
            check_target_name(self.target)
        if isinstance(self.mode, Mode):  # stored as its name: configs are JSON
            object.__setattr__(self, "mode", self.mode.value)
        if self.mode not in MIX_MODES:
            raise InputError(f"unknown mixing mode {self.mode!r}; valid: {', '.join(MODES)}")
        lo, hi, lo_incl = MIX_MODES[self.mode].ratio_range
        r = self.resolved_ratio
        if not (math.isfinite(r) and (r > lo or (lo_incl and r == lo)) and r <= hi):
            rng = f"{'[' if lo_incl else '('}{lo:g}, {hi:g}]" if hi != math.inf else f"[{lo:g}, inf)"
            raise InputError(f"ratio {r:g} is outside {rng} for mode {self.mode!r} ({MIX_MODES[self.mode].meaning})")
        if not 0.0 < self.base_fraction <= 1.0:
            raise InputError(f"base_fraction {self.base_fraction:g} is outside (0, 1]")

    @property
    def resolved_ratio(self) -> float:
        """The ratio in force: ``ratio`` or the mode's default."""
        return float(MIX_MODES[self.mode].default_ratio if self.ratio is None else self.ratio)


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
    """

    config: MixConfig
    origin: np.ndarray
    index: np.ndarray
    mask: np.ndarray
    n_split: int
    base: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stats: dict = field(default_factory=dict)
    sources: tuple[str, str] = ("", "")

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


def check_bank_fits(real: PatchStore, bank: PatchStore) -> None:
    """Check that a synthetic bank can be mixed with a real store.

    Raises:
        InputError: the bank is not synthetic, its patch size or type table differs, or a
            parent index points outside the real store.
    """
    if bank.origin != "synthetic":
        raise InputError(f"{bank.path}: origin is {bank.origin!r}; a synthetic bank must be a PatchStore "
                         "written with origin='synthetic'")
    if bank.patch_size != real.patch_size:
        raise InputError(f"{bank.path}: patch size {bank.patch_size} does not match the real store's "
                         f"{real.patch_size} ({real.path})")
    check_same_scale(f"bank {bank.path}", bank.scale_info(), f"the real store {real.path}", real.scale_info())
    if bank.type_table != real.type_table:
        raise InputError(f"{bank.path}: type table {bank.type_table.name!r} ({bank.type_table.n_types} types) "
                         f"does not match the real store's {real.type_table.name!r} "
                         f"({real.type_table.n_types} types, {real.path})")
    parents = bank.meta("parent")
    if len(parents) and int(parents.max()) >= len(real):
        raise InputError(f"{bank.path}: parent index {int(parents.max())} is outside the real store's "
                         f"{len(real)} patches ({real.path}); was the bank made from another store?")


@dataclass
class _Inputs:
    real: PatchStore
    bank: PatchStore | None
    split_idx: np.ndarray  # [n] sorted real indices of the split
    config: MixConfig
    rng: np.random.Generator

    @property
    def ratio(self) -> float:
        return self.config.resolved_ratio

    def where(self) -> str:
        return "the whole store" if self.config.split is None else f"split {self.config.split!r}"


def build_plan(real: PatchStore, bank: PatchStore | None, config: MixConfig) -> MixPlan:
    """Draw the items of a mixed dataset (deterministic for a given config and stores).

    Args:
        real: the real PatchStore.
        bank: the synthetic PatchStore (its ``parent`` metadata indexes ``real``), or None.
        config: mode, split, ratio, base fraction and seed.

    Returns:
        The ``MixPlan``.

    Raises:
        InputError: an empty split, a missing or unfit bank, too few eligible synthetic patches
            for the ratio, or (``replace``) a chosen real patch without a synthetic counterpart.
    """
    if bank is not None:
        check_bank_fits(real, bank)
    if MIX_MODES[config.mode].needs_bank(config.resolved_ratio) and bank is None:
        raise InputError(f"mode {config.mode!r} with ratio {config.resolved_ratio:g} needs a synthetic bank; "
                         "pass synthetic=PATH")
    split_idx = np.sort(real.indices(config.split)).astype(np.int64)
    if len(split_idx) == 0:
        raise InputError(f"{real.path}: split {config.split!r} holds no patches")
    inputs = _Inputs(real, bank, split_idx, config, np.random.default_rng(config.seed))
    plan = MIX_MODES[config.mode].planner(inputs)
    sources = (str(real.path), "" if bank is None else str(bank.path))
    return dataclasses.replace(plan, sources=sources)


# -- planners: one per mode, named in its MixMode record ------------------------------------------------
def _plan_real(inp: _Inputs) -> MixPlan:
    n_take = _counts_real(len(inp.split_idx), inp.ratio, inp.config.base_fraction, 0)[0]
    chosen = np.sort(inp.rng.choice(inp.split_idx, n_take, replace=False)) if n_take < len(inp.split_idx) \
        else inp.split_idx
    return MixPlan(inp.config, np.zeros(len(chosen), np.uint8), chosen, chosen.copy(), len(inp.split_idx))


def _plan_add(inp: _Inputs) -> MixPlan:
    n = len(inp.split_idx)
    # 1. the real base: a seeded fraction of the split
    n_base, n_syn = _counts_add(n, inp.ratio, inp.config.base_fraction, 0)
    base = np.sort(inp.rng.choice(inp.split_idx, n_base, replace=False))
    # 2. eligible synthetic patches: parents in the split but not in the base (no mask leak)
    outside = np.setdiff1d(inp.split_idx, base)
    cand = _bank_candidates(inp, outside)
    if n_syn > len(cand):
        raise InputError(
            f"mode 'add': ratio {inp.ratio:g} asks for {n_syn} synthetic patches ({inp.ratio:g} x {n} real "
            f"patches of {inp.where()}) but {inp.bank.path} has only {len(cand)} whose parents are in the "
            f"split outside the {len(base)}-patch base")
    syn = np.sort(_spread_pick(cand, inp.bank.meta("parent")[cand], n_syn, inp.rng))
    origin = np.r_[np.zeros(len(base), np.uint8), np.ones(len(syn), np.uint8)]
    mask = np.r_[base, inp.bank.meta("parent")[syn]].astype(np.int64)
    return MixPlan(inp.config, origin, np.r_[base, syn].astype(np.int64), mask, n, base=base)


def _plan_replace(inp: _Inputs) -> MixPlan:
    n = len(inp.split_idx)
    n_rep = _counts_replace(n, inp.ratio, inp.config.base_fraction, 0)[1]
    chosen = np.sort(inp.rng.choice(inp.split_idx, n_rep, replace=False))
    by_parent = group_by_parent(inp.bank) if n_rep else {}
    missing = [int(r) for r in chosen if int(r) not in by_parent]
    if missing:
        covered = int(np.isin(inp.split_idx, list(by_parent)).sum())
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(
            f"mode 'replace': real patch {missing[0]}{more} chosen from {inp.where()} has no synthetic "
            f"counterpart in {inp.bank.path} (the bank covers {covered} of the split's {n} patches)")
    origin = np.zeros(n, np.uint8)
    index = inp.split_idx.copy()
    pos = np.searchsorted(inp.split_idx, chosen)
    for p, r in zip(pos, chosen):  # one counterpart per chosen patch, in place: the masks stay the same
        options = by_parent[int(r)]
        index[p] = options[inp.rng.integers(len(options))] if len(options) > 1 else options[0]
        origin[p] = 1
    return MixPlan(inp.config, origin, index, inp.split_idx.copy(), n)


def _plan_synthetic(inp: _Inputs) -> MixPlan:
    parents = inp.split_idx if inp.config.split is not None else None
    cand = _bank_candidates(inp, parents)
    n_take = _counts_synthetic(len(inp.split_idx), inp.ratio, inp.config.base_fraction, len(cand))[1]
    if n_take == 0:
        raise InputError(f"mode 'synthetic': {inp.bank.path} has no patches to take from {inp.where()} "
                         f"({len(cand)} eligible, ratio {inp.ratio:g})")
    syn = np.sort(_spread_pick(cand, inp.bank.meta("parent")[cand], n_take, inp.rng))
    mask = inp.bank.meta("parent")[syn].astype(np.int64)
    return MixPlan(inp.config, np.ones(len(syn), np.uint8), syn.astype(np.int64), mask, len(inp.split_idx))


def _plan_balance(inp: _Inputs) -> MixPlan:
    n = len(inp.split_idx)
    table = inp.real.type_table
    # 1. eligible bank patches: generated masks, or masks of the split itself (never a held-out mask)
    par = inp.bank.meta("parent")
    cand = np.flatnonzero((par < 0) | np.isin(par, inp.split_idx)).astype(np.int64)
    # 2. per-type nuclei counts of the real split and of every candidate, and the target shares
    before = type_counts(inp.real, inp.split_idx).sum(0)
    target = resolve_target(inp.config.target, table, before, str(inp.bank.path))
    cand_counts = type_counts(inp.bank, cand)
    need = needed_types(before, target)
    lacking = [table.names[k] for k in np.flatnonzero(need & ~(cand_counts > 0).any(0))]
    if lacking:
        raise InputError(f"mode 'balance': {inp.bank.path} has no patch holding type {lacking[0]!r}"
                         f"{' (nor ' + ', '.join(map(repr, lacking[1:])) + ')' if lacking[1:] else ''}, which the "
                         f"target needs more of; synthesize some (nasdm-aug synthesize --balance-for) or change the target")
    # 3. greedy choice under the cap; the seeded permutation breaks ties
    cap = _counts_balance(n, inp.ratio, inp.config.base_fraction, len(cand))[1]
    perm = inp.rng.permutation(len(cand))
    picks = greedy_balance(before, cand_counts[perm], target, cap)
    syn = np.sort(cand[perm[picks]])
    after = before + cand_counts[perm[picks]].sum(0)
    stats = {"target": named_values(target, table, 4),
             "nuclei before": named_values(before, table), "nuclei after": named_values(after, table),
             "L1 to target": f"{l1_to_target(before, target):.4f} -> {l1_to_target(after, target):.4f}",
             "synthetic cap": f"{len(syn)} of at most {cap} ({len(cand)} eligible in the bank)"}
    origin = np.r_[np.zeros(n, np.uint8), np.ones(len(syn), np.uint8)]
    mask = np.r_[inp.split_idx, par[syn]].astype(np.int64)
    return MixPlan(inp.config, origin, np.r_[inp.split_idx, syn].astype(np.int64), mask, n, stats=stats)


# -- count rules: (n_split, ratio, base_fraction, n_candidates) -> (real items, synthetic items) -------
def _counts_real(n: int, ratio: float, base: float, cand: int) -> tuple[int, int]:
    return count_of(ratio, n), 0


def _counts_add(n: int, ratio: float, base: float, cand: int) -> tuple[int, int]:
    return count_of(base, n), add_count(base, ratio, n)


def _counts_replace(n: int, ratio: float, base: float, cand: int) -> tuple[int, int]:
    n_rep = count_of(ratio, n)
    return n - n_rep, n_rep


def _counts_synthetic(n: int, ratio: float, base: float, cand: int) -> tuple[int, int]:
    return 0, count_of(ratio, cand)  # a fraction of the eligible bank patches, not of the split


def _counts_balance(n: int, ratio: float, base: float, cand: int) -> tuple[int, int]:
    return n, int(math.floor(ratio * n + 1e-9))  # at most: only patches that move the counts are taken


class Mode(str, enum.Enum):
    """The mixing modes (a ``str``: ``Mode.ADD == "add"``)."""

    ADD = "add"
    REPLACE = "replace"
    SYNTHETIC = "synthetic"
    REAL = "real"
    BALANCE = "balance"


@dataclass(frozen=True)
class MixMode:
    """Everything a mixing mode is.

    Attributes:
        mode: its :class:`Mode`.
        default_ratio: the ratio when none is given.
        ratio_range: (low, high, low inclusive); high is always inclusive.
        meaning: what the ratio means, for messages.
        needs_bank: ``needs_bank(ratio)``: whether a plan with this ratio draws synthetic patches.
        counts: the count rule ``(n_split, ratio, base_fraction, n_candidates) -> (real, synthetic)``
            that the planner itself uses (``balance``: the synthetic count is a cap).
        planner: builds the :class:`MixPlan`.
        synthetic_is_cap: True where fewer synthetic patches than counted may be taken.
    """

    mode: Mode
    default_ratio: float
    ratio_range: tuple[float, float, bool]
    meaning: str
    needs_bank: Callable[[float], bool]
    counts: Callable[[int, float, float, int], tuple[int, int]]
    planner: Callable[[_Inputs], MixPlan]
    synthetic_is_cap: bool = False


MIX_MODES: dict[str, MixMode] = {m.mode.value: m for m in (
    MixMode(Mode.ADD, 0.5, (0.0, math.inf, True), "synthetic patches as a fraction of the real split",
            lambda r: r > 0, _counts_add, _plan_add),
    MixMode(Mode.REPLACE, 0.5, (0.0, 1.0, True), "fraction of the real split replaced by synthetic counterparts",
            lambda r: r > 0, _counts_replace, _plan_replace),
    MixMode(Mode.SYNTHETIC, 1.0, (0.0, 1.0, False), "fraction of the eligible synthetic patches taken",
            lambda r: True, _counts_synthetic, _plan_synthetic),
    MixMode(Mode.REAL, 1.0, (0.0, 1.0, False), "fraction of the real split taken",
            lambda r: False, _counts_real, _plan_real),
    MixMode(Mode.BALANCE, 0.5, (0.0, 1.0, False), "most synthetic patches as a fraction of the real split",
            lambda r: True, _counts_balance, _plan_balance, synthetic_is_cap=True),
)}
MODES = tuple(MIX_MODES)


def planned_counts(config: MixConfig, n_split: int, n_candidates: int | None = None) -> tuple[int, int]:
    """(real, synthetic) items a plan of ``config`` holds for a split of ``n_split`` patches, by the
    rule its planner uses.

    ``n_candidates`` is the number of eligible bank patches, which only mode "synthetic" counts
    from; None assumes one synthetic patch per mask of the split (what the studies' banks hold).
    For mode "balance" the synthetic count is the cap (``MIX_MODES["balance"].synthetic_is_cap``).
    """
    rule = MIX_MODES[config.mode].counts
    return rule(n_split, config.resolved_ratio, config.base_fraction, n_split if n_candidates is None else n_candidates)


# -- helpers ---------------------------------------------------------------------------------------
def _bank_candidates(inp: _Inputs, parents: np.ndarray | None) -> np.ndarray:
    """Bank indices whose parent is in ``parents`` (all with a parent when None), plus generated ones if asked."""
    par = inp.bank.meta("parent")
    keep = (par >= 0) if parents is None else np.isin(par, parents)
    if inp.config.include_generated:
        keep |= par < 0
    return np.flatnonzero(keep).astype(np.int64)


def group_by_parent(bank: PatchStore) -> dict[int, np.ndarray]:
    """Bank indices per real parent index (generated patches, parent -1, left out), in bank order."""
    par = bank.meta("parent")
    order = np.argsort(par, kind="stable")
    uniq, starts = np.unique(par[order], return_index=True)
    groups = np.split(order, starts[1:])
    return {int(p): g.astype(np.int64) for p, g in zip(uniq, groups) if p >= 0}


def _spread_pick(cand: np.ndarray, parents: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
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
