"""Colonic crypts for the toy tissue: a pale lumen ringed by purple epithelium whose nuclei
line the ring, long axes radial (crypt cross-sections as in Lizard's colon tissue, Graham et al. 2021).
"""

from __future__ import annotations

import numpy as np

__all__ = ["place_glands"]

_SPACING = (8.0, 9.6)  # arc distance between neighbouring epithelial nuclei (px): they touch


def _radius(g: dict, psi: np.ndarray) -> np.ndarray:
    """Lumen radius at gland-frame angle ``psi``: an ellipse with a two-harmonic wobble."""
    re = g["ax"] * g["ay"] / np.sqrt((g["ay"] * np.cos(psi)) ** 2 + (g["ax"] * np.sin(psi)) ** 2)
    return re * (1 + g["w2"] * np.cos(2 * psi + g["p2"]) + g["w3"] * np.cos(3 * psi + g["p3"]))


def _new_gland(rng: np.random.Generator, remaining: int, h: int, w: int) -> dict:
    t = rng.uniform(28.0, 38.0)
    f = rng.uniform(0.6, 0.72)  # nuclei sit basally; goblet cells and cytoplasm apically
    # Size the ring to the nuclei still wanted, so the epithelial share follows the quota.
    ring = remaining * np.mean(_SPACING) / (2 * np.pi) * rng.uniform(0.6, 1.2)
    r0 = float(np.clip(ring - f * t, 6.0, 40.0))
    asp = rng.uniform(0.55, 1.0)
    g = {"ax": r0, "ay": r0 * asp, "t": t, "f": f, "om": rng.uniform(0, np.pi),
         "w2": rng.uniform(0, 0.08), "w3": rng.uniform(0, 0.06),
         "p2": rng.uniform(0, 2 * np.pi), "p3": rng.uniform(0, 2 * np.pi)}  # fmt: skip
    g["outer"] = r0 * 1.15 + t
    g["cy"], g["cx"] = rng.uniform(-0.3 * g["outer"], h + 0.3 * g["outer"]), rng.uniform(-0.3 * g["outer"], w + 0.3 * g["outer"])
    return g


def _ring_nuclei(rng: np.random.Generator, g: dict, h: int, w: int) -> dict:
    """Epithelial nuclei evenly spaced along the ring, radial, with slight pseudostratification."""
    psi = np.linspace(0, 2 * np.pi, 721)
    d = _radius(g, psi) + g["f"] * g["t"]
    px, py = d * np.cos(psi), d * np.sin(psi)
    arc = np.concatenate([[0], np.cumsum(np.hypot(np.diff(px), np.diff(py)))])
    n = max(int(arc[-1] / rng.uniform(*_SPACING)), 3)
    s = (np.arange(n) + rng.uniform(0, 1) + rng.uniform(-0.1, 0.1, n)) * arc[-1] / n % arc[-1]
    at = np.interp(s, arc, psi)
    d = _radius(g, at) + g["f"] * g["t"] + rng.normal(0, 2.4, n)
    ang = at + g["om"]
    cy, cx = g["cy"] + d * np.sin(ang), g["cx"] + d * np.cos(ang)
    a = rng.uniform(8.5, 11.5, n)
    p = {"a": a, "b": rng.uniform(4.6, 5.8, n), "theta": ang + rng.normal(0, 0.12, n),
         "w2": rng.uniform(0, 0.07, n), "w3": rng.uniform(0, 0.05, n),
         "ph2": rng.uniform(0, 2 * np.pi, n), "ph3": rng.uniform(0, 2 * np.pi, n)}  # fmt: skip
    keep = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    return {"cy": cy[keep], "cx": cx[keep], "p": {k: v[keep] for k, v in p.items()}}


def _paint(g: dict, bg: dict, free: np.ndarray) -> None:
    """Paint lumen and epithelial cytoplasm into the half-resolution stains; mark it not free."""
    h2, w2 = free.shape
    reach = (g["outer"] + 6) / 2
    y0, y1 = max(int(g["cy"] / 2 - reach), 0), min(int(g["cy"] / 2 + reach) + 1, h2)
    x0, x1 = max(int(g["cx"] / 2 - reach), 0), min(int(g["cx"] / 2 + reach) + 1, w2)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) * 2.0
    dy, dx = yy - g["cy"], xx - g["cx"]
    d = np.hypot(dy, dx)
    rad = _radius(g, np.arctan2(dy, dx) - g["om"])
    depth = (d - rad) / g["t"]  # <0 lumen, 0..1 epithelium (apical to basal), >1 stroma
    lumen, epi = depth < 0, (depth >= 0) & (depth < 1)
    hs, es = bg["H"][y0:y1, x0:x1], bg["E"][y0:y1, x0:x1]
    hs[lumen] = 0.012 + 0.01 * np.clip(depth[lumen] + 0.3, 0, 1)
    es[lumen] = 0.02 + 0.03 * np.clip(depth[lumen] + 0.3, 0, 1)
    # Apical cytoplasm is paler and pinker, basal cytoplasm more purple.
    hs[epi] = 0.12 + 0.08 * depth[epi]
    es[epi] = 0.13 + 0.02 * depth[epi]
    free[y0:y1, x0:x1] &= depth > 1.0 + 5.0 / g["t"]


def place_glands(rng: np.random.Generator, bg: dict, quota: int, h: int, w: int) -> tuple[dict, np.ndarray]:
    """Place non-overlapping crypts until about ``quota`` epithelial nuclei lie in the tile.

    Args:
        rng: generator.
        bg: half-resolution background; its ``H``/``E`` get the crypts painted in place.
        quota: epithelial nuclei wanted.
        h, w: tile size (full resolution).

    Returns:
        ``(epi, free)``: epithelial nuclei (``cy``, ``cx`` float [n] and ellipse params ``p``),
        and a bool [h2, w2] half-resolution mask of tissue free for stromal cells.
    """
    free = bg["tissue"] > 0.5
    glands, parts, count = [], [], 0
    for _ in range(80):
        if quota - count < 4:
            break
        g = _new_gland(rng, quota - count, h, w)
        if any(np.hypot(g["cy"] - o["cy"], g["cx"] - o["cx"]) < g["outer"] + o["outer"] + 8 for o in glands):
            continue
        nuc = _ring_nuclei(rng, g, h, w)
        n = len(nuc["cy"])
        if n == 0 or n > 1.3 * (quota - count) + 4:
            continue
        glands.append(g)
        parts.append(nuc)
        count += n
        _paint(g, bg, free)
    bg["free"] = free
    if not parts:
        empty = np.zeros(0)
        return {"cy": empty, "cx": empty, "p": {k: empty for k in ("a", "b", "theta", "w2", "w3", "ph2", "ph3")}}, free
    epi = {"cy": np.concatenate([p["cy"] for p in parts]), "cx": np.concatenate([p["cx"] for p in parts])}
    epi["p"] = {k: np.concatenate([p["p"][k] for p in parts]) for k in parts[0]["p"]}
    return epi, free
