"""Per-item cost of RandNucleiPasted against a plain read of a real item.

The reference is ``SyntheticMixDataset(STORE, split=Train, mode="real")[i]`` (read + float image);
the candidate is the same dataset with ``transform=RandNucleiPasted(STORE, prob=P)``, its pool
built beforehand (the pool's build time and pickled size are printed on their own). Both run
in-process over the same items; reference and candidate alternate over several rounds and the
median per-item time of each is reported, with the mean number of nuclei pasted per item.

Run: .venv/bin/python benchmarks/bench_copy_paste.py [--store /work/ablate/consep.h5 --n 400 --rounds 5 --prob 1.0]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import subprocess
import time

import torch

from nasdm_aug.mixing import RandNucleiPasted, SyntheticMixDataset


def lscpu_model() -> str:
    """``Model name`` of ``lscpu`` ("unknown" where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown")


def per_item_ms(ds: SyntheticMixDataset, n: int) -> tuple[float, float]:
    """(ms per item, nuclei pasted per item) over items 0..n-1."""
    pasted = 0
    t0 = time.perf_counter()
    for i in range(n):
        pasted += ds[i].get("pasted", 0)
    return (time.perf_counter() - t0) / n * 1e3, pasted / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/work/ablate/consep.h5")
    ap.add_argument("--n", type=int, default=400, help="items per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prob", type=float, default=1.0)
    ap.add_argument("--nuclei", type=int, nargs=2, default=(1, 4), metavar=("LOW", "HIGH"))
    args = ap.parse_args()
    print(f"CPU: {lscpu_model()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}")
    plain = SyntheticMixDataset(args.store, split="Train", mode="real")
    t0 = time.perf_counter()
    paste = RandNucleiPasted(args.store, prob=args.prob, n_nuclei=tuple(args.nuclei), like=args.store).prepare()
    build = time.perf_counter() - t0
    print(f"pool: {paste.pool} built in {build:.2f} s, pickled {len(pickle.dumps(paste)) / 2 ** 20:.1f} MiB")
    paste.set_random_state(0)
    pasted = SyntheticMixDataset(args.store, split="Train", mode="real", transform=paste)
    n = min(args.n, len(plain))
    per_item_ms(plain, min(n, 50))  # warm the store's handles and caches
    per_item_ms(pasted, min(n, 50))
    ref, cand, counts = [], [], []
    for _ in range(args.rounds):
        ref.append(per_item_ms(plain, n)[0])
        ms, k = per_item_ms(pasted, n)
        cand.append(ms)
        counts.append(k)
    r, c = statistics.median(ref), statistics.median(cand)
    print(f"items per round: {n}, rounds: {args.rounds}, prob {args.prob:g}, n_nuclei {tuple(args.nuclei)}")
    print("| item | ms per item | x plain read |\n|---|---|---|")
    print(f"| plain read (mode real) | {r:.3f} | 1.00 |")
    print(f"| read + RandNucleiPasted ({statistics.mean(counts):.2f} nuclei pasted) | {c:.3f} | {c / r:.2f} |")
    print(f"paste alone: {c - r:.3f} ms per item")


if __name__ == "__main__":
    main()
