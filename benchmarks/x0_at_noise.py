"""What a patch model makes of real patches noised to a given level: its prediction of x_0 at
several timesteps, beside the real patch, for one or more models (one row per patch and model).

    .venv/bin/python benchmarks/x0_at_noise.py --store consep.h5 --split R2 \\
        --model eps=RUN_DIR --model v=RUN_DIR [--num 4] [--timesteps 50,200,400,700,950] --out x0.png

A sampler starts from pure noise and follows these predictions down: where a model's x_0 at high
noise is far from any tissue (saturated colour), the first sampling steps commit to colour blotches
that the later steps keep. Printed per model and timestep: the mean squared error of the predicted
x_0 (in [-1, 1] units) against the real patch, with the same noise for every model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="R2")
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=RUN",
                    help="a patch run or checkpoint folder (repeat)")
    ap.add_argument("--num", type=int, default=4, help="patches drawn (seed 0) from --split")
    ap.add_argument("--timesteps", default="50,200,400,700,950")
    ap.add_argument("--out", required=True, help="PNG")
    args = ap.parse_args()
    from nasdm_aug.data.masks import patch_condition
    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.generator import NASDMGenerator
    from nasdm_aug.hardware import describe_machine
    from nasdm_aug.training.data import image_to_x, x_to_image
    from nasdm_aug.viz import contact_sheet

    torch.set_num_threads(1)
    steps = [int(t) for t in args.timesteps.split(",")]
    with PatchStore(args.store) as st:
        pool = st.indices(args.split)
        idx = np.sort(np.random.default_rng(0).choice(pool, size=min(args.num, len(pool)), replace=False))
        d = st.read(idx)
        n_types = st.type_table.n_types
    x0 = torch.from_numpy(np.stack([image_to_x(im) for im in d["image"]]))
    cond = torch.from_numpy(np.stack([patch_condition(i, t, n_types) for i, t in zip(d["inst"], d["type"])]))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    print(f"machine: {describe_machine()}; {len(idx)} {args.split} patches")
    rows, titles = [], []
    for spec in args.model:
        label, _, run = spec.partition("=")
        g = NASDMGenerator.from_pretrained(None, run, device="cpu", dtype="float32", layout="contiguous")
        diffusion, model = g._diffusion["patch"], g.patch_model.eval()
        preds = []
        with torch.no_grad():
            for tt in steps:
                t = torch.full((len(idx),), tt)
                xt = diffusion.q_sample(x0, t, noise)
                px = diffusion.p_mean_variance(lambda x, ts, **k: model(x, ts, cond), xt, t)["pred_xstart"]
                print(f"{label} t={tt}: x_0 MSE {((px - x0) ** 2).mean().item():.4f}")
                preds.append(x_to_image(px).numpy())
        for i in range(len(idx)):
            rows.append([p[i] for p in preds] + [d["image"][i]])
            titles.append(label)
    contact_sheet(rows, args.out, column_titles=[f"x_0 at t={t}" for t in steps] + ["real"], row_titles=titles)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
