"""Mixing NASDM synthetic patches into training: a MONAI Dataset and swap transforms (paper Sec. 4.3)."""

from nasdm_aug.mixing.array import PatchGenerator, RandSyntheticSwap
from nasdm_aug.mixing.balance import BalanceSynthesisPlan, plan_balance_synthesis, resolve_target, type_counts
from nasdm_aug.mixing.dataset import HoVerTargetsd, LoadMixPatchd, SyntheticMixDataset, open_store
from nasdm_aug.mixing.dictionary import RandSyntheticSwapd, RandSyntheticSwapD, RandSyntheticSwapDict
from nasdm_aug.mixing.plan import (MIX_MODES, MODES, MixConfig, MixMode, MixPlan, Mode, build_plan, check_bank_fits,
                                   count_of, planned_counts)

__all__ = [
    "SyntheticMixDataset", "MixConfig", "MixPlan", "MODES", "Mode", "MixMode", "MIX_MODES", "build_plan",
    "check_bank_fits", "count_of", "planned_counts",
    "LoadMixPatchd", "HoVerTargetsd", "open_store",
    "RandSyntheticSwap", "RandSyntheticSwapd", "RandSyntheticSwapD", "RandSyntheticSwapDict", "PatchGenerator",
    "type_counts", "resolve_target", "plan_balance_synthesis", "BalanceSynthesisPlan",
]
