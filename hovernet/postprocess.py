"""HoVerNet post-processing (Graham et al., 2019, Sec. 3.3): marker-controlled watershed on the
Sobel energy of the hv maps, then one type per nucleus by majority vote of nc.

The kernels, filters and morphology these steps are built from are in ``hovernet/filters.py``;
its public kernels are re-exported here.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from hovernet.config import PostprocessConfig
from hovernet.filters import (_CROSS, _SQUARE, _argmax0, _fill_holes, _filter_matrix, _minmax, _morph_rows,
                              _open_markers, _remove_small, _smooth, opencv_ellipse, opencv_gaussian_kernel,
                              sobel_kernels)
from hovernet.metrics import instance_type_votes

__all__ = ["sobel_kernels", "opencv_gaussian_kernel", "opencv_ellipse", "instance_energy", "instances_from_np_hv",
           "instances_from_np_hv_batch", "assign_types", "assign_types_batch", "postprocess"]


def _energy(mask: np.ndarray, hv: np.ndarray, kernel_size: int) -> np.ndarray:
    """:func:`instance_energy` of a stack: mask [N, H, W] (bool or 0 / 1), hv [N, 2, H, W]."""
    h, v = _minmax(hv[:, 0].astype(np.float32)), _minmax(hv[:, 1].astype(np.float32))
    n_y, n_x = h.shape[1:]
    # d/dx of h and d/dy of v, each smoothed across; reflect-101 borders (torch's reflect padding,
    # used by MONAI, and OpenCV's default). Filtering as products with banded matrices: the
    # 21-tap kernels at 40x make scipy's correlate1d the slowest step, BLAS does it in a fraction.
    # float32 products, not OpenCV's CV_64F: the result is normalised to float32 next, and float64
    # took twice as long for the same instances (benchmarks/bench_postprocess.py checks them).
    gh = _filter_matrix(n_y, kernel_size, False) @ h @ _filter_matrix(n_x, kernel_size, True).T
    gv = _filter_matrix(n_y, kernel_size, True) @ v @ _filter_matrix(n_x, kernel_size, False).T
    # as hover_net: 1 - normalize(..., CV_32F) of each, the larger of the two; then minus
    # (1 - mask) clipped at 0, which is the energy on the mask and 0 off it (energy <= 1)
    energy = np.subtract(1, _minmax(gh), out=gh)
    np.maximum(energy, np.subtract(1, _minmax(gv), out=gv), out=energy)
    energy *= mask
    return energy


def instance_energy(mask: np.ndarray, hv: np.ndarray, kernel_size: int = 5) -> np.ndarray:
    """HoVerNet's boundary energy: max over h and v of 1 - normalised Sobel(hv), zero off nuclei.

    Args:
        mask: binary nuclei mask [H, W].
        hv: horizontal and vertical maps [2, H, W].

    Returns:
        float32 [H, W] in [0, 1], high on boundaries between touching nuclei.
    """
    return _energy(np.asarray(mask)[None], np.asarray(hv)[None], kernel_size)[0]


def instances_from_np_hv(np_prob: np.ndarray, hv: np.ndarray, cfg: PostprocessConfig | None = None) -> np.ndarray:
    """Instances from the np probability and hv maps of one patch.

    Steps (HoVerNet's ``__proc_np_hv``; MONAI's HoVerNetInstanceMapPostProcessing defaults):
    1. threshold np, drop small blobs; 2. energy from Sobel(hv); 3. markers = mask minus
    high-energy pixels, hole-filled, opened, small ones dropped (and, with
    ``cfg.fill_unmarked``, one marker per blob left without any); 4. watershed of the smoothed
    negative distance map from the markers inside the mask.

    Args:
        np_prob: P(nucleus) [H, W].
        hv: horizontal and vertical maps [2, H, W].

    Returns:
        int32 instance map [H, W], ids 1..N.
    """
    if np_prob.ndim != 2 or hv.shape != (2, *np_prob.shape):
        raise ValueError(f"expected np [H, W] and hv [2, H, W], got {np_prob.shape} and {hv.shape}")
    return instances_from_np_hv_batch(np_prob[None], hv[None], cfg)[0]


def instances_from_np_hv_batch(np_prob: np.ndarray, hv: np.ndarray, cfg: PostprocessConfig | None = None) -> np.ndarray:
    """:func:`instances_from_np_hv` of every patch of a batch, in one pass over the stack.

    Each patch is processed on its own (normalisations, borders, connectivity and the flood stop at
    its edges), so the result equals the per-patch function's pixel for pixel (tested; the one
    caveat is the flood's order among equal-valued markers, see :func:`_watershed`); the batch
    only saves the per-call overhead of scipy and scikit-image, which dominates at 64-256 px.

    Args:
        np_prob: P(nucleus) [N, H, W].
        hv: horizontal and vertical maps [N, 2, H, W].

    Returns:
        int32 instance maps [N, H, W], ids 1..n_i in each patch.
    """
    cfg = cfg or PostprocessConfig()
    if np_prob.ndim != 3 or hv.shape != (np_prob.shape[0], 2, *np_prob.shape[1:]):
        raise ValueError(f"expected np [N, H, W] and hv [N, 2, H, W], got {np_prob.shape} and {hv.shape}")
    blobs = _remove_small(np_prob >= cfg.np_threshold, cfg.min_object_size)
    mask = blobs > 0
    if not mask.any():
        return np.zeros(np_prob.shape, np.int32)
    energy = _energy(mask, hv, cfg.sobel_kernel_size)
    # -smooth((1 - energy) * mask), with energy 0 off the mask: the blur is linear
    dist = _smooth(np.subtract(energy, mask, dtype=np.float32), cfg)
    marker = _fill_holes(mask & (energy < cfg.marker_threshold))
    marker = _open_markers(marker, cfg)
    markers = _remove_small(marker, cfg.min_object_size)
    # the flood moves between 4-neighbours (connectivity 1), so the 4-connected blobs are what it
    # can reach; with connectivity 2 diagonal contacts join blobs
    comps = blobs if cfg.connectivity == 1 else ndi.label(mask, structure=_SQUARE)[0]
    if cfg.fill_unmarked:
        markers = _mark_unmarked(comps, markers)
    inst = _watershed(dist, markers, comps, cfg.connectivity)
    return _relabel(inst)


def _watershed(dist: np.ndarray, markers: np.ndarray, comps: np.ndarray, connectivity: int) -> np.ndarray:
    """scikit-image's ``watershed(dist, markers, mask=comps > 0)`` on each patch of [N, H, W],
    flooding only where it decides.

    A component of the mask that holds one marker label is that label everywhere the flood can
    reach, which is the whole component; one without a marker stays 0. Only components with two
    or more labels are flooded: the image rows that hold them, from every patch, are stacked into
    one strip (an empty row wherever rows were skipped or a patch ends), and flooded in one call.
    The flood never leaves a component, nor crosses an empty row. Marker pixels with no
    unlabelled neighbour are left out of the flood: they would only be popped, pushing nothing.

    The heap orders pixels by value, then age, and the order within a component is kept, with
    one exception: scikit-image gives every marker pixel age 0, so markers of exactly equal value
    leave its heap in an order that depends on everything else in it. Where such a tie decides a
    pixel the result could differ from the full call; the tests and the benchmark's real maps
    (96 patches) give the full call's labels pixel for pixel. Most nuclei are alone in their blob
    and most of a patch is background, so this floods a fraction of the pixels.
    """
    out = np.zeros(comps.shape, markers.dtype)
    on = np.flatnonzero(markers)
    on = on[np.take(comps, on) > 0]  # watershed ignores markers outside its mask
    if on.size == 0:
        return out
    on_comp, on_label = np.take(comps, on), np.take(markers, on)
    n_comp = int(comps.max())
    base = int(on_label.max()) + 1
    pairs = np.unique(on_comp.astype(np.int64) * base + on_label)  # distinct (component, label) pairs
    pair_comp, pair_label = np.divmod(pairs, base)
    n_labels = np.bincount(pair_comp, minlength=n_comp + 1)
    lut = np.zeros(n_comp + 1, markers.dtype)
    single = n_labels[pair_comp] == 1
    lut[pair_comp[single]] = pair_label[single]
    np.take(lut, comps, out=out)
    multi = n_labels >= 2
    if not multi.any():
        return out
    n, h, w = comps.shape
    flood = np.take(multi, comps).reshape(n * h, w)
    rows = np.flatnonzero(flood.any(1))  # global row index: patch * h + row
    gap = np.ones(rows.size, bool)
    gap[1:] = (np.diff(rows) != 1) | (rows[1:] % h == 0)
    gap[0] = False
    at = np.arange(rows.size) + np.cumsum(gap)  # each row's place in the strip
    keep = np.zeros((at[-1] + 1, w), bool)
    keep[at] = flood[rows]
    seeds = np.zeros(keep.shape, markers.dtype)
    seeds[at] = markers.reshape(n * h, w)[rows]
    seeds *= keep
    img = np.zeros(keep.shape, np.float64)
    img[at] = dist.reshape(n * h, w)[rows]
    seeded = seeds > 0
    # marker pixels whose every neighbour is a marker pixel or off the mask (or off the strip)
    inner = seeded & _morph_rows(seeded | ~keep, (_CROSS if connectivity == 1 else _SQUARE)[1], True)
    ws = watershed(img, markers=np.where(inner, 0, seeds), mask=keep & ~inner, connectivity=connectivity)
    np.copyto(ws, seeds, where=inner)
    flat_out = out.reshape(n * h, w)
    flat_out[rows] = np.where(keep[at], ws[at], flat_out[rows])
    return out


def _mark_unmarked(comps: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Give every mask component (``comps``, labelled) without a marker one of its own.

    The watershed leaves such components empty, so HoVerNet drops a whole isolated nucleus
    when its energy is high everywhere (small or elongated nuclei: Sobel normalisation by the
    global range makes their interior "uncertain"). An isolated blob is one nucleus at least.
    """
    n = int(comps.max())
    if n == 0:
        return markers
    has_marker = np.zeros(n + 1, bool)
    has_marker[np.unique(comps[markers > 0])] = True
    has_marker[0] = True
    lonely = ~has_marker[comps]
    if not lonely.any():
        return markers
    extra, _ = ndi.label(lonely, structure=_CROSS if lonely.ndim == 3 else _CROSS[1])
    return np.where(lonely, extra + markers.max(), markers)


def _relabel(inst: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..n_i in each patch of [N, H, W], in the order of the old ids (which are
    unique over the stack)."""
    n_id = int(inst.max()) + 1
    patch_of = np.full(n_id, -1, np.int64)
    patch_of[inst] = np.arange(inst.shape[0])[:, None, None]  # any pixel of an id names its patch
    patch_of[0] = -1
    ids = np.nonzero(patch_of >= 0)[0]
    ids = ids[np.argsort(patch_of[ids] * n_id + ids, kind="stable")]  # by patch, then old id
    first = np.searchsorted(patch_of[ids], patch_of[ids], side="left")
    lut = np.zeros(n_id, np.int32)
    lut[ids] = np.arange(len(ids)) - first + 1
    return lut[inst]


def assign_types(inst: np.ndarray, nc_prob: np.ndarray, vote: str = "types") -> np.ndarray:
    """One type per nucleus by majority vote.

    ``vote="types"``: of each pixel's most likely non-background type, so every nucleus gets a
    type (docs/architecture.md, Contracts: every instance pixel carries one type). ``vote="argmax"``: hover_net's, of the
    full argmax, the most frequent non-background type when background wins (the runner-up), and
    background only when no pixel has a type. Ties go to the lower type id in both.

    Args:
        inst: instance map [H, W].
        nc_prob: type probabilities or logits [n_types + 1, H, W], channel 0 background.
        vote: "types" or "argmax".

    Returns:
        uint8 type map [H, W].
    """
    return assign_types_batch(np.asarray(inst)[None], np.asarray(nc_prob)[None], vote)[0]


def assign_types_batch(inst: np.ndarray, nc_prob: np.ndarray, vote: str = "types") -> np.ndarray:
    """:func:`assign_types` of every patch: inst [N, H, W], nc_prob [N, C, H, W] -> uint8 [N, H, W]."""
    if vote not in ("types", "argmax"):
        raise ValueError(f"vote must be 'types' or 'argmax', got {vote!r}")
    if inst.ndim != 3 or nc_prob.ndim != 4 or nc_prob.shape[0] != inst.shape[0] or nc_prob.shape[2:] != inst.shape[1:]:
        raise ValueError(f"expected inst [N, H, W] and nc [N, C, H, W], got {inst.shape} and {nc_prob.shape}")
    n, c = nc_prob.shape[:2]
    flat = inst.reshape(n, -1)
    out = np.zeros(inst.shape, np.uint8)
    fg = np.flatnonzero(flat)  # only nuclei pixels vote (a tenth of a patch, typically)
    if fg.size == 0:
        return out
    patch = fg // flat.shape[1]
    size = flat.shape[1]
    # [C, pixels]: the scores of the nuclei pixels, channel by channel (flat indices into nc)
    scores = np.take(nc_prob.reshape(-1), (fg + patch * ((c - 1) * size))[None] + (np.arange(c) * size)[:, None])
    pixel_type = _argmax0(scores) if vote == "argmax" else _argmax0(scores[1:]) + 1
    # ids made unique over the batch, so one vote covers every nucleus of every patch;
    # the vote never lets background win when a nucleus has a typed pixel (hover_net's runner-up)
    offset = np.concatenate([[0], np.cumsum(flat.max(1))[:-1]]).astype(np.int64)
    gid = flat.ravel()[fg] + offset[patch]
    ids, types = instance_type_votes(gid[None], pixel_type[None])
    lut = np.zeros(int(gid.max()) + 1, np.uint8)
    lut[ids] = types
    out.reshape(-1)[fg] = lut[gid]
    return out


def postprocess(outputs: dict[str, torch.Tensor], cfg: PostprocessConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Instance and type maps from a batch of HoVerNet outputs.

    Args:
        outputs: ``np`` logits [N, 2, H, W], ``hv`` [N, 2, H, W], ``nc`` logits [N, C, H, W].

    Returns:
        (inst int32 [N, H, W], type uint8 [N, H, W]).
    """
    np_prob = torch.softmax(outputs["np"].float(), 1)[:, 1].cpu().numpy()
    hv = outputs["hv"].float().cpu().numpy()
    nc = outputs["nc"].float().cpu().numpy()
    insts = instances_from_np_hv_batch(np_prob, hv, cfg)
    return insts, assign_types_batch(insts, nc, (cfg or PostprocessConfig()).type_vote)
