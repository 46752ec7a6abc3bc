"""Train the embedded toy NASDM models (issue 5.3) and copy their EMA checkpoints into the package.

    python benchmarks/train_toy_models.py --steps 2500 --work /tmp/toy-models

Steps: 1. toy tissue -> a 64-px PatchStore; 2. the mask and the patch model train at once, one
process and one thread each (the machine has 2 cores); 3. the final EMA weights, config.json and
data.json of each run go to nasdm_aug/assets/toy/{mask,patch}; 4. a JSON record of the command,
steps, wall time and final losses goes beside them (training.json), for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "nasdm_aug" / "assets" / "toy"


def _last_losses(run: Path) -> dict:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    last = lines[-1]
    return {k: last[k] for k in ("step", "loss", "mse", "vb") if k in last}


def _toy_config(kind: str, steps: int):
    """The tiny preset at a quarter of its width: 16 base channels train in minutes on 2 cores."""
    from nasdm_aug.training.config import get_train_preset

    return get_train_preset(kind, "tiny", base_channels=16, head_channels=16, spade_hidden=16).replace(
        steps=steps, lr_drop_step=int(steps * 0.8), ckpt_every=250, sample_every=500, log_every=50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--work", default="/tmp/toy-models")
    ap.add_argument("--resume", action="store_true", help="continue the runs in --work")
    ap.add_argument("--config-dir", default="", help="folder with toy_mask.json / toy_patch.json TrainConfigs "
                    "(default: the tiny preset with 16 base channels, written there)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "toy64.h5"
    exe = [sys.executable, "-m", "cli.main"]
    if not store.is_file():
        subprocess.run([*exe, "prepare", "--format", "toy", str(store), "--images", str(args.images), "--size", "256",
                        "--patch-size", "64", "--stride", "32", "--seed", "0"], check=True)
    config_dir = Path(args.config_dir) if args.config_dir else work
    for kind in ("mask", "patch"):
        if not (config_dir / f"toy_{kind}.json").is_file():
            _toy_config(kind, args.steps).save(config_dir / f"toy_{kind}.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.time()
    procs = {}
    for kind in ("mask", "patch"):
        cmd = [*exe, "train", kind, "--store", str(store), "--split", "Train", "--config", str(config_dir / f"toy_{kind}.json"), "--steps", str(args.steps), "--out", str(work / kind), "--device", "cpu", "--no-progress",
               "--resume" if args.resume else "--overwrite"]
        procs[kind] = (cmd, subprocess.Popen(cmd, env=env))
    for kind, (cmd, proc) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{kind} training failed: {' '.join(cmd)}")
    wall = time.time() - start
    record = {"machine": "2-core CPU, no GPU (shared with other jobs while it ran)", "wall_seconds": round(wall, 1),
              "store": f"toy tissue, {args.images} images of 256 px, 64-px patches, stride 32", "runs": {}}
    for kind, (cmd, _) in procs.items():
        run = work / kind
        ckpts = sorted((run / "checkpoints").glob("step_*"))
        dest = ASSETS / kind
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for name in ("config.json", "data.json", "ema.safetensors"):
            shutil.copy2(ckpts[-1] / name, dest / name)
        info = json.loads((dest / "data.json").read_text())
        info["store"] = "toy tissue (benchmarks/train_toy_models.py)"
        (dest / "data.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        record["runs"][kind] = {"command": " ".join(cmd[2:]), "final": _last_losses(run)}
    (ASSETS / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
