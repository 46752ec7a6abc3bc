"""Sample error against network evaluations for each sampler on the analytic Gaussian-mixture
data. Reference: 1000-step ancestral DDPM, the paper's sampler, in the same run.

Run: .venv/bin/python benchmarks/bench_samplers.py [--samples 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch

from nasdm_aug.diffusion import DEFAULT_MIXTURE, GaussianMixture1D, OptimalMixtureModel, create_diffusion
from nasdm_aug.sampling import SAMPLERS, SamplerOptions, sample

NFES = (10, 25, 50, 100, 250, 1000)
TOLERANCE = 0.05  # "within 5% of the reference" (the overall default)
PER_SAMPLER_FACTOR = 2.5  # looser bar for each sampler's own default (see RESULTS.md)
MAX_DEFAULT_NFE = 50


def wasserstein1(x: torch.Tensor, mixture: GaussianMixture1D) -> float:
    """W1 between the empirical distribution of all elements of ``x`` and the mixture: int |F_n - F| dx."""
    grid = torch.linspace(-3.0, 3.0, 30001, dtype=torch.float64)
    xs = torch.sort(x.flatten().double()).values
    fn = torch.searchsorted(xs, grid, right=True).double() / xs.numel()
    return float(torch.trapezoid((fn - mixture.cdf(grid)).abs(), grid))


def run(samples: int, seed: int) -> list[dict]:
    diffusion = create_diffusion()  # the paper's process: 1000 linear steps, learned range
    model = OptimalMixtureModel(DEFAULT_MIXTURE, diffusion)
    shape = (samples, 1, 16, 16)  # 256 i.i.d. coordinates per sample
    rows = []
    for name in SAMPLERS:
        for spacing in ("uniform", "logsnr"):
            for nfe in NFES:
                if nfe == 1000 and spacing == "logsnr":
                    continue  # all steps: both spacings are the base process
                start = time.perf_counter()
                x = sample(model, shape, diffusion=diffusion, options=SamplerOptions(name, steps=nfe, spacing=spacing), seed=seed)
                rows.append(
                    {
                        "sampler": name,
                        "spacing": "all" if nfe == 1000 else spacing,
                        "nfe": nfe,
                        "w1": wasserstein1(x, DEFAULT_MIXTURE),
                        "mean": float(x.mean()),
                        "std": float(x.std()),
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def choose_default(rows: list[dict], reference: dict) -> dict | None:
    """Cheapest (fewest NFE, then lowest error) row within TOLERANCE of the reference error."""
    ok = [r for r in rows if r["nfe"] <= MAX_DEFAULT_NFE and r["w1"] <= (1 + TOLERANCE) * reference["w1"]]
    return min(ok, key=lambda r: (r["nfe"], r["w1"])) if ok else None


def per_sampler_defaults(rows: list[dict], reference: dict, spacing: str = "logsnr") -> dict[str, int]:
    """Each sampler's fewest NFE (with ``spacing``) whose error is within PER_SAMPLER_FACTOR x the reference."""
    out = {}
    for name in SAMPLERS:
        ok = [r["nfe"] for r in rows if r["sampler"] == name and r["spacing"] in (spacing, "all")
              and r["w1"] <= PER_SAMPLER_FACTOR * reference["w1"]]
        out[name] = min(ok) if ok else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args.samples, args.seed)
    reference = next(r for r in rows if r["sampler"] == "ddpm" and r["nfe"] == 1000)
    floor = wasserstein1(DEFAULT_MIXTURE.sample((args.samples, 1, 16, 16), torch.Generator().manual_seed(1)), DEFAULT_MIXTURE)
    print(f"\ndata: mean {DEFAULT_MIXTURE.mean:.4f}, std {DEFAULT_MIXTURE.std:.4f}; "
          f"W1 of {args.samples * 256} exact data draws (Monte-Carlo floor): {floor:.4f}")
    print("| sampler | spacing | " + " | ".join(f"{n} NFE" for n in NFES) + " |")
    print("|---|---|" + "---|" * len(NFES))
    for name in SAMPLERS:
        for spacing in ("uniform", "logsnr"):
            cells = []
            for nfe in NFES:
                r = next(r for r in rows if r["sampler"] == name and r["nfe"] == nfe and r["spacing"] in (spacing, "all"))
                cells.append(f"{r['w1']:.4f} ({r['std']:.3f})")
            print(f"| {name} | {spacing} | " + " | ".join(cells) + " |")
    best = choose_default(rows, reference)
    print(f"\nreference ddpm/1000: W1 {reference['w1']:.4f}; default: {best}")
    print(f"per-sampler defaults (W1 <= {PER_SAMPLER_FACTOR} x reference): {per_sampler_defaults(rows, reference)}")


if __name__ == "__main__":
    main()
