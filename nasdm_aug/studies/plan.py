"""How each study row trains: the planned data sizes, the epoch under equal steps, the HoVerNet
recipe, the validation draw, and the training set itself (mixed, pasted, filtered, repeated)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing import SyntheticMixDataset
from nasdm_aug.mixing.balance import parse_target
from nasdm_aug.mixing.plan import MIX_MODES, planned_counts
from nasdm_aug.studies.config import StudyConfig
from nasdm_aug.studies.registry import STUDY_REGISTRY, StudyRow

__all__ = ["plan_study", "epoch_patches", "study_epochs", "protocol", "hovernet_config", "validation_data",
           "training_data"]


def plan_study(store: PatchStore, rows: Sequence[StudyRow], config: StudyConfig) -> list[dict[str, Any]]:
    """The runs a study would do with their data sizes, computed from the real store alone.

    Returns:
        one dict per run: ``study``, ``row``, ``seed``, ``n_real``, ``n_synthetic``, ``n_patches``, and
        ``upto`` (True where ``n_synthetic`` is a cap: balance picks only the patches that help).
    """
    runs = []
    epochs = study_epochs(store, rows, config)
    for row in rows:
        epoch = epochs[row.study]
        # the planner's own count rule; the studies' banks hold one synthetic patch per mask
        n_real, n_syn = planned_counts(row.mix_config(), len(store.indices(row.split)))
        for k in range(config.n_runs):
            runs.append({"study": row.study, "row": row.label, "seed": config.seed + k, "n_real": n_real,
                         "n_synthetic": n_syn, "n_patches": n_real + n_syn,
                         "upto": MIX_MODES[row.mode].synthetic_is_cap, "epoch_patches": epoch or n_real + n_syn})
    return runs


def epoch_patches(store: PatchStore, rows: Sequence[StudyRow], config: StudyConfig) -> int | None:
    """Patches per epoch under equal steps (``config.epoch_patches``, else the largest row's planned
    size); None under the epoch protocol (each row's epoch is its own data). ``config.equal_steps``
    None leaves the choice to the study's record."""
    equal = config.equal_steps
    if equal is None:
        equal = all(STUDY_REGISTRY[s].equal_steps for s in {r.study for r in rows})
    if not equal:
        return None
    if config.epoch_patches:
        return config.epoch_patches
    return max(sum(planned_counts(r.mix_config(), len(store.indices(r.split)))) for r in rows)


def study_epochs(store: PatchStore, rows: Sequence[StudyRow], config: StudyConfig) -> dict[str, int | None]:
    """:func:`epoch_patches` of each study among ``rows`` (equal steps hold within a study)."""
    return {s: epoch_patches(store, [r for r in rows if r.study == s], config) for s in dict.fromkeys(r.study for r in rows)}


def protocol(config: StudyConfig, epoch: int | None) -> str:
    """One line saying how long each row trains, for the report."""
    cfg = hovernet_config(config, config.seed)
    steps = f"{cfg.phase1_epochs} + {cfg.phase2_epochs} epochs, batch {cfg.batch_size}"
    stain = (f" HoVerNet's augmentation adds H&E stain jitter (scale {cfg.hed_scale:g}, shift {cfg.hed_shift:g})."
             if cfg.hed_scale or cfg.hed_shift else "")
    if epoch is None:
        return (f"Equal epochs (the paper's protocol): every row trains {steps} over its own data, so a row with "
                "more patches also takes more optimiser steps." + stain)
    n = -(-epoch // cfg.batch_size) * cfg.epochs
    return (f"Equal steps: every row trains {steps} of {epoch} patches ({n} optimiser steps, the same learning-rate "
            "schedule in steps); a row with fewer patches repeats its own, each repeat augmented afresh." + stain)


def hovernet_config(config: StudyConfig, seed: int):
    """The HoVerNet recipe of one run: the preset with the study's epochs, batch size and stain jitter,
    and the run's seed."""
    from hovernet.config import get_hovernet_preset

    cfg = get_hovernet_preset(config.hovernet_preset).replace(seed=seed, device=config.device)
    if config.epochs:
        cfg = cfg.replace(phase1_epochs=config.epochs[0], phase2_epochs=config.epochs[1],
                          lr_decay_epoch=max(1, min(cfg.lr_decay_epoch, max(config.epochs) - 1)))
    if config.batch_size:
        cfg = cfg.replace(batch_size=config.batch_size)
    if config.hed_jitter:
        cfg = cfg.replace(hed_scale=config.hed_jitter[0], hed_shift=config.hed_jitter[1])
    return cfg


def validation_data(store: PatchStore, config: StudyConfig):
    """``config.val_patches`` patches of Train outside R1, drawn with the study's seed (None for 0)."""
    if not config.val_patches:
        return None
    import torch

    pool = np.setdiff1d(store.indices("Train"), store.indices("R1") if "R1" in store.splits else [])
    chosen = np.sort(np.random.default_rng(config.seed).permutation(pool)[: config.val_patches])
    all_train = SyntheticMixDataset(store, split=None, mode="real", ratio=1.0)
    return torch.utils.data.Subset(all_train, chosen.tolist())


def training_data(row: StudyRow, seed: int, store: PatchStore, bank: PatchStore | None, config: StudyConfig,
                  epoch: int | None = None) -> tuple[SyntheticMixDataset, Any]:
    """The row's mixed dataset, and what HoVerNet trains on: the same, or under equal steps its
    items repeated (a seeded permutation per pass) to ``epoch`` items.

    A ``paste`` row pastes real nuclei of its own real patches into them (``RandNucleiPasted``),
    seeded by ``seed``; a ``filtered`` row draws only the bank's best patches by fidelity score.
    """
    target = parse_target(config.balance_target)
    mix = row.mix_config(seed, target, top_fraction=config.filter_top_fraction,
                         min_fidelity=config.filter_min_fidelity)
    transform = None
    if row.paste:
        from nasdm_aug.mixing.copy_paste import RandNucleiPasted
        from nasdm_aug.mixing.plan import build_plan

        real = build_plan(store, bank, mix).indices("real")  # paste only from the row's own labels
        weights = config.balance_target if row.paste == "target" else row.paste
        transform = RandNucleiPasted(store, prob=config.paste_prob, split=row.split, indices=real,
                                     type_weights=_weights(weights)).prepare()
        transform.set_random_state(seed)
    data = SyntheticMixDataset.from_config(store, bank, mix, transform=transform)
    if epoch is None or epoch == len(data):
        return data, data
    import torch

    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(data)) for _ in range(-(-epoch // len(data)))])[:epoch]
    return data, torch.utils.data.Subset(data, order.tolist())


def _weights(spec: str) -> Any:
    """A type weighting for ``RandNucleiPasted``: a name as it is, ``name=w,...`` as a dict."""
    return parse_target(spec) if "=" in spec else spec.strip().lower()
