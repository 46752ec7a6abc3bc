"""Mixing NASDM synthetic patches into training: a MONAI Dataset and swap transforms (paper Sec. 4.3),
plus the copy-paste baseline (``RandNucleiPasted``) and recombined masks for rare types.

The plans, modes and balance planning import without MONAI, so the CLI can list the modes at
start-up; the MONAI dataset and transforms load on first use (as ``hovernet`` does).
"""

from nasdm_aug.mixing.balance import BalanceSynthesisPlan, plan_balance_synthesis, resolve_target, type_counts
from nasdm_aug.mixing.plan import (MIX_MODES, MODES, MixConfig, MixMode, MixPlan, Mode, build_plan, check_bank_fits,
                                   count_of, planned_counts)

__all__ = [
    "SyntheticMixDataset", "MixConfig", "MixPlan", "MODES", "Mode", "MixMode", "MIX_MODES", "build_plan",
    "check_bank_fits", "count_of", "planned_counts",
    "LoadMixPatchd", "HoVerTargetsd", "open_store",
    "RandSyntheticSwap", "RandSyntheticSwapd", "RandSyntheticSwapD", "RandSyntheticSwapDict", "PatchGenerator",
    "type_counts", "resolve_target", "plan_balance_synthesis", "BalanceSynthesisPlan",
    "RandNucleiPasted", "NucleusPool", "PasteOptions", "recombine_masks", "recombine_parents",
]

_LAZY = {
    "PatchGenerator": "nasdm_aug.mixing.array", "RandSyntheticSwap": "nasdm_aug.mixing.array",
    "SyntheticMixDataset": "nasdm_aug.mixing.dataset", "LoadMixPatchd": "nasdm_aug.mixing.dataset",
    "HoVerTargetsd": "nasdm_aug.mixing.dataset", "open_store": "nasdm_aug.mixing.dataset",
    "RandSyntheticSwapd": "nasdm_aug.mixing.dictionary", "RandSyntheticSwapD": "nasdm_aug.mixing.dictionary",
    "RandSyntheticSwapDict": "nasdm_aug.mixing.dictionary",
    "RandNucleiPasted": "nasdm_aug.mixing.copy_paste", "NucleusPool": "nasdm_aug.mixing.paste",
    "PasteOptions": "nasdm_aug.mixing.paste", "recombine_masks": "nasdm_aug.mixing.recombine",
    "recombine_parents": "nasdm_aug.mixing.recombine",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nasdm_aug.mixing' has no attribute {name!r}")
