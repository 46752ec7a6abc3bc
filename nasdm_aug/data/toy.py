"""Procedural H&E-like toy tissue with exact nuclei labels, written in the Lizard on-disk layout.

The embedded default dataset: colon-like crypts in fibrous stroma holding
Lizard's six nuclei types (Graham et al., ICCV-W 2021), at Lizard-like or balanced frequencies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.measure import label as label_components

from nasdm_aug.config import ConfigBase
from nasdm_aug.data.tile import Tile
from nasdm_aug.data.toy_cells import build_cells
from nasdm_aug.data.toy_shapes import paint_stamps
from nasdm_aug.types import LIZARD
from nasdm_aug.utils import unknown_name

__all__ = ["FREQUENCIES", "ToyConfig", "generate_toy_tile", "write_toy_dataset", "tile_to_lizard_mat"]

# Nuclei-type frequencies in LIZARD id order (neutrophil, epithelial, lymphocyte, plasma,
# eosinophil, connective). "lizard" rounds the class shares of Lizard's ~495k nuclei
# (Graham et al. 2021; CoNIC 2022): neutrophils and eosinophils near 1% each.
FREQUENCIES: dict[str, tuple[float, ...]] = {
    "lizard": (0.01, 0.52, 0.17, 0.07, 0.01, 0.22),
    "balanced": (1 / 6,) * 6,
}

# Beer-Lambert stain vectors (optical density per unit stain, RGB): haematoxylin and eosin of
# Ruifrok & Johnston (2001), and an orange eosin tint for eosinophil granules.
_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.05, 0.62, 0.78]], np.float32)
_STAINS /= np.linalg.norm(_STAINS, axis=1, keepdims=True)
_DENSITY = 1.7e-3  # nuclei per tissue pixel at 20x, about Lizard's ~2000 per 1000 x 1000 image


@dataclass(frozen=True)
class ToyConfig(ConfigBase):
    """How a toy-tissue folder was made (saved as ``config.json`` in it)."""

    n_images: int  # number of images, named toy_00000.png ...
    seed: int  # image i is drawn from np.random.default_rng([seed, i])
    size: tuple[int, int] = (1000, 1000)  # (H, W) of every image; Lizard's are about 1000 x 1000
    frequencies: str = "lizard"  # a key of FREQUENCIES

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if len(self.size) != 2 or min(self.size) < 16:
            raise ValueError(f"size must be (H, W) with both >= 16, got {self.size}")
        if self.frequencies not in FREQUENCIES:
            raise unknown_name("frequencies", self.frequencies, FREQUENCIES)


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field, about unit variance, correlation length ``cell`` px: float32 [H, W].

    A coarse Gaussian grid is upsampled with two small Gaussian interpolation matrices
    (``Ay @ g @ Ax.T``), far cheaper than filtering a full-resolution field. ``einsum`` without
    BLAS: OpenBLAS threads cost ~20x more than the product itself on a busy 2-core machine.
    """
    mats = []
    for n in shape:
        m = int(np.ceil(n / cell)) + 3
        pos = np.arange(n, dtype=np.float32) / cell + 1.0
        wts = np.exp(-0.5 * ((pos[:, None] - np.arange(m, dtype=np.float32)[None, :]) / 0.7) ** 2)
        mats.append(wts / wts.sum(1, keepdims=True))
    grid = rng.standard_normal((mats[0].shape[1], mats[1].shape[1])).astype(np.float32)
    out = np.einsum("ik,kj->ij", mats[0], np.einsum("kl,jl->kj", grid, mats[1]))
    # Normalise by the field's expected std, not the tile's sample std: a tile smaller than
    # ``cell`` must not have its few grid values blown up to unit variance.
    expected = np.sqrt((mats[0] ** 2).sum(1).mean() * (mats[1] ** 2).sum(1).mean())
    return out / np.float32(expected)


def _fibres(rng: np.random.Generator, h2: int, w2: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Wavy collagen fibres at half resolution: intensity float32 [h2, w2] in [0, 1].

    Fibres are level lines of a warped coordinate ``phi = -x sin(t0) + y cos(t0) + D(x, y)``;
    a 1-D random profile looked up at ``phi`` gives thin parallel, wavy strands.

    Returns:
        ``(fibre, warp, t0)``: the fibre map, the warp D (half-res px) and the base angle.
    """
    t0 = float(rng.uniform(0, np.pi))
    warp = _smooth_noise(rng, (h2, w2), 35.0) * float(rng.uniform(10.0, 24.0))
    yy, xx = np.mgrid[0:h2, 0:w2].astype(np.float32)
    phi = -xx * np.sin(t0) + yy * np.cos(t0) + warp
    phi -= phi.min()
    idx = (phi * 4).astype(np.int64)
    fibre = np.zeros((h2, w2), np.float32)
    # Fine fibrils (~2 px) on coarser bundles (~8 px); sigma is in profile samples (4 per px),
    # wide enough that the lookup never aliases into a regular comb.
    for sigma, weight in ((3.0, 0.7), (14.0, 0.3)):
        profile = ndimage.gaussian_filter1d(rng.standard_normal(int(idx.max()) + 8), sigma)
        profile = np.clip((profile - profile.mean()) / (profile.std() + 1e-6) * 0.45 + 0.5, 0, 1)
        fibre += weight * profile.astype(np.float32)[idx]
    return fibre, warp, t0


def _background(rng: np.random.Generator, h2: int, w2: int) -> dict:
    """Stroma, clefts and stain concentrations at half resolution.

    Returns:
        dict with ``H``, ``E`` (float32 [h2, w2] stain concentrations), ``tissue`` (float32
        [h2, w2] in [0, 1]), ``warp`` and ``t0`` (for the fibre direction).
    """
    tissue = np.clip((_smooth_noise(rng, (h2, w2), 70.0) - rng.uniform(-2.4, -1.4)) * 2.0, 0, 1)
    fibre, warp, t0 = _fibres(rng, h2, w2)
    streak = np.clip(_smooth_noise(rng, (h2, w2), 10.0) * 0.5 + 0.5, 0, 1)
    patchy = _smooth_noise(rng, (h2, w2), 25.0)
    # Clefts: thin pale gaps where the fibre profile is low (loose stroma between bundles).
    cleft = np.clip((0.33 - fibre) * 6.0, 0, 1) * np.clip(patchy * 0.5 + 0.6, 0, 1)
    e = (0.03 + 0.075 * fibre * (0.4 + streak) + 0.012 * patchy) * (1 - 0.8 * cleft)
    hx = (0.04 + 0.008 * patchy + 0.02 * fibre * streak) * (1 - 0.7 * cleft)
    family = np.clip(_smooth_noise(rng, (h2, w2), 30.0) + 0.5, 0, 1)
    return {"H": hx * tissue + 0.01, "E": e * tissue + 0.012, "tissue": tissue, "warp": warp, "t0": t0,
            "streak": streak, "family": family}  # fmt: skip


def _fibrils(rng: np.random.Generator, bg: dict, h: int, w: int) -> np.ndarray:
    """Fine (~1 px) collagen fibrils at full resolution, following the same warped flow.

    Returns:
        float32 [H, W] multiplicative factor on the background stains (1 outside free stroma).
    """
    yy, xx = np.ogrid[0:h, 0:w]
    # A second family at a slight angle, so fibrils cross and fan out instead of running parallel.
    t1 = bg["t0"] + rng.uniform(0.25, 0.5) * rng.choice([-1, 1])
    out = np.zeros((h, w), np.float32)
    for t, weight in ((bg["t0"], bg["family"]), (t1, 1.0 - bg["family"])):
        phi = (-np.sin(t) * xx + np.cos(t) * yy).astype(np.float32) + 2.0 * _upsample2(bg["warp"], h, w)
        idx = ((phi - phi.min()) * 2).astype(np.int64)
        profile = ndimage.gaussian_filter1d(rng.standard_normal(int(idx.max()) + 8), 1.6)
        profile = (profile / (profile.std() + 1e-6)).astype(np.float32)
        out += np.clip(profile[idx], -1.5, 1.5) * _upsample2(weight, h, w)
    # Fibrils are short: their amplitude breaks up along the fibre (the half-res streak field).
    return 1.0 + 0.35 * out * _upsample2(bg["free"] * bg["streak"], h, w)


def fibre_angle(bg: dict, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """Local fibre direction (radians, x right, y down) at full-resolution points."""
    warp = bg["warp"]
    i = np.clip((cy / 2).astype(np.int64), 1, warp.shape[0] - 2)
    j = np.clip((cx / 2).astype(np.int64), 1, warp.shape[1] - 2)
    gx = -np.sin(bg["t0"]) + (warp[i, j + 1] - warp[i, j - 1]) / 2
    gy = np.cos(bg["t0"]) + (warp[i + 1, j] - warp[i - 1, j]) / 2
    return np.arctan2(-gx, gy)  # perpendicular to grad(phi): along the fibres


def _quotas(rng: np.random.Generator, h: int, w: int, tissue: float, probs: np.ndarray) -> np.ndarray:
    """Nuclei to draw per type (index 0 unused), Poisson around density x area x share."""
    return np.concatenate([[0], rng.poisson(_DENSITY * h * w * tissue * probs)])


def _blur3(x: np.ndarray, a: float) -> np.ndarray:
    """Separable 3-tap blur ``[a, 1 - 2a, a]`` along both axes, edges clamped; in place-ish.

    Cheaper than ``ndimage.gaussian_filter`` for the sub-pixel optical blur we need (sigma < 1).
    """
    for axis in (0, 1):
        out = x * (1 - 2 * a)
        lo, hi = [slice(None)] * 2, [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(hi)] += a * x[tuple(lo)]
        out[tuple(lo)] += a * x[tuple(hi)]
        edge0, edge1 = [slice(None)] * 2, [slice(None)] * 2
        edge0[axis], edge1[axis] = 0, -1
        out[tuple(edge0)] += a * x[tuple(edge0)]
        out[tuple(edge1)] += a * x[tuple(edge1)]
        x = out
    return x


def _upsample2(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour 2x upsampling, cropped to [h, w] (one copy, no repeat chains)."""
    h2, w2 = a.shape
    return np.broadcast_to(a[:, None, :, None], (h2, 2, w2, 2)).reshape(2 * h2, 2 * w2)[:h, :w]


def _render(rng: np.random.Generator, bg: dict, maps: dict, grain: np.ndarray) -> np.ndarray:
    """Stain concentrations -> uint8 RGB [H, W, 3] by Beer-Lambert, with blur and sensor noise."""
    h, w = grain.shape
    # Stroma is mottled at the 2-px scale and fibrillar at 1 px, not smooth.
    texture = _fibrils(rng, bg, h, w) * (0.8 + 0.4 * grain)
    conc = [_upsample2(bg[k], h, w) * texture for k in ("H", "E")]
    orange = []
    for values, where in maps.values():
        idx = np.flatnonzero(where)
        for c in range(2):
            conc[c].ravel()[idx] = values[c]
        # The orange tint (eosinophil granules) is sparse: keep it as (pixels, values), unblurred.
        if np.any(values[2]):
            orange.append((idx, values[2]))
    a = float(rng.uniform(0.18, 0.28))  # one 3-tap pass: an optical blur of sigma ~0.6-0.75 px
    conc = [_blur3(c, a) for c in conc]
    stains = _STAINS * rng.uniform([0.85, 0.85, 0.9], [1.15, 1.2, 1.1])[:, None].astype(np.float32) * np.log(10)
    noise = rng.random((h, w), dtype=np.float32)
    noise -= 0.5
    noise *= 7.0
    rgb = np.empty((h, w, 3), np.uint8)
    od = np.empty((h, w), np.float32)
    for ch in range(3):
        np.multiply(conc[0], -stains[0, ch], out=od)
        od -= conc[1] * stains[1, ch]
        for idx, vals in orange:
            od.ravel()[idx] -= vals * stains[2, ch]
        od += np.float32(np.log(255.0))
        np.exp(od, out=od)
        od += noise
        rgb[:, :, ch] = np.clip(od, 0, 255, out=od)
    return rgb


def _clean_instances(inst: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """Keep each instance's largest piece, drop mostly-hidden ones, relabel 1..N.

    Args:
        inst: int32 [H, W] painted ids 1..K (later shapes hid parts of earlier ones).
        drawn: int64 [K + 1] pixels each id covered when drawn.

    Returns:
        int64 [K + 1]: map from painted id to final id (0 = dropped).
    """
    comp = label_components(inst, background=0, connectivity=2)
    sizes = np.bincount(comp.ravel())
    comp_inst = np.zeros(len(sizes), np.int64)
    comp_inst[comp.ravel()] = inst.ravel()
    order = np.argsort(-sizes[1:], kind="stable") + 1
    _, first = np.unique(comp_inst[order], return_index=True)
    keep_comp = np.zeros(len(sizes), bool)
    keep_comp[order[first]] = True
    inst[~keep_comp[comp]] = 0
    visible = np.bincount(inst.ravel(), minlength=len(drawn))
    alive = (visible >= np.maximum(4, 0.45 * drawn)) & (np.arange(len(drawn)) > 0)
    lut = np.zeros(len(drawn), np.int64)
    lut[alive] = np.arange(1, alive.sum() + 1)
    return lut


def generate_toy_tile(
    rng: np.random.Generator | int,
    size: tuple[int, int] = (256, 256),
    frequencies: str = "lizard",
    name: str = "toy",
) -> Tile:
    """Draw one toy H&E tile with its exact instance and type maps.

    Args:
        rng: a generator or an integer seed.
        size: (H, W) in pixels (20x, about Lizard's scale).
        frequencies: a key of :data:`FREQUENCIES` ("lizard" or "balanced").
        name: the tile's name.

    Returns:
        Tile with image uint8 [H, W, 3], inst int32 [H, W] (1..N), type uint8 [H, W] (LIZARD ids).
    """
    if frequencies not in FREQUENCIES:
        raise unknown_name("frequencies", frequencies, FREQUENCIES)
    rng = _as_rng(rng)
    h, w = int(size[0]), int(size[1])
    bg = _background(rng, (h + 1) // 2, (w + 1) // 2)
    quotas = _quotas(rng, h, w, float(bg["tissue"].mean()), np.asarray(FREQUENCIES[frequencies]))
    cells = build_cells(rng, bg, quotas, h, w, fibre_angle)
    # 1. Cytoplasm (not part of any instance), then nuclei in drawing order.
    cyto = np.zeros((h, w), np.int32)
    for stamps in cells.cytoplasm:
        paint_stamps(cyto, None, stamps)
    inst = np.zeros((h, w), np.int32)
    rmap = np.ones((h, w), np.float32)
    drawn = np.zeros(cells.n_nuclei + 1, np.int64)
    for stamps in cells.nuclei:
        drawn[stamps.ids] = paint_stamps(inst, rmap, stamps)
    # 2. Exact labels: one connected piece per instance, ids 1..N, one type each.
    lut = _clean_instances(inst, drawn)
    inst = lut[inst].astype(np.int32)
    type_of = np.zeros(int(lut.max()) + 1, np.uint8)
    type_of[lut[lut > 0]] = cells.nucleus_type[lut > 0]
    tmap = type_of[inst]
    # 3. Appearance: per-pixel stain concentrations of cytoplasm and nuclei, then render.
    grain = _upsample2(rng.random(bg["H"].shape, dtype=np.float32), h, w)
    spot = np.zeros((h, w), np.uint8)
    for stamps in cells.spots:
        paint_stamps(spot, None, stamps)
    maps = cells.appearance(rng, cyto, inst, lut, rmap, grain, spot)
    image = _render(rng, bg, maps, grain)
    return Tile(image=image, inst=inst, type=tmap, name=name)


def tile_to_lizard_mat(tile: Tile) -> dict[str, np.ndarray]:
    """The Lizard label record of a tile (what ``Labels/<name>.mat`` holds).

    Returns:
        dict with ``inst_map`` int32 [H, W]; ``id`` int32 [N, 1]; ``class`` int32 [N, 1] (LIZARD
        ids); ``bbox`` int32 [N, 4] as (y1, y2, x1, x2), 0-based, end exclusive; ``centroid``
        float64 [N, 2] as (x, y).
    """
    inst = tile.inst.astype(np.int32)
    n = int(inst.max())
    ids = np.arange(1, n + 1, dtype=np.int32)
    boxes = ndimage.find_objects(inst, max_label=n)
    bbox = np.array([[b[0].start, b[0].stop, b[1].start, b[1].stop] for b in boxes], np.int32).reshape(-1, 4)
    classes = np.zeros(n + 1, np.int32)
    classes[inst.ravel()] = tile.type.ravel()
    ys, xs = np.nonzero(inst)
    labels = inst[ys, xs]
    area = np.bincount(labels, minlength=n + 1)[1:].astype(np.float64)
    cy = np.bincount(labels, ys, minlength=n + 1)[1:] / area
    cx = np.bincount(labels, xs, minlength=n + 1)[1:] / area
    return {
        "inst_map": inst,
        "id": ids[:, None],
        "class": classes[1:, None],
        "bbox": bbox,
        "centroid": np.stack([cx, cy], axis=1).astype(np.float64).reshape(-1, 2),
    }


def write_toy_dataset(
    out_dir: str | Path,
    n_images: int,
    seed: int,
    size: tuple[int, int] = (1000, 1000),
    frequencies: str = "lizard",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write ``n_images`` toy tiles in the Lizard layout, atomically.

    ``out_dir/Images/toy_00000.png`` (RGB) and ``out_dir/Labels/toy_00000.mat`` (MATLAB v5, see
    :func:`tile_to_lizard_mat`), plus ``config.json``. Image i is drawn from
    ``default_rng([seed, i])``, so it does not depend on ``n_images``.

    Returns:
        dict with ``images``, ``nuclei`` (type name -> count) and ``seconds``.

    Raises:
        InputError: ``out_dir`` exists and ``overwrite`` is False.
        ValueError: invalid n_images, seed, size or frequencies.
    """
    import scipy.io
    from PIL import Image
    from tqdm import tqdm

    from nasdm_aug.utils import atomic_output

    config = ToyConfig(n_images=int(n_images), seed=int(seed), size=tuple(size), frequencies=frequencies)
    counts = np.zeros(LIZARD.n_types + 1, np.int64)
    start = time.perf_counter()
    with atomic_output(out_dir, overwrite=overwrite) as tmp:
        (tmp / "Images").mkdir(parents=True)
        (tmp / "Labels").mkdir()
        for i in tqdm(range(config.n_images), desc="toy tissue", unit="img", disable=not progress):
            name = f"toy_{i:05d}"
            tile = generate_toy_tile(np.random.default_rng([config.seed, i]), config.size, frequencies, name)
            Image.fromarray(tile.image).save(tmp / "Images" / f"{name}.png", compress_level=1)
            record = tile_to_lizard_mat(tile)
            scipy.io.savemat(tmp / "Labels" / f"{name}.mat", record, format="5", do_compression=True)
            counts += np.bincount(record["class"].ravel(), minlength=len(counts))
        config.save(tmp / "config.json")
        nuclei = {LIZARD.name_of(t): int(counts[t]) for t in LIZARD.ids}
        summary = {"images": config.n_images, "nuclei": nuclei, "seconds": round(time.perf_counter() - start, 3)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
