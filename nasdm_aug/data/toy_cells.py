"""Cell placement and look for the toy tissue: crypts lined by epithelium, stromal cells by type.

Morphology follows the Lizard type definitions (Graham et al., ICCV-W 2021) at 20x (~0.5 um/px).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from nasdm_aug.data.toy_glands import place_glands
from nasdm_aug.data.toy_shapes import Stamps, ellipse_field, lobe_layout, lobed_field, spindle_field

__all__ = ["Cells", "build_cells"]

NEU, EPI, LYM, PLA, EOS, CON = 1, 2, 3, 4, 5, 6  # LIZARD ids

# Nucleus look per type: H, E, O stain, chromatin texture amplitude, rim (membrane) boost.
_NUC_LOOK = {
    NEU: ((0.6, 0.75), 0.12, 0.0, 0.3, 0.25),
    EPI: ((0.24, 0.34), 0.12, 0.0, 0.9, 1.1),  # vesicular: pale inside, crisp membrane
    LYM: ((0.65, 0.8), 0.08, 0.0, 0.35, 0.2),
    PLA: ((0.42, 0.52), 0.10, 0.0, 1.0, 0.8),  # coarse peripheral ("clock-face") chromatin
    EOS: ((0.5, 0.62), 0.15, 0.0, 0.3, 0.35),
    CON: ((0.42, 0.55), 0.10, 0.0, 0.45, 0.35),
}
# Cytoplasm look (visible but not part of the nucleus instance): H, E, O, granularity.
_CYTO_LOOK = {
    NEU: (0.06, 0.13, 0.0, 0.35),  # pale, faintly granular
    PLA: (0.2, 0.15, 0.0, 0.15),  # basophilic (purple) cytoplasm
    EOS: (0.04, 0.3, 0.22, 0.9),  # coarse pink-orange granules
}
_OVERLAP = 0.85  # disks of two nuclei may overlap by 15% of their radii: touching nuclei


@dataclass
class Cells:
    """Everything drawn for one tile (painted ids run 1..K in the order of ``nuclei``).

    Attributes:
        cytoplasm: stamp batches painted into the cytoplasm index map.
        nuclei: stamp batches painted into the instance map.
        nucleus_type: int [K + 1] LIZARD type of each painted id (0 at index 0).
        nucleus_look: float32 [K + 1, 5] H, E, O, texture, rim per painted id.
        cyto_look: float32 [C + 1, 4] H, E, O, granularity per cytoplasm index.
        spots: stamp batches of nucleoli (dark dots inside epithelial and plasma nuclei).
    """

    cytoplasm: list
    nuclei: list
    nucleus_type: np.ndarray
    nucleus_look: np.ndarray
    cyto_look: np.ndarray
    spots: list

    @property
    def n_nuclei(self) -> int:
        return len(self.nucleus_type) - 1

    def appearance(self, rng: np.random.Generator, cyto: np.ndarray, inst: np.ndarray, lut: np.ndarray,
                   rmap: np.ndarray, grain: np.ndarray, spot: np.ndarray) -> dict:  # fmt: skip
        """Per-pixel stain concentrations of cytoplasm and nuclei.

        ``grain`` (float32 [H, W] in [0, 1], 2-px blocks) gives chromatin its clumps;
        ``spot`` (uint8 [H, W]) marks nucleoli.

        Returns:
            dict name -> (values, mask): ``values`` is a list of three float32 [n] arrays
            (H, E, O) for the ``n`` True pixels of the bool [H, W] ``mask``.
        """
        out = {}
        m = (cyto > 0) & (inst == 0)
        look = self.cyto_look[cyto[m]]
        granules = 1.0 + look[:, 3] * (grain[m] * 0.6 + rng.random(look.shape[0], dtype=np.float32) * 0.4 - 0.5) * 2.0
        out["cytoplasm"] = ([look[:, 0], look[:, 1] * granules, look[:, 2] * granules], m)
        final = np.zeros((int(lut.max()) + 1, 5), np.float32)
        final[lut[lut > 0]] = self.nucleus_look[lut > 0]
        m = inst > 0
        look = final[inst[m]]
        noise = 0.6 * grain[m] + 0.4 * rng.random(look.shape[0], dtype=np.float32)
        tex = 1.0 + look[:, 3] * (noise - 0.5) * 1.6
        rim = 1.0 + look[:, 4] * np.clip((rmap[m] - 0.62) / 0.38, 0.0, 1.0)
        dots = 1.0 + 1.2 * spot[m]
        out["nuclei"] = ([look[:, 0] * tex * rim * dots, look[:, 1], look[:, 2]], m)
        return out


def _ellipse_params(rng: np.random.Generator, k: int, a: tuple, ratio: tuple, theta: np.ndarray | None = None) -> dict:
    a_ = rng.uniform(*a, k)
    return {
        "a": a_, "b": a_ * rng.uniform(*ratio, k),
        "theta": rng.uniform(0, np.pi, k) if theta is None else theta,
        "w2": rng.uniform(0, 0.07, k), "w3": rng.uniform(0, 0.05, k),
        "ph2": rng.uniform(0, 2 * np.pi, k), "ph3": rng.uniform(0, 2 * np.pi, k),
    }  # fmt: skip


def _disks(cy: np.ndarray, cx: np.ndarray, theta: np.ndarray, off: np.ndarray, r: np.ndarray) -> tuple:
    """Three disks along each shape's axis, approximating it for collision tests: [3K] each."""
    ys = np.concatenate([cy + s * off * np.sin(theta) for s in (-1, 0, 1)])
    xs = np.concatenate([cx + s * off * np.cos(theta) for s in (-1, 0, 1)])
    return ys, xs, np.tile(r, 3)


def _candidates(rng: np.random.Generator, free: np.ndarray, n: int, clusters: int, h: int, w: int) -> tuple:
    """``n`` candidate centres in free stroma; part of them packed around ``clusters`` centres."""
    m = 3 * n + 20
    cy, cx = rng.uniform(0, h, m), rng.uniform(0, w, m)
    if clusters:
        heads = rng.integers(0, clusters, m)
        centres = rng.uniform((0, 0), (h, w), (clusters, 2))
        spread = rng.uniform(18, 40, clusters)[heads]
        near = rng.random(m) < 0.5
        cy = np.where(near, centres[heads, 0] + rng.normal(0, 1, m) * spread, cy)
        cx = np.where(near, centres[heads, 1] + rng.normal(0, 1, m) * spread, cx)
    ok = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    cy, cx = cy[ok], cx[ok]
    ok = free[(cy / 2).astype(np.int64), (cx / 2).astype(np.int64)]
    return cy[ok][:n], cx[ok][:n]


def _stromal(rng: np.random.Generator, t: int, cy: np.ndarray, cx: np.ndarray, bg: dict, angle_fn) -> dict:
    """Shape, look and collision disks of stromal cells of type ``t`` centred at (cy, cx)."""
    k = len(cy)
    c = {"t": t, "cy": cy, "cx": cx, "ncy": cy, "ncx": cx}
    if t == LYM:  # small, round, dark
        p = _ellipse_params(rng, k, (4.6, 6.0), (0.85, 1.0))
        c.update(fn=ellipse_field, half=8, p=p, disks=_disks(cy, cx, p["theta"], 0 * cy, p["a"]))
    elif t == CON:  # spindles aligned with the local collagen fibres
        theta = angle_fn(bg, cy, cx) + rng.normal(0, 0.15, k)
        p = {"a": rng.uniform(9.0, 15.0, k), "b": rng.uniform(2.4, 3.6, k), "theta": theta,
             "bend": rng.normal(0, 0.008, k)}  # fmt: skip
        c.update(fn=spindle_field, half=17, p=p, disks=_disks(cy, cx, theta, 0.6 * p["a"], p["b"] + 1.0))
    elif t == PLA:  # eccentric round-oval nucleus at one end of an oval cytoplasm
        cp = _ellipse_params(rng, k, (9.5, 11.5), (0.7, 0.85))
        p = _ellipse_params(rng, k, (4.8, 5.8), (0.82, 0.95), cp["theta"])
        shift = cp["a"] - p["a"] - rng.uniform(0.3, 1.2, k)
        side = rng.choice([-1.0, 1.0], k)
        c.update(ncy=cy + side * shift * np.sin(cp["theta"]), ncx=cx + side * shift * np.cos(cp["theta"]))
        c.update(fn=ellipse_field, half=8, p=p, cfn=ellipse_field, chalf=13, cp=cp)
        c["disks"] = _disks(cy, cx, cp["theta"], 0 * cy, cp["a"])
    else:  # granulocytes: neutrophil 3-5 small lobes, eosinophil 2 larger lobes; round cytoplasm
        neu = t == NEU
        n_lobes = rng.integers(3, 6, k) if neu else np.full(k, 2)
        lobe_r = rng.uniform(2.7, 3.3, k) if neu else rng.uniform(3.6, 4.3, k)
        ly, lx = lobe_layout(rng, n_lobes, lobe_r, 5 if neu else 2, 12.0)
        p = {"ly": ly, "lx": lx, "r": lobe_r, "bridge": rng.uniform(0.8, 1.0, k)}
        rc = rng.uniform(8.5, 10.0, k) if neu else rng.uniform(10.0, 11.5, k)
        cp = {"a": rc, "b": rc * rng.uniform(0.88, 1.0, k), "theta": rng.uniform(0, np.pi, k),
              "w2": 0 * rc, "w3": rng.uniform(0, 0.05, k), "ph2": 0 * rc, "ph3": rng.uniform(0, 6.3, k)}  # fmt: skip
        c.update(fn=lobed_field, half=13, p=p, cfn=ellipse_field, chalf=13, cp=cp)
        c["disks"] = _disks(cy, cx, cp["theta"], 0 * cy, rc)
    return c


def _greedy(rng: np.random.Generator, groups: list, n_fixed: int, quotas: np.ndarray) -> list:
    """Random sequential adsorption: accept candidates in random order unless they collide.

    Group 0 holds fixed cells (always accepted). Returns a bool mask per group.
    """
    dy, dx, dr, owner, kind = [], [], [], [], []
    start = 0
    for g in groups:
        k = len(g["cy"])
        y, x, r = g["disks"]
        dy.append(y), dx.append(x), dr.append(r), owner.append(np.tile(np.arange(start, start + k), 3))
        kind.append(np.full(k, g["t"]))
        start += k
    y, x, r, own, kind = (np.concatenate(v) for v in (dy, dx, dr, owner, kind))
    cuts = np.cumsum([len(g["cy"]) for g in groups])[:-1]
    if start == n_fixed:
        return np.split(np.ones(start, bool), cuts)
    tree = cKDTree(np.stack([y, x], 1))
    i, j = tree.query_pairs(2.0 * float(r.max()), output_type="ndarray").T
    bad = (np.hypot(y[i] - y[j], x[i] - x[j]) < _OVERLAP * (r[i] + r[j])) & (own[i] != own[j])
    src = np.concatenate([own[i[bad]], own[j[bad]]])
    dst = np.concatenate([own[j[bad]], own[i[bad]]])
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    bounds = np.searchsorted(src, np.arange(start + 1))
    accepted = np.zeros(start, bool)
    accepted[:n_fixed] = True
    counts = np.zeros(len(quotas), np.int64)
    for c in n_fixed + rng.permutation(start - n_fixed):
        t = kind[c]
        if counts[t] < quotas[t] and not accepted[dst[bounds[c] : bounds[c + 1]]].any():
            accepted[c] = True
            counts[t] += 1
    return np.split(accepted, cuts)


def _subset(p: dict, keep: np.ndarray) -> dict:
    return {k: v[keep] for k, v in p.items()}


def build_cells(rng: np.random.Generator, bg: dict, quotas: np.ndarray, h: int, w: int, angle_fn) -> Cells:
    """Place crypts and stromal cells and return what to paint.

    Args:
        rng: generator.
        bg: half-resolution background from ``toy._background`` (its H/E get crypts painted in).
        quotas: int [7] nuclei wanted per LIZARD type (index 0 unused).
        h, w: tile size.
        angle_fn: ``angle_fn(bg, cy, cx)`` -> fibre direction at points.

    Returns:
        :class:`Cells`.
    """
    epi, free = place_glands(rng, bg, int(quotas[EPI]), h, w)
    if quotas[EPI] >= 4 and len(epi["cy"]) != quotas[EPI]:
        # Crypts come in whole rings: scale the other quotas by the epithelial count actually
        # placed (capped at 2x, for room), so the type shares hold.
        scaled = quotas * min(len(epi["cy"]) / quotas[EPI], 2.0)
        quotas = np.floor(scaled + rng.random(len(quotas))).astype(np.int64)
    groups = [{"t": EPI, "cy": epi["cy"], "cx": epi["cx"], "ncy": epi["cy"], "ncx": epi["cx"],
               "fn": ellipse_field, "half": 13, "p": epi["p"],
               "disks": _disks(epi["cy"], epi["cx"], epi["p"]["theta"], 0.7 * (epi["p"]["a"] - epi["p"]["b"]), epi["p"]["b"] + 0.5)}]  # fmt: skip
    for t in (CON, LYM, PLA, NEU, EOS):
        cy, cx = _candidates(rng, free, 3 * int(quotas[t]) + 2, 3 if t == LYM else 0, h, w)
        groups.append(_stromal(rng, t, cy, cx, bg, angle_fn))
    masks = _greedy(rng, groups, len(epi["cy"]), quotas)
    nuclei, cytoplasm, types, looks, clooks = [], [], [np.zeros(1, np.int64)], [np.zeros((1, 5))], [np.zeros((1, 4))]
    next_id, next_c, kinds = 1, 1, []
    for g, keep in zip(groups, masks):
        k = int(keep.sum())
        if k == 0:
            continue
        ids = np.arange(next_id, next_id + k, dtype=np.int32)
        nuclei.append(Stamps(g["ncy"][keep], g["ncx"][keep], ids, g["half"], g["fn"], _subset(g["p"], keep)))
        hl, e, o, tex, rim = _NUC_LOOK[g["t"]]
        looks.append(np.stack([rng.uniform(*hl, k), np.full(k, e), np.full(k, o), np.full(k, tex), np.full(k, rim)], 1))
        types.append(np.full(k, g["t"]))
        kinds.append(g["t"])
        next_id += k
        if "cfn" in g:
            cids = np.arange(next_c, next_c + k, dtype=np.int32)
            cytoplasm.append(Stamps(g["cy"][keep], g["cx"][keep], cids, g["chalf"], g["cfn"], _subset(g["cp"], keep)))
            clooks.append(np.tile(np.asarray(_CYTO_LOOK[g["t"]]), (k, 1)))
            next_c += k
    return Cells(cytoplasm, nuclei, np.concatenate(types), np.concatenate(looks).astype(np.float32),
                 np.concatenate(clooks).astype(np.float32), _nucleoli(rng, nuclei, kinds))  # fmt: skip


def _nucleoli(rng: np.random.Generator, nuclei: list, kinds: list) -> list:
    """One small dark dot, off-centre, in most epithelial and plasma nuclei."""
    out = []
    for st, t in zip(nuclei, kinds):
        if t not in (EPI, PLA):
            continue
        k = len(st.ids)
        keep = rng.random(k) < 0.7
        ang, dist = rng.uniform(0, 2 * np.pi, k), rng.uniform(0, 0.35, k) * st.params["b"]
        r = rng.uniform(0.9, 1.5, k)
        p = {"a": r, "b": r, "theta": 0 * r, "w2": 0 * r, "w3": 0 * r, "ph2": 0 * r, "ph3": 0 * r}
        cy, cx = st.cy + dist * np.sin(ang), st.cx + dist * np.cos(ang)
        out.append(Stamps(cy[keep], cx[keep], np.ones(int(keep.sum()), np.int32), 2, ellipse_field, _subset(p, keep)))
    return out
