"""How good are the embedded toy mask and patch models? Numbers and a contact sheet (docs/toy_model_masks.png).

    .venv/bin/python benchmarks/toy_model_samples.py --store /tmp/toy-models/toy64.h5 [--n 32] [--steps 50]

Takes ``--n`` real patches of the store's Test split (or every split when it has none), asks the
mask model for masks with the same type-presence vectors, decodes them, and compares the decoded
masks with the real ones: nuclei per mask, mean nucleus area, how many requested types appear, how
many decoded nuclei carry a type that was not requested, and how many nuclei are smaller than 30 px
(fragments). It then draws patches for the first masks with the patch model and saves a sheet:
real patch | real mask | generated mask | generated patch over its mask. Prints a markdown table
for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from nasdm_aug.data.masks import type_presence
from nasdm_aug.data.store import PatchStore
from nasdm_aug.generator import TOY_MODEL_DIR, NASDMGenerator
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.viz import colour_mask, contact_sheet, overlay_mask

REPO = Path(__file__).resolve().parents[1]


def mask_stats(inst: np.ndarray, types: np.ndarray, presence: np.ndarray, fragment: int = 30) -> dict[str, float]:
    """Per-mask statistics averaged over masks; ``presence`` [n, n_types] is what was asked for."""
    counts, areas, hit, stray, small = [], [], [], [], []
    for i in range(len(inst)):
        ids, sizes = np.unique(inst[i][inst[i] > 0], return_counts=True)
        counts.append(len(ids))
        areas.extend(sizes.tolist())
        small.append(int((sizes < fragment).sum()))
        got = type_presence(types[i], presence.shape[1]) > 0
        want = presence[i] > 0
        hit.append(got[want].mean() if want.any() else 1.0)
        nuc_types = [int(np.bincount(types[i][inst[i] == k]).argmax()) for k in ids]
        stray.append(np.mean([not want[t - 1] for t in nuc_types]) if nuc_types else 0.0)
    return {
        "nuclei per mask": float(np.mean(counts)),
        "mean nucleus area (px)": float(np.mean(areas)) if areas else 0.0,
        "requested types present": float(np.mean(hit)),
        "nuclei of an unrequested type": float(np.mean(stray)),
        "nuclei < 30 px per mask": float(np.mean(small)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="a toy PatchStore at the models' patch size (e.g. from train_toy_models.py)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--sheet-rows", type=int, default=8)
    ap.add_argument("--model", default=str(TOY_MODEL_DIR), help="folder with mask/ and patch/ runs")
    ap.add_argument("--out", default=str(REPO / "docs" / "toy_model_masks.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    store = PatchStore(args.store)
    idx = store.indices("Test") if "Test" in store.splits else store.indices()
    idx = np.random.default_rng(args.seed).choice(idx, size=min(args.n, len(idx)), replace=False)
    real = store.read(sorted(idx.tolist()))
    table = store.type_table
    presence = np.stack([type_presence(t, table.n_types) for t in real["type"]])
    gen = NASDMGenerator.from_pretrained(Path(args.model) / "mask", Path(args.model) / "patch", device="cpu")
    t0 = time.perf_counter()
    inst, types = gen.generate_masks(presence, len(presence), sampling=SamplerOptions(steps=args.steps), guidance=args.guidance, seed=args.seed,
                                     progress=True)
    t_mask = time.perf_counter() - t0
    rows = min(args.sheet_rows, len(inst))
    images = gen.generate_patches(inst[:rows], types[:rows], sampling=SamplerOptions(steps=args.steps), guidance=args.guidance, seed=args.seed,
                                  progress=True)
    got, want = mask_stats(inst, types, presence), mask_stats(real["inst"], real["type"], presence)
    print(f"{len(inst)} masks, {args.steps} steps, guidance {args.guidance}, {t_mask:.0f} s for the masks")
    print("| statistic | real (same type requests) | mask model |")
    print("|---|---|---|")
    for k in want:
        print(f"| {k} | {want[k]:.2f} | {got[k]:.2f} |")
    sheet = [[real["image"][i], colour_mask(real["inst"][i], real["type"][i], table), colour_mask(inst[i], types[i], table),
              overlay_mask(images[i], inst[i], types[i], table)] for i in range(rows)]  # fmt: skip
    path = contact_sheet(sheet, args.out, column_titles=["real", "real mask", "mask model", "patch model"], scale=2)
    print(f"sheet: {path}")


if __name__ == "__main__":
    main()
