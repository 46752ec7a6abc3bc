"""HoVerNet post-processing (Graham et al., 2019, Sec. 3.3): marker-controlled watershed on the
Sobel energy of the hv maps, then one type per nucleus by majority vote of nc.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import watershed

from hovernet.config import PostprocessConfig
from hovernet.metrics import instance_type_votes

__all__ = ["sobel_kernels", "opencv_gaussian_kernel", "opencv_ellipse", "instance_energy", "instances_from_np_hv",
           "instances_from_np_hv_batch", "assign_types", "assign_types_batch", "postprocess"]

# OpenCV's getGaussianKernel uses these fixed kernels when sigma <= 0 (sizes 1-7; OpenCV 5 adds
# 9, checked against cv2 5.0)
_CV_SMALL_GAUSSIAN = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
                      7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
                      9: [v / 256 for v in (4, 13, 30, 51, 60, 51, 30, 13, 4)]}


@functools.lru_cache(maxsize=8)
def sobel_kernels(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable Sobel kernels (derivative, smoothing) of odd ``size``, as MONAI's SobelGradients.

    The 3-tap pair ([-1, 0, 1] / 2, [1, 2, 1] / 4) is widened by convolving with [1, 2, 1] / 4,
    so larger kernels differentiate a smoother map (HoVerNet used 21 px at 40x).
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"Sobel kernel size must be odd and >= 3, got {size}")
    diff, smooth, grow = np.array([-1.0, 0.0, 1.0]) / 2, np.array([1.0, 2.0, 1.0]) / 4, np.array([1.0, 2.0, 1.0]) / 4
    for _ in range((size - 3) // 2):
        diff, smooth = np.convolve(diff, grow), np.convolve(smooth, grow)
    diff.flags.writeable = smooth.flags.writeable = False  # cached: shared by every caller
    return diff, smooth


def opencv_gaussian_kernel(size: int, sigma: float = 0.0) -> np.ndarray:
    """The 1-D kernel of OpenCV's ``getGaussianKernel(size, sigma)`` (what ``GaussianBlur`` uses).

    Written out because OpenCV is not a dependency: fixed kernels for odd sizes up to 9 when
    ``sigma <= 0``, else a sampled Gaussian (sigma from the size when ``sigma <= 0``).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be odd and >= 1, got {size}")
    if sigma <= 0 and size in _CV_SMALL_GAUSSIAN:
        return np.array(_CV_SMALL_GAUSSIAN[size])
    sigma = sigma if sigma > 0 else ((size - 1) * 0.5 - 1) * 0.3 + 0.8
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-x * x / (2 * sigma * sigma))
    return k / k.sum()


def opencv_ellipse(radius: int) -> np.ndarray:
    """OpenCV's ``getStructuringElement(MORPH_ELLIPSE, (2r + 1, 2r + 1))`` as a bool footprint.

    Row i spans columns r - dx .. r + dx with dx = round(r sqrt(1 - ((i - r) / r)^2)); for r = 2
    that is the 5 x 5 cross-like ellipse hover_net opens its markers with (not scikit-image's disk(2)).
    """
    size = 2 * radius + 1
    out = np.zeros((size, size), bool)
    for i in range(size):
        dy = i - radius
        dx = int(np.floor(radius * np.sqrt((radius * radius - dy * dy) / (radius * radius)) + 0.5)) if radius else 0
        out[i, max(radius - dx, 0): min(radius + dx + 1, size)] = True
    return out


# 4- and 8-connectivity within each patch of an [N, H, W] stack, none across patches: one scipy
# call labels the whole batch (Python overhead per patch is most of the cost at 64-128 px)
_CROSS = np.zeros((3, 3, 3), bool)
_CROSS[1] = ndi.generate_binary_structure(2, 1)
_SQUARE = np.zeros((3, 3, 3), bool)
_SQUARE[1] = True


def _smooth(a: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Smooth each patch of [N, H, W] (axis 0 is never filtered)."""
    if cfg.smooth_size:
        k = opencv_gaussian_kernel(cfg.smooth_size, cfg.smooth_sigma)
        # OpenCV's default border (reflect-101) is scipy's "mirror"
        return ndi.correlate1d(ndi.correlate1d(a, k, axis=1, mode="mirror"), k, axis=2, mode="mirror")
    return ndi.gaussian_filter(a, (0.0, cfg.smooth_sigma, cfg.smooth_sigma), mode="constant", truncate=4.0)


def _morph_rows(a: np.ndarray, fp: np.ndarray, erode: bool) -> np.ndarray:
    """Binary erosion (pixels outside count as 1) or dilation (outside 0) of the last two axes by a
    symmetric footprint whose rows are centred runs, as OpenCV's ellipse and scikit-image's disk:
    per row a run of shifts, then the rows.

    scipy's binary_erosion visits every footprint pixel per output pixel; one shifted-view pass per
    distinct row run and one per row does fewer operations on whole arrays, with the same result
    (checked against scipy, scikit-image and OpenCV in the tests).
    """
    r = fp.shape[0] // 2
    *lead, h, w = a.shape
    pad = np.full((*lead, h + 2 * r, w + 2 * r), erode)
    pad[..., r: r + h, r: r + w] = a
    combine = np.logical_and if erode else np.logical_or
    runs: dict[int, np.ndarray] = {}
    out = None
    for i, row in enumerate(fp):
        half = int(row.sum()) // 2
        if half not in runs:  # the row's horizontal run, for every padded row
            acc = pad[..., r - half: r - half + w].copy()
            for dx in range(-half + 1, half + 1):
                combine(acc, pad[..., r + dx: r + dx + w], out=acc)
            runs[half] = acc
        part = runs[half][..., i: i + h, :]
        out = part.copy() if out is None else combine(out, part, out=out)
    return out


def _open_markers(marker: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Binary opening of each patch. For these convex footprints, cv2.morphologyEx's ignored border
    and scikit-image's reflected one give the same result (a reflected pixel lies inside the
    footprint's span already), so one implementation serves both shapes (tested against both)."""
    fp = opencv_ellipse(cfg.marker_radius) if cfg.marker_shape == "ellipse" else disk(cfg.marker_radius).astype(bool)
    return _morph_rows(_morph_rows(marker, fp, True), fp, False)


def _argmax0(a: np.ndarray) -> np.ndarray:
    """``a.argmax(0)`` of [C, K], first channel on ties, by one pass per channel: numpy's argmax
    over the slow axis (or the short fast one) takes about twice as long."""
    best, idx = a[0].copy(), np.zeros(a.shape[1:], np.intp)
    for c in range(1, a.shape[0]):
        np.putmask(idx, a[c] > best, c)
        np.maximum(best, a[c], out=best)
    return idx


def _minmax(a: np.ndarray) -> np.ndarray:
    """Min-max normalise each patch of [N, H, W] to [0, 1] as ``cv2.normalize(NORM_MINMAX)`` does,
    ``a * scale - lo * scale``, in ``a``'s dtype; all zero where a patch is constant."""
    lo, hi = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    scale = np.divide(1, span, out=np.zeros_like(span), where=span > 0)
    out = a * scale
    out -= lo * scale
    return out


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Label the 4-connected components of each patch of [N, H, W] (ids unique over the stack, in
    raster order) and drop those under ``min_size`` pixels."""
    lab = np.empty(mask.shape, np.intp)  # the index dtype: bincount and take need no copy
    n = ndi.label(mask, structure=_CROSS, output=lab)
    if min_size > 0 and n:
        small = np.bincount(lab.ravel(), minlength=n + 1) < min_size
        if small[1:].any():
            lut = np.arange(n + 1)
            lut[small] = 0
            lab = np.take(lut, lab)
    return lab


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``binary_fill_holes`` of each patch of [N, H, W] by labelling the background once
    (4-connected, as scipy's default): a background component that touches no patch edge is a hole.
    ~10x faster than scipy's dilations."""
    lab = np.empty(mask.shape, np.intp)
    n = ndi.label(~mask, structure=_CROSS, output=lab)
    if n == 0:
        return mask
    hole = np.ones(n + 1, bool)
    hole[0] = False
    hole[np.concatenate([lab[:, 0].ravel(), lab[:, -1].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])] = False
    return mask | np.take(hole, lab)


@functools.lru_cache(maxsize=32)
def _filter_matrix(n: int, kernel_size: int, derivative: bool) -> np.ndarray:
    """[n, n] matrix M with M @ x == correlate1d(x, k, axis=0, mode="mirror") for the Sobel
    derivative (or smoothing) kernel k of ``kernel_size``."""
    k = sobel_kernels(kernel_size)[0 if derivative else 1]
    r = len(k) // 2
    m = np.zeros((n, n))
    period = 2 * (n - 1)
    for i in range(n):
        for t, w in enumerate(k):
            j = i + t - r
            if period:
                j %= period
                j = period - j if j >= n else j
            else:
                j = 0
            m[i, j] += w
    m = m.astype(np.float32)
    m.flags.writeable = False
    return m


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
