"""The array operations HoVerNet's post-processing (``hovernet/postprocess.py``) is built from,
each on a whole stack of patches [N, H, W] at once with no effect across patches: OpenCV's kernels
written out (Gaussian, ellipse), the Sobel kernels and their banded filter matrices, smoothing,
min-max normalisation, binary morphology, labelling and hole filling.

The underscored helpers are the post-processing's own steps, shared with it only.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk

from hovernet.config import PostprocessConfig

__all__ = ["sobel_kernels", "opencv_gaussian_kernel", "opencv_ellipse"]

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
