"""The mixing modes as records: each :class:`MixMode` in ``MIX_MODES`` (keyed by :class:`Mode`)
owns its default ratio and valid range, whether it needs a bank, its count rule and its planner.
A new mode is one ``Mode`` member, one count rule, one planner and one record here (docs/architecture.md).

The modes follow the NASDM paper's studies: addition (Sec. 4.3.3), replacement (Sec. 4.3.4) and
synthetic versus real (Sec. 4.3.5), plus rare-type balancing and a real-only baseline.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from nasdm_aug.mixing.balance import (
    greedy_balance, l1_to_target, named_values, needed_types, resolve_target, type_counts,
)
from nasdm_aug.utils import InputError
from nasdm_aug.mixing.plan_items import (MixPlan, PlanInputs, bank_candidates, spread_pick, add_count, count_of,
                                         group_by_parent)

__all__ = ["Mode", "MixMode", "MIX_MODES", "MODES"]


# -- planners: one per mode, named in its MixMode record ------------------------------------------------
def _plan_real(inp: PlanInputs) -> MixPlan:
    n_take = _counts_real(len(inp.split_idx), inp.ratio, inp.config.base_fraction, 0)[0]
    chosen = np.sort(inp.rng.choice(inp.split_idx, n_take, replace=False)) if n_take < len(inp.split_idx) \
        else inp.split_idx
    return MixPlan(inp.config, np.zeros(len(chosen), np.uint8), chosen, chosen.copy(), len(inp.split_idx))


def _plan_add(inp: PlanInputs) -> MixPlan:
    n = len(inp.split_idx)
    # 1. the real base: a seeded fraction of the split
    n_base, n_syn = _counts_add(n, inp.ratio, inp.config.base_fraction, 0)
    base = np.sort(inp.rng.choice(inp.split_idx, n_base, replace=False))
    # 2. eligible synthetic patches: parents in the split but not in the base (no mask leak)
    outside = np.setdiff1d(inp.split_idx, base)
    # ratio 0 (the base alone) needs no bank
    cand = bank_candidates(inp, outside) if n_syn else np.zeros(0, np.int64)
    if n_syn > len(cand):
        raise InputError(
            f"mode 'add': ratio {inp.ratio:g} asks for {n_syn} synthetic patches ({inp.ratio:g} x {n} real "
            f"patches of {inp.where()}) but {inp.bank.path} has only {len(cand)} whose parents are in the "
            f"split outside the {len(base)}-patch base{inp.filter_note()}")
    syn = np.sort(spread_pick(cand, inp.bank.meta("parent")[cand], n_syn, inp.rng)) if n_syn else cand
    origin = np.r_[np.zeros(len(base), np.uint8), np.ones(len(syn), np.uint8)]
    mask = np.r_[base, inp.bank.meta("parent")[syn] if n_syn else syn].astype(np.int64)
    return MixPlan(inp.config, origin, np.r_[base, syn].astype(np.int64), mask, n, base=base)


def _plan_replace(inp: PlanInputs) -> MixPlan:
    n = len(inp.split_idx)
    n_rep = _counts_replace(n, inp.ratio, inp.config.base_fraction, 0)[1]
    by_parent = group_by_parent(inp.bank) if n_rep else {}
    if inp.keep is None:
        chosen = np.sort(inp.rng.choice(inp.split_idx, n_rep, replace=False))
    else:  # only real patches with a counterpart that passes the filter can be replaced
        by_parent = {p: g for p, g in ((p, inp.kept(g)) for p, g in by_parent.items()) if len(g)}
        eligible = inp.split_idx[np.isin(inp.split_idx, list(by_parent))]
        if n_rep > len(eligible):
            raise InputError(
                f"mode 'replace': ratio {inp.ratio:g} replaces {n_rep} real patches of {inp.where()} but only "
                f"{len(eligible)} have a counterpart in {inp.bank.path}{inp.filter_note()}")
        chosen = np.sort(inp.rng.choice(eligible, n_rep, replace=False))
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


def _plan_synthetic(inp: PlanInputs) -> MixPlan:
    parents = inp.split_idx if inp.config.split is not None else None
    cand = bank_candidates(inp, parents)
    n_take = _counts_synthetic(len(inp.split_idx), inp.ratio, inp.config.base_fraction, len(cand))[1]
    if n_take == 0:
        raise InputError(f"mode 'synthetic': {inp.bank.path} has no patches to take from {inp.where()} "
                         f"({len(cand)} eligible, ratio {inp.ratio:g}{inp.filter_note()})")
    syn = np.sort(spread_pick(cand, inp.bank.meta("parent")[cand], n_take, inp.rng))
    mask = inp.bank.meta("parent")[syn].astype(np.int64)
    return MixPlan(inp.config, np.ones(len(syn), np.uint8), syn.astype(np.int64), mask, len(inp.split_idx))


def _plan_balance(inp: PlanInputs) -> MixPlan:
    n = len(inp.split_idx)
    table = inp.real.type_table
    # 1. eligible bank patches: generated masks, or masks of the split itself (never a held-out mask)
    par = inp.bank.meta("parent")
    cand = inp.kept(np.flatnonzero((par < 0) | np.isin(par, inp.split_idx)).astype(np.int64))
    # 2. per-type nuclei counts of the real split and of every candidate, and the target shares
    before = type_counts(inp.real, inp.split_idx).sum(0)
    target = resolve_target(inp.config.target, table, before, str(inp.bank.path))
    cand_counts = type_counts(inp.bank, cand)
    need = needed_types(before, target)
    lacking = [table.names[k] for k in np.flatnonzero(need & ~(cand_counts > 0).any(0))]
    if lacking:
        raise InputError(f"mode 'balance': {inp.bank.path} has no patch holding type {lacking[0]!r}"
                         f"{' (nor ' + ', '.join(map(repr, lacking[1:])) + ')' if lacking[1:] else ''}, which the "
                         f"target needs more of{inp.filter_note()}; synthesize some (nasdm-aug synthesize "
                         "--balance-for) or change the target")
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
    planner: Callable[[PlanInputs], MixPlan]
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
