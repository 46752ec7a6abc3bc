"""Training curves of NASDM runs: loss, eps MSE and the vb term per logged step, one panel each.

Run: ``.venv/bin/python benchmarks/plot_training.py --run mask=RUN_DIR --run patch=RUN_DIR --out curves.png``.
Reads each run's ``log.jsonl`` (one record per ``log_every`` steps, averaged over that interval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for spec in args.run:
        name, _, run = spec.partition("=")
        recs = [json.loads(x) for x in (Path(run) / "log.jsonl").read_text().splitlines() if x.strip()]
        steps = [r["step"] for r in recs]
        for ax, key in zip(axes, ("loss", "mse", "vb")):
            ax.plot(steps, [r[key] for r in recs], label=name)
    for ax, title in zip(axes, ("hybrid loss", "eps MSE (L_simple)", "vb term (weighted, as added to the loss)")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    tmp = args.out.with_name(args.out.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
