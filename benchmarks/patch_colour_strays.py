"""Stain colour, texture and stray nuclei of synthetic patches beside their real parents, per sampling.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/patch_colour_strays.py --store consep.h5 \\
        --split R2 --num 48 --model consep-cpu \\
        --sampling ddpm:50:1.5:0-5.42,ddim:50:1.5:0-5.42 [--sheet sheet.png] [--json out.json]

The patch model draws one patch per real mask of ``--num`` patches of ``--split`` (drawn with
seed 0; sampling seed 0), and each sampling is scored against those masks' real patches on what
FID folds into one number:

- **background colour**: each patch's mean CIELAB colour over pixels outside every mask
  nucleus; reported as the median over patches of L* (lightness) and a* (red-green: eosin pink)
  and as their p10-p90 spread over patches, the stain variety a bank carries;
- **texture**: the median over patches of the standard deviation of L* over that background;
- **off-mask dark blobs**: connected components of haematoxylin-rich pixels (scikit-image's
  ``rgb2hed``, above the 10th percentile of haematoxylin over the nucleus pixels of 200 real
  patches of ``--reference-split``) of at least 2 px that lie wholly 3 px or more from every mask
  nucleus, per patch: nuclei drawn where the mask has none (real patches have some too: faint
  stain, unannotated debris);
- **mask nuclei dark**: the share of mask-nucleus pixels above that threshold (nuclei drawn where
  the mask has them).

``SAMPLER:STEPS:GUIDANCE[:LOW-HIGH|all[:ETA]]`` names a sampling: ``ddim:50:1.5:0-5.42:0.5`` is
DDIM in 50 steps at guidance 1.5 applied at sigma <= 5.42, eta 0.5.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy import ndimage as ndi  # noqa: E402
from skimage.color import rgb2hed, rgb2lab  # noqa: E402
from skimage.measure import label  # noqa: E402

from nasdm_aug.data.store import PatchStore  # noqa: E402
from nasdm_aug.sampling import SamplerOptions, check_guidance_interval  # noqa: E402

MIN_BLOB_PX = 2
NEAR_PX = 3


def parse_sampling(spec: str) -> tuple[SamplerOptions, float, tuple[float, float] | None]:
    sampler, steps, guidance, *rest = spec.split(":")
    interval = check_guidance_interval(tuple(rest[0].split("-"))) if rest and rest[0] != "all" else None
    eta = float(rest[1]) if len(rest) > 1 else None
    opts = SamplerOptions(sampler, steps=int(steps), **({"eta": eta} if eta is not None else {}))
    return opts, float(guidance), interval


def haematoxylin_threshold(store: PatchStore, split: str, n: int = 200) -> float:
    pool = store.indices(split)
    idx = np.sort(np.random.default_rng(1).choice(pool, min(n, len(pool)), replace=False))
    d = store.read(idx, keys=("image", "inst"))
    h = np.concatenate([rgb2hed(img)[..., 0][inst > 0] for img, inst in zip(d["image"], d["inst"])])
    return float(np.percentile(h, 10))


def patch_stats(images: np.ndarray, insts: np.ndarray, threshold: float) -> dict[str, float]:
    lab = rgb2lab(images)
    colour, texture, strays, dark = [], [], [], []
    for img_lab, img, inst in zip(lab, images, insts):
        bg = inst == 0
        colour.append(img_lab[bg].mean(0))
        texture.append(img_lab[bg][:, 0].std())
        h_dark = rgb2hed(img)[..., 0] > threshold
        near = ndi.binary_dilation(inst > 0, iterations=NEAR_PX)
        comps = label(h_dark)
        stray = np.bincount(comps.ravel()) >= MIN_BLOB_PX  # per component; 0 is the background
        stray[0] = False
        stray[comps[near]] = False  # any pixel within NEAR_PX of a mask nucleus
        strays.append(int(stray.sum()))
        if (inst > 0).any():
            dark.append(h_dark[inst > 0].mean())
    colour = np.array(colour)
    spread = lambda v: float(np.percentile(v, 90) - np.percentile(v, 10))  # noqa: E731
    return {"L_median": float(np.median(colour[:, 0])), "L_spread": spread(colour[:, 0]),
            "a_median": float(np.median(colour[:, 1])), "a_spread": spread(colour[:, 1]),
            "texture": float(np.median(texture)), "strays": float(np.mean(strays)),
            "strays_median": float(np.median(strays)),
            "mask_nuclei_dark": float(np.mean(dark)) if dark else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="R2", help="masks to sample from and compare with")
    ap.add_argument("--reference-split", default="Train", help="real patches that set the haematoxylin threshold")
    ap.add_argument("--num", type=int, default=48)
    ap.add_argument("--model", default="consep-cpu", help="shipped model name or MASK_RUN,PATCH_RUN")
    ap.add_argument("--sampling", required=True, help="SAMPLER:STEPS:GUIDANCE[:LOW-HIGH|all[:ETA]],...")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sheet", default="", help="PNG: mask | real | each sampling, for 10 of the masks")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    from nasdm_aug.generator import NASDMGenerator
    from nasdm_aug.hardware import describe_machine

    store = PatchStore(args.store)
    idx = np.sort(np.random.default_rng(0).choice(store.indices(args.split), args.num, replace=False))
    d = store.read(idx, keys=("image", "inst", "type"))
    threshold = haematoxylin_threshold(store, args.reference_split)
    gen = NASDMGenerator.from_pretrained(*args.model.split(","))
    print(f"machine: {describe_machine()}; Python {platform.python_version()}", flush=True)
    rows = {"real parents": patch_stats(d["image"], d["inst"], threshold)}
    banks = {}
    for spec in args.sampling.split(","):
        opts, guidance, interval = parse_sampling(spec)
        t0 = time.perf_counter()
        banks[spec] = gen.generate_patches(d["inst"], d["type"], sampling=opts, guidance=guidance,
                                           guidance_interval=interval, seed=0, batch_size=args.batch_size,
                                           progress=True)
        rows[spec] = {**patch_stats(banks[spec], d["inst"], threshold), "seconds": time.perf_counter() - t0}
    print(f"| {args.num} {args.split} masks | background L* median (p10-p90 spread) | a* median (spread) | "
          "texture (L* sd) | off-mask dark blobs / patch (median) | mask nuclei dark |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['L_median']:.1f} ({r['L_spread']:.1f}) | {r['a_median']:.1f} ({r['a_spread']:.1f}) | "
              f"{r['texture']:.1f} | {r['strays']:.1f} ({r['strays_median']:.0f}) | {r['mask_nuclei_dark']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe_machine(), "threshold": threshold,
                                               "indices": idx.tolist(), "rows": rows}, indent=1))
    if args.sheet:
        from PIL import Image

        from nasdm_aug.viz import colour_mask

        pick = np.linspace(0, args.num - 1, 10).astype(int)
        cols = [np.stack([colour_mask(d["inst"][i], d["type"][i], store.type_table) for i in pick]), d["image"][pick]]
        cols += [b[pick] for b in banks.values()]
        grid = np.concatenate([np.concatenate(list(c), 0) for c in cols], 1)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(args.sheet)
        print("sheet columns: mask | real | " + " | ".join(banks), flush=True)


if __name__ == "__main__":
    main()
