"""Recombined masks for rare types: real nuclei of the types a split lacks, placed into real masks
of that split, as new layouts for the patch model without the mask model (as DiffMix does on CoNSeP).

How :func:`recombine_masks` makes them:

1. Take the split's masks (all, in order, for ``n`` None; else ``n`` spread evenly, seeded) and
   count their nuclei per type; resolve ``target`` (as in
   :func:`~nasdm_aug.mixing.balance.resolve_target`: ``"sqrt"`` from the split's counts).
2. Plan the additions one nucleus at a time: each step adds the type (of those the split's pool
   holds) that lowers the L1 distance of the shares to the target most, which is always one below
   its target share at that step; stop when none lowers it or at ``max_per_mask`` per mask on
   average.
3. Deal the planned nuclei out over the masks (seeded, evenly) and place each as a real nucleus of
   its type from the split's other patches (never the mask's own), drawn uniformly, with the
   placement of :func:`~nasdm_aug.mixing.paste.place_nucleus`: no overlap, ``paste.margin`` pixels
   clear of every nucleus. A nucleus that finds no room moves on to the next mask; a mask takes at
   most ``max_per_mask``. What is left at the end is recorded as not placed.

The original nuclei keep their ids, pixels and types; added ones get ids above them.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.balance import (Target, greedy_balance, l1_to_target, named_values, needed_types, resolve_target,
                                      type_counts)
from nasdm_aug.mixing.paste import NucleusPool, PasteOptions, place_nucleus
from nasdm_aug.utils import InputError

__all__ = ["recombine_masks", "recombine_parents"]


def _open(store: PatchStore | str | os.PathLike) -> PatchStore:
    return store if isinstance(store, PatchStore) else PatchStore(store)


def _pick(n_split: int, n: int | None, rng: np.random.RandomState) -> np.ndarray:
    """Positions in the split of the masks to recombine: all in order (None), or ``n`` of them
    spread evenly (each mask once before any twice), sorted."""
    if n is None:
        return np.arange(n_split)
    if n < 1:
        raise InputError(f"n must be >= 1 (or None for every mask of the split), got {n}")
    rounds = int(math.ceil(n / n_split))
    return np.sort(np.concatenate([rng.permutation(n_split) for _ in range(rounds)])[:n])


def _split_indices(store: PatchStore, split: str | None) -> np.ndarray:
    idx = np.sort(store.indices(split)).astype(np.int64)
    if len(idx) == 0:
        raise InputError(f"{store.path}: split {split!r} holds no patches")
    return idx


def recombine_parents(store: PatchStore | str | os.PathLike, split: str | None, n: int | None = None,
                      seed: int = 0) -> np.ndarray:
    """The real masks :func:`recombine_masks` starts from, as store indices, in output order (cheap:
    no nucleus is placed).

    Raises:
        InputError: a split the store lacks or that is empty, or ``n`` < 1.
    """
    store = _open(store)
    idx = _split_indices(store, split)
    return idx[_pick(len(idx), n, np.random.RandomState(seed))]


def recombine_masks(store: PatchStore | str | os.PathLike, split: str | None, *, target: Target = "sqrt",
                    n: int | None = None, seed: int = 0, max_per_mask: int = 8, paste: PasteOptions | None = None,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Real masks of a split with real nuclei of its rare types added, moving the type shares toward
    ``target`` (the three steps are in the module docstring). The original nuclei keep their ids,
    pixels and types; added ones get ids above them.

    Args:
        store: the real PatchStore (or its path).
        split: its split (None: every patch).
        target: ``"uniform"``, ``"sqrt"``, ``{type name: weight}`` or ``n_types`` weights.
        n: masks to make (None: one per mask of the split).
        seed: seeds the choice of masks, the dealing and every placement.
        max_per_mask: most nuclei added to one mask.
        paste: area bounds, flips, scale, margin and tries (``allow_overlap`` is ignored: the
            original nuclei always stay whole).
        progress: show a tqdm bar over the masks.

    Returns:
        ``(inst int32 [N, H, W], type uint8 [N, H, W], record)``; ``record`` (JSON-able) holds
        ``store``, ``split``, ``target`` (shares per type), ``target_given``, ``seed``, ``n``, ``max_per_mask``,
        ``paste``, ``parents`` (the store index each mask started from), ``pool`` (usable nuclei
        per type in the split: a small pool means each is pasted many times), ``nuclei_before``,
        ``nuclei_planned``, ``nuclei_added``, ``nuclei_after`` and ``not_placed`` (per type), and
        ``l1_before`` / ``l1_after`` (distance of the shares to the target).

    Raises:
        InputError: an empty or missing split, ``n`` < 1, ``max_per_mask`` < 1, a bad target, a
            split already at the target, or one whose lacking types have no nucleus to paste.
    """
    store = _open(store)
    if max_per_mask < 1:
        raise InputError(f"max_per_mask must be >= 1, got {max_per_mask}")
    opts = (paste or PasteOptions()).replace(allow_overlap=False)
    table = store.type_table
    idx = _split_indices(store, split)
    rng = np.random.RandomState(seed)
    pos = _pick(len(idx), n, rng)
    parents = idx[pos]
    per_patch = type_counts(store, idx)
    shares = resolve_target(target, table, per_patch.sum(0), str(store.path))
    before = per_patch[pos].sum(0)
    pool, addable = _usable_pool(store, split, idx, opts, needed_types(before, shares), progress)
    # 1. the plan: one nucleus per step, of the type that most lowers the L1 distance (only a type
    #    below its target share can lower it, so no other is ever added)
    steps = greedy_balance(before, np.eye(table.n_types)[addable], shares, max_per_mask * len(pos), replace=True)
    planned = addable[steps]
    # 2. dealt out evenly: mask order and nucleus order both shuffled
    rng.shuffle(planned)
    order = rng.permutation(len(pos))
    quota = {int(m): planned[r::len(pos)].tolist() for r, m in enumerate(order)}
    data = store.read(parents, keys=("inst", "type"))
    inst, type_map = data["inst"].astype(np.int32), data["type"].astype(np.uint8)
    added, carry = _place_all(inst, type_map, parents, order, quota, pool, rng, opts, max_per_mask, progress)
    counts = {"pool": pool.counts(), "nuclei_before": before,
              "nuclei_planned": np.bincount(planned, minlength=table.n_types), "nuclei_added": added,
              "nuclei_after": before + added,
              "not_placed": np.bincount(np.asarray(carry, np.int64), minlength=table.n_types)}
    return inst, type_map, _record(store, split, target, shares, seed, max_per_mask, opts, parents, counts)


def _record(store: PatchStore, split: str | None, target: Target, shares: np.ndarray, seed: int, max_per_mask: int,
            opts: PasteOptions, parents: np.ndarray, counts: dict[str, np.ndarray]) -> dict[str, Any]:
    """The JSON-able record of a recombination (see :func:`recombine_masks`); ``counts`` are the
    per-type counts by record key."""
    table = store.type_table
    given = (target if isinstance(target, str) else dict(target) if isinstance(target, Mapping)
             else [float(w) for w in target])
    return {"store": str(store.path), "split": split, "target": named_values(shares, table, 4), "target_given": given,
            "seed": int(seed), "n": int(len(parents)), "max_per_mask": int(max_per_mask), "paste": opts.to_dict(),
            "parents": parents.tolist(), **{k: named_values(v, table) for k, v in counts.items()},
            "l1_before": l1_to_target(counts["nuclei_before"], shares),
            "l1_after": l1_to_target(counts["nuclei_after"], shares)}


def _usable_pool(store: PatchStore, split: str | None, idx: np.ndarray, opts: PasteOptions, need: np.ndarray,
                 progress: bool) -> tuple[NucleusPool, np.ndarray]:
    """The split's nuclei that can be pasted, and the type positions (0-based) it holds any of.

    Raises:
        InputError: the split lacks no type (``need`` is all false), or holds no usable nucleus of
            any type it lacks.
    """
    table = store.type_table
    if not need.any():
        raise InputError(f"{store.path}: split {split!r} is already at the target shares; nothing to add")
    pool = NucleusPool(store, idx, opts, with_image=False, progress=progress)
    if not (need & (pool.counts() > 0)).any():
        lacking = ", ".join(table.names[k] for k in np.flatnonzero(need))
        raise InputError(f"{store.path}: split {split!r} lacks {lacking} but holds no usable nucleus of "
                         f"{'it' if np.sum(need) == 1 else 'them'} to add (see PasteOptions min_area, whole_only)")
    return pool, np.flatnonzero(pool.counts() > 0)


def _place_all(inst: np.ndarray, type_map: np.ndarray, parents: np.ndarray, order: np.ndarray,
               quota: dict[int, list[int]], pool: NucleusPool, rng: np.random.RandomState, opts: PasteOptions,
               max_per_mask: int, progress: bool) -> tuple[np.ndarray, list[int]]:
    """Place each mask's quota of nuclei (type positions) into ``inst`` / ``type_map`` in place, in
    ``order``; a nucleus that finds no room, or meets a full or crowded mask, moves on to the next.

    Returns:
        (nuclei added per type, the type positions of those never placed).
    """
    added = np.zeros(pool.n_types, np.int64)
    carry: list[int] = []
    for m in tqdm(order, desc="recombine", unit="mask", disable=not progress, leave=False):
        m = int(m)
        todo, carry = carry + quota[m], []
        next_id = int(inst[m].max(initial=0)) + 1
        placed = failed = 0
        for k in todo:
            if placed >= max_per_mask or failed >= max_per_mask:  # full, or crowded: leave the rest to the next mask
                carry.append(k)
                continue
            j = pool.draw(k + 1, rng, exclude=int(parents[m]))
            spot = None if j is None else place_nucleus(inst[m], type_map[m], pool, j, rng, opts, next_id)
            if spot is None:
                carry.append(k)
                failed += 1
                continue
            next_id += 1
            placed += 1
            added[k] += 1
    return added, carry
