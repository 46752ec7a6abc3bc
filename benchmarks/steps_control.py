"""A control for the addition study (Table 3): the "25% R2" row trained for as many optimiser steps,
with the same learning-rate schedule in steps, as the rows that add S2.

At a fixed epoch count, adding S2 to 25% of R2 also multiplies the optimiser steps (x2, x3, x4);
this trains 25% of R2 alone for ``--factor`` times the study's epochs (and its lr drop that many
epochs later), so that a gain of the added rows can be told apart from a gain of longer training.

    .venv/bin/python benchmarks/steps_control.py --store consep.h5 --s2 s2.h5 --out control --factor 4 --runs 3

Prints one JSON line per run and a mean ± std summary; each run keeps its model in OUT.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hovernet.data import store_dataset  # noqa: E402
from hovernet.evaluate import evaluate_model, load_hovernet  # noqa: E402
from hovernet.trainer import train_hovernet  # noqa: E402
from nasdm_aug.data.store import PatchStore  # noqa: E402
from nasdm_aug.mixing import SyntheticMixDataset  # noqa: E402
from nasdm_aug.studies.run import METRICS, STUDIES, _hovernet_config, _validation, get_study_preset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--s2", required=True, help="the study's S2 bank (mode 'add' draws the 25% base with it)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="consep")
    ap.add_argument("--factor", type=int, default=4, help="epochs (and lr-drop epoch) times the preset's")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    config = get_study_preset(args.preset).replace(store=args.store)
    store = PatchStore(args.store)
    row = STUDIES["addition"][0]  # 25% R2
    test = store_dataset(store.path, "Test")
    results = []
    for k in range(args.runs):
        seed = config.seed + k
        base = _hovernet_config(config, seed)
        cfg = base.replace(phase1_epochs=base.phase1_epochs * args.factor, phase2_epochs=base.phase2_epochs * args.factor,
                           lr_decay_epoch=base.lr_decay_epoch * args.factor)
        data = SyntheticMixDataset(store, PatchStore(args.s2), split=row.split, mode=row.mode, ratio=row.ratio,
                                   base_fraction=row.base_fraction, seed=seed)
        run = Path(args.out) / f"x{args.factor}" / f"seed{seed}"
        train_hovernet(data, run, cfg, val_data=_validation(store, config), type_table=store.type_table,
                       patch_size=store.patch_size, magnification=store.magnification,
                       resume=run.is_dir() and any(run.iterdir()), progress=False,
                       data_desc=f"steps control: {row.label} x{args.factor} epochs (seed {seed})")
        model, mcfg, _ = load_hovernet(run)
        metrics, _ = evaluate_model(model, test, mcfg, list(store.type_table.names), progress=False)
        res = {"seed": seed, "n_patches": len(data), "epochs": [cfg.phase1_epochs, cfg.phase2_epochs],
               **{m: metrics[m] for m in METRICS}}
        print(json.dumps(res), flush=True)
        results.append(res)
    summary = {m: (float(np.mean([r[m] for r in results])), float(np.std([r[m] for r in results], ddof=1))
                   if len(results) > 1 else 0.0) for m in METRICS}
    print(json.dumps({"factor": args.factor, "runs": len(results), "mean_std": summary}), flush=True)


if __name__ == "__main__":
    main()
