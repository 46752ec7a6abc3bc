"""Mixing plans: which real and which synthetic patches a training set holds.

A plan is seeded and deterministic: :func:`build_plan` checks the stores and hands the draw to
the planner of the config's mode (``mixing/modes.py``: one record per mode); the studies ask
:func:`planned_counts` for the sizes instead of keeping a copy of the rules.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from nasdm_aug.config import ConfigBase
from nasdm_aug.data.magnification import check_same_scale
from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.balance import check_target_name
from nasdm_aug.mixing.fidelity_filter import check_fidelity_filter, fidelity_keep
from nasdm_aug.utils import InputError, unknown_name
from nasdm_aug.mixing.modes import MIX_MODES, MODES, MixMode, Mode
from nasdm_aug.mixing.plan_items import MixPlan, PlanInputs, add_count, count_of, describe_filter, group_by_parent

__all__ = ["MODES", "Mode", "MixMode", "MIX_MODES", "MixConfig", "MixPlan", "build_plan", "check_bank_fits", "count_of",
           "add_count", "group_by_parent", "planned_counts"]


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
        min_fidelity: draw only bank patches whose fidelity score (``nasdm-aug score``,
            :mod:`nasdm_aug.scoring`) is at least this, in [0, 1].
        top_fraction: draw only the best this fraction of the bank's scored patches, in (0, 1]
            (:func:`nasdm_aug.scoring.select_by_fidelity`). Not with ``min_fidelity``. With either
            filter, ``replace`` replaces only real patches that have a counterpart passing it.
    """

    mode: str = "add"
    split: str | None = "Train"
    ratio: float | None = None
    base_fraction: float = 0.25
    include_generated: bool = False
    seed: int = 0
    target: str | tuple[float, ...] | dict[str, float] = "sqrt"
    min_fidelity: float | None = None
    top_fraction: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target, (list, tuple)):  # JSON gives a list; keep the config hashable-ish
            object.__setattr__(self, "target", tuple(float(w) for w in self.target))
        if isinstance(self.target, str):
            check_target_name(self.target)
        if isinstance(self.mode, Mode):  # stored as its name: configs are JSON
            object.__setattr__(self, "mode", self.mode.value)
        if self.mode not in MIX_MODES:
            raise unknown_name("mixing mode", self.mode, MODES)
        lo, hi, lo_incl = MIX_MODES[self.mode].ratio_range
        r = self.resolved_ratio
        if not (math.isfinite(r) and (r > lo or (lo_incl and r == lo)) and r <= hi):
            rng = f"{'[' if lo_incl else '('}{lo:g}, {hi:g}]" if hi != math.inf else f"[{lo:g}, inf)"
            raise InputError(f"ratio {r:g} is outside {rng} for mode {self.mode!r} ({MIX_MODES[self.mode].meaning})")
        if not 0.0 < self.base_fraction <= 1.0:
            raise InputError(f"base_fraction {self.base_fraction:g} is outside (0, 1]")
        check_fidelity_filter(self.min_fidelity, self.top_fraction)

    @property
    def filters_bank(self) -> bool:
        """Whether a fidelity filter (``min_fidelity`` or ``top_fraction``) is set."""
        return self.min_fidelity is not None or self.top_fraction is not None

    @property
    def resolved_ratio(self) -> float:
        """The ratio in force: ``ratio`` or the mode's default."""
        return float(MIX_MODES[self.mode].default_ratio if self.ratio is None else self.ratio)


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
            for the ratio, or (``replace``) a chosen real patch without a synthetic counterpart;
            a fidelity filter without a bank, or with a bank not (or not wholly) scored.
    """
    if bank is not None:
        check_bank_fits(real, bank)
    if MIX_MODES[config.mode].needs_bank(config.resolved_ratio) and bank is None:
        raise InputError(f"mode {config.mode!r} with ratio {config.resolved_ratio:g} needs a synthetic bank; "
                         "pass synthetic=PATH")
    keep = None
    if config.filters_bank:
        if bank is None:
            raise InputError(f"{describe_filter(config.min_fidelity, config.top_fraction)} filters the patches of a "
                             "synthetic bank, but no bank was given")
        keep = fidelity_keep(bank, config.min_fidelity, config.top_fraction)
    split_idx = np.sort(real.indices(config.split)).astype(np.int64)
    if len(split_idx) == 0:
        raise InputError(f"{real.path}: split {config.split!r} holds no patches")
    inputs = PlanInputs(real, bank, split_idx, config, np.random.default_rng(config.seed), keep)
    plan = MIX_MODES[config.mode].planner(inputs)
    sources = (str(real.path), "" if bank is None else str(bank.path))
    kept = None if keep is None else (int(keep.sum()), len(keep))
    return dataclasses.replace(plan, sources=sources, fidelity_kept=kept)


def planned_counts(config: MixConfig, n_split: int, n_candidates: int | None = None) -> tuple[int, int]:
    """(real, synthetic) items a plan of ``config`` holds for a split of ``n_split`` patches, by the
    rule its planner uses.

    ``n_candidates`` is the number of eligible bank patches, which only mode "synthetic" counts
    from; None assumes one synthetic patch per mask of the split (what the studies' banks hold).
    For mode "balance" the synthetic count is the cap (``MIX_MODES["balance"].synthetic_is_cap``).
    """
    rule = MIX_MODES[config.mode].counts
    return rule(n_split, config.resolved_ratio, config.base_fraction, n_split if n_candidates is None else n_candidates)
