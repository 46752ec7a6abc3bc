"""Speed of ``nasdm-aug score``: patches per second scoring a synthetic bank with a HoVerNet run.

    .venv/bin/python benchmarks/bench_scoring.py [--bank /work/ablate/s1new.h5] \\
        [--segmenter /work/ablate/hv-seg] [--num 256] [--batch-size 32] [--threads 0] [--device cpu] [--json F]

The first ``--num`` patches of ``--bank`` (0: all of them) are copied into a new bank in a temporary
folder, so the original is only read, and that copy is scored. Reported: wall seconds and patches
per second of the whole scoring, the seconds loading the segmenter, inside it (forward pass and
HoVerNet's post-processing) and the rest (checks, reads, the PQ per patch, writes), and the seconds
a rerun on the finished bank takes (nothing left to score). The CPU model (``lscpu``) and
``torch.backends.cpu.get_cpu_capability()`` head the output; ``cpu_ms_per_patch`` (process CPU time,
all threads) is the steadier number on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_model() -> str:
    """``Model name`` of ``lscpu`` ("unknown" where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def copy_bank(src: Path, dst: Path, num: int) -> int:
    """The first ``num`` patches of ``src`` (all for 0) as a new bank at ``dst``; returns its size."""
    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.data.store_writer import PatchStoreWriter

    with PatchStore(src) as bank:
        if num <= 0 or num >= len(bank):
            shutil.copyfile(src, dst)
            return len(bank)
        keys = ("image", "inst", "type", "source", "y", "x", "split", "parent", "seed")
        d = bank.read(np.arange(num), keys)
        with PatchStoreWriter(dst, patch_size=bank.patch_size, type_table=bank.type_table, config=bank.config,
                              origin=bank.origin, attrs=bank.attrs) as w:
            w.set_splits(bank.splits)
            w.append_batch(d["image"], d["inst"], d["type"], source=list(d["source"]), y=list(d["y"]),
                           x=list(d["x"]), split=list(d["split"]), parent=list(d["parent"]), seed=list(d["seed"]))
    return num


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", default="/work/ablate/s1new.h5", help="synthetic bank (only read)")
    ap.add_argument("--segmenter", default="/work/ablate/hv-seg", help="HoVerNet run trained on real data")
    ap.add_argument("--num", type=int, default=256, help="patches copied and scored (0: the whole bank)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--criterion", default="pq", choices=["pq", "dq"])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import torch

    import nasdm_aug.metrics.evaluate as ev
    from nasdm_aug.scoring import score_bank

    if args.threads:
        torch.set_num_threads(args.threads)
    seg_seconds, load_seconds = [0.0], [0.0]
    load = ev.load_segmenter

    def timed_load(run_dir, device="cpu"):  # times the load and every call of the segment function
        t0 = time.perf_counter()
        segment, names = load(run_dir, device)
        load_seconds[0] += time.perf_counter() - t0

        def timed(images):
            t = time.perf_counter()
            out = segment(images)
            seg_seconds[0] += time.perf_counter() - t
            return out

        return timed, names

    ev.load_segmenter = timed_load
    head = {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device}
    print(json.dumps(head), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        bank = Path(tmp) / "bank.h5"
        n = copy_bank(Path(args.bank), bank, args.num)
        t, c = time.perf_counter(), time.process_time()
        scores = score_bank(bank, args.segmenter, criterion=args.criterion, device=args.device,
                            batch_size=args.batch_size, progress=False)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter()
        score_bank(bank, args.segmenter, criterion=args.criterion, device=args.device, progress=False)
        rerun = time.perf_counter() - t
    result = {**head, "bank": args.bank, "segmenter": args.segmenter, "patches": n, "batch_size": args.batch_size,
              "criterion": args.criterion, "seconds": round(wall, 2), "patches_per_s": round(n / wall, 2),
              # CPU-seconds (all threads) per patch: steadier than wall time on a shared machine
              "cpu_ms_per_patch": round(1e3 * cpu / n, 2),
              "load_seconds": round(load_seconds[0], 2), "segmenter_seconds": round(seg_seconds[0], 2),
              "other_seconds": round(wall - seg_seconds[0] - load_seconds[0], 2),
              "rerun_seconds": round(rerun, 3), "mean_score": round(float(np.mean(scores)), 4),
              "quartiles": [round(float(q), 4) for q in np.quantile(scores, [0.25, 0.5, 0.75])]}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
