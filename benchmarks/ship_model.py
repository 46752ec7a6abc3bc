"""Copy a trained mask and patch run into the package as a named model (``--model NAME``).

Run: ``.venv/bin/python benchmarks/ship_model.py --name consep-cpu --mask RUN --patch RUN
--store "CoNSeP Train at 20x ..." [--card CARD.md]``; leaving out ``--mask`` or ``--patch`` keeps
that model of the shipped NAME (its weights and its record in training.json).

Writes ``nasdm_aug/assets/NAME/{mask,patch}/`` with the EMA weights only (safetensors), the run's
config.json and a data.json whose store path is replaced by ``--store`` (a description: a local
path means nothing on another machine), and ``NAME/training.json``: per model the final step, the
last logged losses, the logged wall time and the command. ``--card`` is copied to MODEL_CARD.md.
A run's ``sampling.json`` (how the model samples best, which ``nasdm-aug synthesize`` takes for the
options it is not given) ships with it; a kept model keeps its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from nasdm_aug.training.checkpoint import resolve_checkpoint
from nasdm_aug.training.model_runs import SAMPLING_FILE

ASSETS = Path(__file__).resolve().parents[1] / "nasdm_aug" / "assets"


def _summary(run: Path) -> dict:
    """Final step and losses, and the wall time the log accounts for (log_every / it_per_s per line)."""
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    config = json.loads((run / "config.json").read_text())
    last = lines[-1]
    steps, wall, prev = 0, 0.0, 0
    for rec in lines:
        if rec.get("it_per_s"):
            wall += (rec["step"] - prev) / rec["it_per_s"]
        prev = rec["step"]
        steps = rec["step"]
    return {"step": steps, "loss": last["loss"], "mse": last["mse"], "vb": last["vb"],
            "logged_wall_seconds": round(wall, 1), "batch_size": config["batch_size"], "lr": config["lr"],
            "lr_drop_step": config["lr_drop_step"], "lr_after_drop": config["lr_after_drop"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--mask", type=Path, default=None,
                    help="mask run; left out, the model NAME already ships keeps its mask model and record")
    ap.add_argument("--patch", type=Path, default=None,
                    help="patch run; left out, the model NAME already ships keeps its patch model and record")
    ap.add_argument("--store", required=True, help="description of the training data for data.json")
    ap.add_argument("--card", type=Path, default=None)
    ap.add_argument("--command", action="append", default=[], help="the commands that trained the runs")
    args = ap.parse_args()
    out = ASSETS / args.name
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if args.mask is None and args.patch is None:
        raise SystemExit("Error: give --mask, --patch or both")
    shipped = out / "training.json"
    old = json.loads(shipped.read_text()) if shipped.is_file() else None
    record = {"store": args.store, "commands": args.command, "runs": {}}
    for kind, run in (("mask", args.mask), ("patch", args.patch)):
        if run is None:  # keep the shipped model of this kind as it is
            if old is None or kind not in old.get("runs", {}) or not (out / kind / "ema.safetensors").is_file():
                raise SystemExit(f"Error: no --{kind} given and {out} ships no {kind} model to keep")
            shutil.copytree(out / kind, tmp / kind)
            record["runs"][kind] = old["runs"][kind]
            continue
        ckpt = resolve_checkpoint(run)
        dest = tmp / kind
        dest.mkdir(parents=True)
        shutil.copy2(ckpt / "ema.safetensors", dest / "ema.safetensors")
        shutil.copy2(ckpt / "config.json", dest / "config.json")
        if (run / SAMPLING_FILE).is_file():
            shutil.copy2(run / SAMPLING_FILE, dest / SAMPLING_FILE)
        info = json.loads((ckpt / "data.json").read_text())
        info["store"] = args.store
        (dest / "data.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        record["runs"][kind] = {"checkpoint": ckpt.name, **_summary(run)}
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.card:
        shutil.copy2(args.card, tmp / "MODEL_CARD.md")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
