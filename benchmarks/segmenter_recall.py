"""What trained HoVerNets miss on real patches: pixel precision and recall of the nuclei, and the
recall of the real nuclei by how dark they are.

    .venv/bin/python benchmarks/segmenter_recall.py --data consep.h5:Test \\
        --model r1=study/runs/real-vs-synthetic/r1/seed0/hovernet \\
        --model s1=study/runs/real-vs-synthetic/s1/seed0/hovernet [--bins 4] [--json out.json]

Each real nucleus gets its mean haematoxylin (``nasdm_aug.metrics.stain.haematoxylin``); the
nuclei are split into ``--bins`` equal-count bins from the palest to the darkest, and a nucleus
counts as found when more than half of its pixels are predicted foreground. Precision and recall
are over the pixels of every patch pooled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasdm_aug.metrics.stain import haematoxylin  # noqa: E402


def nucleus_darkness(images: np.ndarray, insts: np.ndarray) -> list[np.ndarray]:
    """Mean haematoxylin of every nucleus of every patch (one array per patch, in label order)."""
    from scipy import ndimage as ndi

    out = []
    for h, inst in zip(haematoxylin(images), insts):
        ids = np.unique(inst)
        ids = ids[ids > 0]
        out.append(np.asarray(ndi.mean(h, inst, ids)) if len(ids) else np.zeros(0))
    return out


def nuclei_found(insts: np.ndarray, pred_fg: np.ndarray) -> list[np.ndarray]:
    """Per patch, whether each nucleus (label order) has more than half its pixels predicted foreground."""
    from scipy import ndimage as ndi

    out = []
    for inst, fg in zip(insts, pred_fg):
        ids = np.unique(inst)
        ids = ids[ids > 0]
        out.append(np.asarray(ndi.mean(fg.astype(float), inst, ids)) > 0.5 if len(ids) else np.zeros(0, bool))
    return out


def recall_by_darkness(darkness: list[np.ndarray], found: list[np.ndarray], bins: int = 4) -> list[float]:
    """Share of nuclei found in each of ``bins`` equal-count darkness bins, palest first."""
    d, f = np.concatenate(darkness), np.concatenate(found)
    edges = np.percentile(d, np.linspace(0, 100, bins + 1)[1:-1])
    which = np.digitize(d, edges)
    return [float(f[which == b].mean()) if (which == b).any() else float("nan") for b in range(bins)]


def pixel_scores(insts: np.ndarray, pred_fg: np.ndarray) -> dict[str, float]:
    g, p = np.asarray(insts) > 0, np.asarray(pred_fg) > 0
    tp, fp, fn = float((g & p).sum()), float((~g & p).sum()), float((g & ~p).sum())
    return {"precision": tp / max(tp + fp, 1.0), "recall": tp / max(tp + fn, 1.0),
            "dice": 2 * tp / max(2 * tp + fp + fn, 1.0)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, metavar="STORE[:SPLIT]")
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=HOVERNET_DIR")
    ap.add_argument("--bins", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from hovernet.evaluate import load_hovernet, predict_batch
    from nasdm_aug.data.store import PatchStore, parse_store_arg

    path, split = parse_store_arg(args.data)
    store = PatchStore(path)
    d = store.read(store.indices(split), keys=("image", "inst"))
    darkness = nucleus_darkness(d["image"], d["inst"])
    images = torch.from_numpy(d["image"]).permute(0, 3, 1, 2).float() / 255.0
    print(f"{args.data}: {len(images)} patches, {sum(map(len, darkness))} nuclei", flush=True)
    print(f"| model | precision | recall | pixel Dice | recall by darkness, palest to darkest ({args.bins} bins) |")
    print("|---|---|---|---|---|")
    rows = {}
    for item in args.model:
        if "=" not in item:
            ap.error(f"--model {item!r}: expected LABEL=HOVERNET_DIR")
        label, model_dir = item.split("=", 1)
        model, cfg, _ = load_hovernet(model_dir)
        model.eval()
        with torch.no_grad():
            pred = np.concatenate([predict_batch(model, images[i:i + args.batch_size], cfg)[0]
                                   for i in range(0, len(images), args.batch_size)]) > 0
        row = {**pixel_scores(d["inst"], pred),
               "recall_by_darkness": recall_by_darkness(darkness, nuclei_found(d["inst"], pred), args.bins)}
        rows[label] = row
        print(f"| {label} | {row['precision']:.2f} | {row['recall']:.2f} | {row['dice']:.2f} | "
              f"{', '.join(f'{r:.2f}' for r in row['recall_by_darkness'])} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
