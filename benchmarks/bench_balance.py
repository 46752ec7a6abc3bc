"""Rare-type balancing study on the demo preset: HoVerNet on R2 alone against R2 + a
bank of generated rare-type patches chosen by the balance plan; per-type F1 / PQ mean ± std.

    .venv/bin/python benchmarks/bench_balance.py [--out DIR] [--runs N] [--target uniform|sqrt]

Needs the embedded toy NASDM models (nasdm_aug/assets/toy). Prints the tables.md section, the
balance plan of the synthesized bank and the wall time; outputs stay in DIR for a rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nasdm_aug.data.store import PatchStore
from nasdm_aug.studies.report import format_tables
from nasdm_aug.studies import get_study_preset, run_studies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/nasdm_bench_balance")
    ap.add_argument("--runs", type=int, default=None, help="runs per row (default: the preset's)")
    ap.add_argument("--target", default=None, help="uniform, sqrt or name=w,... (default: the preset's)")
    args = ap.parse_args()
    config = get_study_preset("demo")
    if args.runs:
        config = config.replace(n_runs=args.runs)
    if args.target:
        config = config.replace(balance_target=args.target)
    t0 = time.perf_counter()
    summary = run_studies(config, "balance", args.out)
    wall = time.perf_counter() - t0
    bank = PatchStore(Path(args.out) / "banks" / "B.h5")
    print(format_tables(summary["table"]))
    print("balance plan:", json.dumps(bank.attrs["balance_plan"], indent=1))
    for e in summary["table"]:
        print(f"{e['row']}: train nuclei {e.get('train_nuclei')}")
    print(f"wall time: {wall:.0f} s ({config.n_runs} runs per row)")


if __name__ == "__main__":
    main()
