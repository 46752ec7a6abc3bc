"""What the trainers' ``layout="auto"`` measures and picks on this machine, for each preset.

    OMP_NUM_THREADS=1 python benchmarks/bench_layouts.py --store consep.h5 [--threads 1] [--repeats 5]

For the NASDM mask and patch models (presets ``tiny`` and ``consep-cpu``, sized to the store) and
the HoVerNet ``tiny`` preset, it runs the measurement the trainers run at start-up
(``Trainer.measure_layout``, ``hovernet.trainer.resolve_layout``: training steps of a throwaway
copy on the store's patches, each layout timed interleaved, median) with a fresh cache, and prints
the seconds per step of each layout and the choice.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nasdm_aug.hardware as hw  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="Train")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["NASDM_AUG_CACHE"] = tempfile.mkdtemp(prefix="layouts-")  # measure, do not read a cache

    from hovernet.config import get_hovernet_preset
    from hovernet.data import HoVerNetTrainDataset, store_dataset
    from hovernet.trainer import resolve_layout
    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.nets import build_model
    from nasdm_aug.training.config import get_train_preset
    from nasdm_aug.training.data import NASDMDataset
    from nasdm_aug.training.trainer import Trainer

    seen: dict[str, dict[str, float]] = {}
    original = hw.fastest_layout

    def recording(key, make_step, device="cpu", repeats=3):
        best, seconds = original(key, make_step, device, repeats=args.repeats)
        seen[key] = seconds
        return best, seconds

    hw.fastest_layout = recording  # both trainers measure through hw.measured_layout
    print(f"machine: {hw.describe_machine()}; threads {args.threads}; median of {args.repeats} interleaved steps")
    print("| trainer | preset | batch | channels_last s/step | contiguous s/step | NCHW / channels_last | auto picks |")
    print("|---|---|---|---|---|---|---|")
    store = PatchStore(args.store)
    for kind in ("mask", "patch"):
        for preset in ("tiny", "consep-cpu"):
            cfg = get_train_preset(kind, preset, n_types=store.type_table.n_types, image_size=store.patch_size)
            ds = NASDMDataset(args.store, kind, args.split)
            trainer = Trainer(build_model(cfg.model), cfg.diffusion.build(), ds, cfg.replace(layout="contiguous"),
                              tempfile.mkdtemp(), progress=False)
            trainer.config = cfg  # measure with the preset's own settings
            seen.clear()
            best = trainer.measure_layout()
            (secs,) = seen.values()
            print(f"| NASDM {kind} | {preset} | {cfg.batch_size} | {secs['channels_last']:.3f} | "
                  f"{secs['contiguous']:.3f} | {secs['contiguous'] / secs['channels_last']:.2f} | {best} |")
    cfg = get_hovernet_preset("tiny")
    cfg = cfg.replace(model=cfg.model.replace(n_types=store.type_table.n_types))
    shape = tuple(HoVerNetTrainDataset(store_dataset(args.store, args.split), augment=False)[0]["image"].shape)
    seen.clear()
    best = resolve_layout(cfg, torch.device("cpu"), shape)
    (secs,) = seen.values()
    print(f"| HoVerNet | tiny | {cfg.batch_size} | {secs['channels_last']:.3f} | {secs['contiguous']:.3f} | "
          f"{secs['contiguous'] / secs['channels_last']:.2f} | {best} |")


if __name__ == "__main__":
    main()
