"""Which masks a bank starts from: :func:`plan_jobs` (one parent index per patch) and
:func:`combination_presence` (the type-presence vectors of explicit combinations)."""

from __future__ import annotations

import numpy as np

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.balance import parse_combination, split_combination
from nasdm_aug.synthesize.config import Source, SynthesizeConfig
from nasdm_aug.utils import InputError

__all__ = ["plan_jobs", "combination_presence"]


def combination_presence(combinations: tuple[str, ...], table) -> np.ndarray:
    """Presence vectors float32 [N, n_types] for ``("name+name:count", ...)``, in order.

    Raises:
        InputError: a type name the table lacks.
    """
    rows = [parse_combination(c, table) for c in combinations]
    return np.concatenate([np.tile(row, (n, 1)) for row, n in rows]).astype(np.float32)


def plan_jobs(config: SynthesizeConfig) -> np.ndarray:
    """Parent index of every patch to make (-1 for generated masks; for recombined ones the real
    mask they started from), in output order.

    Raises:
        InputError: an unreadable store, a split it lacks, indices out of range, or no masks at all.
    """
    if config.source is Source.TYPES:
        return np.full(config.num, -1, np.int64)
    if config.source is Source.COMBINATIONS:
        return np.full(sum(split_combination(c)[1] for c in config.combinations), -1, np.int64)
    if config.source is Source.RECOMBINE:
        from nasdm_aug.mixing.recombine import recombine_parents

        r = config.recombine
        return recombine_parents(r.store, r.split, r.n or None, config.seed)
    store = PatchStore(config.masks)
    if config.indices:
        bad = [i for i in config.indices if not 0 <= i < len(store)]
        if bad:
            raise InputError(f"{config.masks}: indices {bad[:5]} are outside 0..{len(store) - 1}")
        jobs = np.asarray(config.indices, np.int64)
    else:
        jobs = store.indices(config.split or None).astype(np.int64)
    if len(jobs) == 0:
        where = f"split {config.split!r} of " if config.split else ""
        raise InputError(f"{config.masks}: {where}the store holds no masks to synthesize from")
    return jobs
