"""Nucleus shapes for the toy tissue: vectorised stamps painted inside each nucleus's box only.

Each shape is a field ``r`` over a [K, S, S] stack of local grids: ``r < 1`` inside the
nucleus, ``r`` near 1 at its rim (used to darken the nuclear membrane when rendering).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["Stamps", "ellipse_field", "spindle_field", "lobed_field", "lobe_layout", "paint_stamps"]

FieldFn = Callable[[np.ndarray, np.ndarray, dict], np.ndarray]


@dataclass
class Stamps:
    """A batch of K shapes of one kind, all drawn with stamps of side ``2 * half + 1``.

    Attributes:
        cy, cx: float [K] centres in image pixels.
        ids: int32 [K] value written into the label map (instance id, or cytoplasm index).
        half: stamp half-size in pixels; every shape must fit inside it.
        fn: field function ``fn(dy, dx, params) -> r`` on [K, S, S] offsets.
        params: per-shape parameters, each an array whose first axis is K.
    """

    cy: np.ndarray
    cx: np.ndarray
    ids: np.ndarray
    half: int
    fn: FieldFn
    params: dict = field(default_factory=dict)


def _rotate(dy: np.ndarray, dx: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u) and across (v) an axis at angle ``theta`` (radians, x right, y down)."""
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    return dx * c + dy * s, -dx * s + dy * c


def ellipse_field(dy: np.ndarray, dx: np.ndarray, p: dict) -> np.ndarray:
    """Ellipse with semi-axes ``a`` (along ``theta``) and ``b``, its outline wobbled by two harmonics.

    Params (each [K]): a, b, theta, w2, w3 (harmonic amplitudes), ph2, ph3 (phases).
    The edge is ``1 + w2 cos(2 psi + ph2) + w3 cos(3 psi + ph3)`` with ``psi`` the polar angle
    in the normalised frame, expanded in powers of cos/sin psi to avoid ``arctan2``.
    """
    u, v = _rotate(dy, dx, p["theta"])
    un, vn = u / p["a"][:, None, None], v / p["b"][:, None, None]
    rho2 = un * un + vn * vn + 1e-6
    rho = np.sqrt(rho2)
    c, s = un / rho, vn / rho
    c2, s2 = c * c - s * s, 2 * c * s
    c3, s3 = c * c2 - s * s2, s * c2 + c * s2
    k = {n: p[n][:, None, None] for n in ("w2", "w3", "ph2", "ph3")}
    edge = 1.0 + k["w2"] * (c2 * np.cos(k["ph2"]) - s2 * np.sin(k["ph2"]))
    edge += k["w3"] * (c3 * np.cos(k["ph3"]) - s3 * np.sin(k["ph3"]))
    return rho / edge


def spindle_field(dy: np.ndarray, dx: np.ndarray, p: dict) -> np.ndarray:
    """Spindle (fibroblast-like): a lens with pointed ends, slightly bent.

    Params (each [K]): a (half-length), b (half-width), theta, bend (curvature, 1/px).
    The outline is ``|v| = b * (1 - (u/a)^2)`` after bending ``v`` by ``bend * u^2``.
    """
    u, v = _rotate(dy, dx, p["theta"])
    v = v - p["bend"][:, None, None] * u * u
    un = np.abs(u) / p["a"][:, None, None]
    width = np.maximum(1.0 - un * un, 1e-3)
    across = np.abs(v) / (p["b"][:, None, None] * width)
    # The rim coordinate: how far across the local width, blended with the distance to the tips.
    return np.maximum(un, across * (0.6 + 0.4 * width))


def lobe_layout(
    rng: np.random.Generator, n_lobes: np.ndarray, lobe_r: np.ndarray, max_lobes: int, reach: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lobe centres of multi-lobed nuclei along a curved chain (C or S shapes).

    Args:
        rng: generator.
        n_lobes: int [K] lobes per nucleus (2 for eosinophils, 3-5 for neutrophils).
        lobe_r: float [K] lobe radius.
        max_lobes: L, the padded lobe count; missing lobes repeat the last one.
        reach: chains are shrunk toward their centre so that no lobe edge lies beyond it.

    Returns:
        ``(ly, lx)``, each float [K, L]: lobe offsets from the nucleus centre.
    """
    k = len(n_lobes)
    # Lobes sit just apart (a gap of ~1 px) so they read as separate lobes joined by a strand.
    step = 2.0 * lobe_r[:, None] + rng.uniform(0.3, 1.3, (k, max_lobes))
    # Curling turns keep the chain compact, as in a neutrophil's clumped lobes.
    turn = rng.uniform(0.7, 1.4, (k, max_lobes)) * rng.choice([-1.0, 1.0], (k, 1))
    ang = rng.uniform(0, 2 * np.pi, (k, 1)) + np.cumsum(turn, axis=1)
    idx = np.arange(max_lobes)[None, :]
    live = idx < n_lobes[:, None]
    steps = np.where(live & (idx > 0), step, 0.0)
    ly = np.cumsum(steps * np.sin(ang), axis=1)
    lx = np.cumsum(steps * np.cos(ang), axis=1)
    last = n_lobes - 1
    ly = np.where(live, ly, ly[np.arange(k), last][:, None])
    lx = np.where(live, lx, lx[np.arange(k), last][:, None])
    cy = ly[:, :].sum(1, where=live) / n_lobes
    cx = lx[:, :].sum(1, where=live) / n_lobes
    ly, lx = ly - cy[:, None], lx - cx[:, None]
    extent = np.sqrt(ly * ly + lx * lx).max(axis=1) + lobe_r
    shrink = np.minimum(1.0, (reach - lobe_r) / np.maximum(extent - lobe_r, 1e-6))[:, None]
    return ly * shrink, lx * shrink


def lobed_field(dy: np.ndarray, dx: np.ndarray, p: dict) -> np.ndarray:
    """Union of round lobes joined in a chain by thin chromatin bridges (one connected nucleus).

    Params: ly, lx (float [K, L] lobe offsets), r (float [K] lobe radius), bridge (float [K]
    bridge half-width, >= 0.75 px so that the bridge stays pixel-connected).
    """
    ly, lx = p["ly"][:, :, None, None], p["lx"][:, :, None, None]
    py, px = dy[:, None], dx[:, None]
    lobes = np.sqrt((py - ly) ** 2 + (px - lx) ** 2).min(axis=1) / p["r"][:, None, None]
    # Distance to each segment between consecutive lobes (zero-length segments are harmless).
    ay, ax = ly[:, :-1], lx[:, :-1]
    sy, sx = ly[:, 1:] - ay, lx[:, 1:] - ax
    t = ((py - ay) * sy + (px - ax) * sx) / np.maximum(sy * sy + sx * sx, 1e-6)
    t = np.clip(t, 0.0, 1.0)
    seg = np.sqrt((py - ay - t * sy) ** 2 + (px - ax - t * sx) ** 2).min(axis=1)
    return np.minimum(lobes, seg / p["bridge"][:, None, None])


def paint_stamps(label: np.ndarray, rmap: np.ndarray | None, stamps: Stamps) -> np.ndarray:
    """Paint a batch of shapes into ``label`` (and the rim coordinate into ``rmap``).

    Later shapes overwrite earlier ones where they overlap, so overlapping nuclei become
    touching nuclei with one shared border. Only each shape's own box is evaluated.

    Args:
        label: int [H, W], modified in place.
        rmap: float32 [H, W] or None, modified in place (``r`` of the shape at each pixel).
        stamps: the batch.

    Returns:
        int64 [K]: pixels each shape covered when drawn (in-bounds, before later overlaps).
    """
    if len(stamps.ids) == 0:
        return np.zeros(0, np.int64)
    h, w = label.shape
    off = np.arange(-stamps.half, stamps.half + 1)
    ry, rx = np.rint(stamps.cy).astype(np.int64), np.rint(stamps.cx).astype(np.int64)
    yy = ry[:, None, None] + off[None, :, None]
    xx = rx[:, None, None] + off[None, None, :]
    dy = (yy - stamps.cy[:, None, None]).astype(np.float32)
    dx = (xx - stamps.cx[:, None, None]).astype(np.float32)
    dy, dx = np.broadcast_arrays(dy, dx)
    params = {k: np.asarray(v, np.float32) for k, v in stamps.params.items()}
    r = stamps.fn(dy, dx, params)
    inside = (r < 1.0) & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    k_idx = np.broadcast_to(np.arange(len(stamps.ids))[:, None, None], inside.shape)[inside]
    ys, xs = np.broadcast_to(yy, inside.shape)[inside], np.broadcast_to(xx, inside.shape)[inside]
    label[ys, xs] = stamps.ids[k_idx]
    if rmap is not None:
        rmap[ys, xs] = r[inside]
    return np.bincount(k_idx, minlength=len(stamps.ids))
