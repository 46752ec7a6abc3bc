"""How much a compiled flood of our own would buy: scikit-image's watershed against a numba
re-implementation of its priority flood, on the watershed inputs of real post-processing.

    .venv/bin/pip install numba   # not a dependency of the project
    .venv/bin/python benchmarks/bench_flood.py [--patches 48] [--rounds 5]

Inputs: the soft maps of benchmarks/bench_postprocess.py (128-px crops of real CoNSeP masks), run
through the ``hovernet`` preset up to the watershed. Per patch the flood covers the blobs holding
two or more markers, as ``hovernet.postprocess._watershed`` calls it. Reported: scikit-image's
public ``watershed`` call, its compiled core alone (``_watershed_cy.watershed_raveled``), and the
numba flood (the same heap, the same (value, age) order, values clamped to the popped pixel's as
scikit-image 0.26 does), which must give the same labels on every patch.

The flood here is a measurement, not product code: it reproduces one scikit-image version's
heap order (later versions give markers the value -inf and change the ties), and numba is a
large dependency for the saving it shows.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numba  # noqa: E402
import skimage  # noqa: E402
from bench_postprocess import soft_inputs  # noqa: E402
from bench_recipe_sizes import _cpu  # noqa: E402
from skimage.segmentation import _watershed_cy, watershed  # noqa: E402

from hovernet import postprocess as pp  # noqa: E402
from hovernet.config import PostprocessConfig  # noqa: E402


@numba.njit(cache=True, boundscheck=False)
def _push(hv, ha, hi, items, val, age, idx):
    child = items
    while child > 0:  # sift up while strictly smaller than the parent, as scikit-image's heap
        parent = (child - 1) >> 1
        pv = hv[parent]
        if val < pv or (val == pv and age < ha[parent]):
            hv[child] = pv
            ha[child] = ha[parent]
            hi[child] = hi[parent]
            child = parent
        else:
            break
    hv[child] = val
    ha[child] = age
    hi[child] = idx


@numba.njit(cache=True, boundscheck=False)
def _sift_last_to_root(hv, ha, hi, items):
    v, a, x = hv[items], ha[items], hi[items]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= items:
            break
        pick, sv, sa = -1, v, a
        if hv[left] < sv or (hv[left] == sv and ha[left] < sa):
            pick, sv, sa = left, hv[left], ha[left]
        right = left + 1
        if right < items and (hv[right] < sv or (hv[right] == sv and ha[right] < sa)):
            pick = right
        if pick < 0:
            break
        hv[i], ha[i], hi[i] = hv[pick], ha[pick], hi[pick]
        i = pick
    hv[i], ha[i], hi[i] = v, a, x


@numba.njit(cache=True, boundscheck=False)
def flood(image, labels, mask, offsets):
    """Flood ``labels`` (raveled, padded by one pixel; markers nonzero) over ``mask``."""
    n = image.shape[0]
    hv = np.empty(n + 1, np.float64)  # every pixel enters the heap at most once
    ha = np.empty(n + 1, np.int64)
    hi = np.empty(n + 1, np.int64)
    items = 0
    for idx in range(n):
        if labels[idx] != 0:
            _push(hv, ha, hi, items, image[idx], 0, idx)
            items += 1
    age = 1
    while items > 0:
        value, index = hv[0], hi[0]
        items -= 1
        if items > 0:
            _sift_last_to_root(hv, ha, hi, items)
        for k in range(offsets.shape[0]):
            nb = index + offsets[k]
            if mask[nb] == 0 or labels[nb] != 0:
                continue
            age += 1
            labels[nb] = labels[index]
            _push(hv, ha, hi, items, max(image[nb], value), age, nb)
            items += 1
    return labels


def flood_inputs(items: list[dict], cfg: PostprocessConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(dist, markers, mask) of the multi-marker blobs of each patch, cropped to their box."""
    out = []
    for it in items:
        blobs = pp._remove_small(it["prob"][None] >= cfg.np_threshold, cfg.min_object_size)
        mask = blobs > 0
        energy = pp._energy(mask.astype(np.float32), it["hv"][None], cfg.sobel_kernel_size)
        dist = -pp._smooth((1.0 - energy) * mask, cfg)
        markers = pp._remove_small(pp._open_markers(pp._fill_holes(mask & (energy < cfg.marker_threshold)), cfg),
                                   cfg.min_object_size)
        markers = np.where(mask, markers, 0)[0]
        comps = blobs[0]
        n_labels = np.zeros(comps.max() + 1, np.int64)
        for c in np.unique(comps[markers > 0]):
            n_labels[c] = len(np.unique(markers[comps == c])) - (0 in markers[comps == c])
        sub = (n_labels >= 2)[comps] & (comps > 0)
        if sub.any():
            rows, cols = np.nonzero(sub.any(1))[0], np.nonzero(sub.any(0))[0]
            box = np.s_[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
            out.append((dist[0][box], np.where(sub, markers, 0)[box].astype(np.int32), sub[box]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cases = flood_inputs(soft_inputs(args.patches), PostprocessConfig.hovernet())
    prepared = []
    for dist, markers, mask in cases:
        img = np.pad(dist.astype(np.float64), 1)
        w = img.shape[1]
        prepared.append((img.ravel(), np.pad(markers, 1).ravel(), np.pad(mask, 1).astype(np.int8).ravel(),
                         np.array([-w, -1, 1, w], np.intp)))

    def public():
        return [watershed(d, markers=m, mask=k) for d, m, k in cases]

    def core():
        outs = []
        for img, lab, m, offs in prepared:
            o = lab.copy()
            _watershed_cy.watershed_raveled(img, np.flatnonzero(o), offs, m, np.array([1], np.intp), 0.0, o, False)
            outs.append(o)
        return outs

    def ours():
        return [flood(img, lab.copy(), m, offs.astype(np.int64)) for img, lab, m, offs in prepared]

    fns = {"skimage_watershed": public, "skimage_core": core, "numba_flood": ours}
    for f in fns.values():
        f()  # compile and warm
    same = all(np.array_equal(a, b) for a, b in zip(core(), ours()))
    same_public = all(np.array_equal(a.reshape(np.pad(p, 1).shape)[1:-1, 1:-1], p2)
                      for a, p, p2 in zip(ours(), [c[0] for c in cases], public()))
    best = {k: float("inf") for k in fns}
    for _ in range(args.rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    res = {"machine": _cpu(), "skimage": skimage.__version__, "numba": numba.__version__, "floods": len(cases),
           "flooded_pixels": int(sum(k.sum() for _, _, k in cases)), "identical_to_core": same,
           "identical_to_watershed": same_public,
           **{f"{k}_ms_per_flood": 1e3 * v / len(cases) for k, v in best.items()}}
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
