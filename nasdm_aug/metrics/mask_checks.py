"""Checks of the NASDM mask model (Shrivastava & Fletcher, 2023): does it obey the requested nuclei types
(precision/recall per type) and do its masks look like real ones (Wasserstein distances)?
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import wasserstein_distance
from skimage.measure import regionprops

__all__ = ["types_present", "type_control", "nuclei_statistics", "mask_realism"]

SHAPE_KEYS = ("area", "eccentricity", "solidity")


def types_present(type_maps: np.ndarray, n_types: int) -> np.ndarray:
    """Multi-hot presence of each type in each mask.

    Args:
        type_maps: uint8 [N, H, W] type maps (ids 1..n_types, 0 background).
        n_types: number of types.

    Returns:
        bool [N, n_types]; column k is type k + 1.
    """
    type_maps = np.asarray(type_maps)
    if type_maps.ndim != 3:
        raise ValueError(f"expected type maps [N, H, W], got shape {type_maps.shape}")
    return np.stack([(type_maps == k + 1).any((1, 2)) for k in range(n_types)], 1)


def type_control(requested: np.ndarray, present: np.ndarray, type_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-type precision and recall of generated masks against the requested types.

    Precision: of masks holding type k, the share that asked for it; recall: of masks that asked
    for type k, the share that hold it.

    Args:
        requested: bool [N, T] types asked of the mask model; present: bool [N, T] types found.
        type_names: the T type names.

    Returns:
        {name: {"precision", "recall", "requested", "present"}} plus ``"all"`` (micro-averaged);
        ``nan`` where a denominator is 0.
    """
    req, pre = np.asarray(requested, bool), np.asarray(present, bool)
    if req.shape != pre.shape or req.ndim != 2 or req.shape[1] != len(type_names):
        raise ValueError(f"requested {req.shape} and present {pre.shape} must both be [N, {len(type_names)}]")

    def _row(r: np.ndarray, p: np.ndarray) -> dict[str, float]:
        tp = float((r & p).sum())
        return {"precision": tp / p.sum() if p.sum() else math.nan, "recall": tp / r.sum() if r.sum() else math.nan,
                "requested": float(r.sum()), "present": float(p.sum())}

    out = {name: _row(req[:, k], pre[:, k]) for k, name in enumerate(type_names)}
    out["all"] = _row(req.ravel(), pre.ravel())
    return out


def nuclei_statistics(insts: np.ndarray, type_maps: np.ndarray, n_types: int) -> dict[str, np.ndarray]:
    """Per-patch nuclei counts and per-nucleus size and shape of a set of masks.

    Args:
        insts: int [N, H, W] instance maps; type_maps: uint8 [N, H, W] type maps.
        n_types: number of types.

    Returns:
        dict with ``count`` [N] nuclei per patch, ``count/<k>`` [N] per type id k, and for every
        nucleus ``area``, ``eccentricity``, ``solidity`` [M] and ``type`` [M] (majority type id).
    """
    insts, type_maps = np.asarray(insts), np.asarray(type_maps)
    if insts.shape != type_maps.shape or insts.ndim != 3:
        raise ValueError(f"insts {insts.shape} and type maps {type_maps.shape} must both be [N, H, W]")
    counts = np.zeros((len(insts), n_types + 1), np.int64)
    rows: dict[str, list[float]] = {k: [] for k in (*SHAPE_KEYS, "type")}
    for i, (inst, typ) in enumerate(zip(insts, type_maps)):
        for region in regionprops(inst.astype(np.int32)):
            vals = typ[tuple(region.coords.T)]
            t = int(np.bincount(vals, minlength=n_types + 1)[1:].argmax() + 1) if (vals > 0).any() else 0
            counts[i, t] += 1
            rows["area"].append(region.area)
            rows["eccentricity"].append(region.eccentricity)
            rows["solidity"].append(region.solidity)
            rows["type"].append(t)
    out = {k: np.asarray(v, np.float64) for k, v in rows.items()}
    out["count"] = counts.sum(1)
    for k in range(1, n_types + 1):
        out[f"count/{k}"] = counts[:, k]
    return out


def contact_statistics(insts: np.ndarray) -> dict[str, np.ndarray]:
    """How nuclei lie against each other: whether touching nuclei are kept apart as instances.

    A generated mask can hold the right number of nuclei and still draw a sheet of epithelium as a
    few large instances, or as many instances tiled into one solid region with no background
    between them. These statistics show both, beside the same ones of real masks.

    Args:
        insts: int [N, H, W] instance maps.

    Returns:
        dict with ``touching`` [M], 1.0 for a nucleus 4-adjacent to another nucleus (0.0 if not),
        in the order of ``nuclei_statistics``' per-nucleus arrays (region label order per patch),
        and ``cluster`` [K], the number of nuclei in each 4-connected component of the foreground.
    """
    from skimage.measure import label as cc_label

    from nasdm_aug.data.masks import _touching_edges

    insts = np.asarray(insts)
    if insts.ndim != 3:
        raise ValueError(f"insts must be [N, H, W], got {insts.shape}")
    touching: list[np.ndarray] = []
    cluster: list[np.ndarray] = []
    for inst in insts.astype(np.int64):
        ids = np.unique(inst[inst > 0])
        if not len(ids):
            continue
        # the mask representation's own touching-edge map: pixels 4-adjacent to another nucleus
        touching.append(np.isin(ids, inst[_touching_edges(inst)]).astype(np.float64))
        fg = inst > 0
        comp = cc_label(fg, connectivity=1)
        # distinct (region, nucleus) pairs, counted per region
        regions = np.unique(np.stack([comp[fg], inst[fg]]), axis=1)[0]
        cluster.append(np.bincount(regions)[1:].astype(np.float64))
    empty = np.zeros(0, np.float64)
    return {"touching": np.concatenate(touching) if touching else empty,
            "cluster": np.concatenate(cluster) if cluster else empty}


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    return float(wasserstein_distance(a, b)) if len(a) and len(b) else math.nan


def mask_realism(generated: dict[str, np.ndarray], real: dict[str, np.ndarray],
                 type_names: Sequence[str]) -> dict[str, float]:
    """1-D Wasserstein distances between generated and real mask statistics.

    Args:
        generated, real: outputs of :func:`nuclei_statistics`.
        type_names: names of type ids 1..T.

    Returns:
        flat dict: ``count``, ``area``, ``eccentricity``, ``solidity`` over all nuclei, and
        ``count/<name>`` and ``<shape>/<name>`` per type (``nan`` where one side has none);
        distances are in the statistics' own units (nuclei, pixels, unitless).
    """
    out = {"count": _w1(generated["count"], real["count"])}
    for key in SHAPE_KEYS:
        out[key] = _w1(generated[key], real[key])
    for k, name in enumerate(type_names, start=1):
        out[f"count/{name}"] = _w1(generated[f"count/{k}"], real[f"count/{k}"])
        for key in SHAPE_KEYS:
            out[f"{key}/{name}"] = _w1(generated[key][generated["type"] == k], real[key][real["type"] == k])
    return out
