"""``nasdm-aug synthesize``: a patch bank from real masks (S1 / S2) or from generated masks."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nasdm_aug.hardware import DTYPES, LAYOUT_CHOICES
from nasdm_aug.sampling.samplers import SAMPLERS
from nasdm_aug.utils import InputError


@click.command("synthesize")
# -- models
@click.option("--model", "models", multiple=True, default=("toy",), show_default=True, metavar="RUN",
              help="A shipped model ('toy': toy tissue; 'consep-cpu': real CoNSeP at 20x) or the mask and patch run directories (repeat the option).")
# -- what to make
@click.option("--masks", type=click.Path(dir_okay=False), default=None, metavar="STORE.h5",
              help="Real PatchStore: one synthetic patch per real mask, recording its parent index.")
@click.option("--split", default=None, metavar="NAME", help="With --masks: use this split's masks (e.g. R2).")
@click.option("--indices", default=None, metavar="I,J,...", help="With --masks: explicit patch indices.")
@click.option("--types", default=None, metavar="NAMES",
              help="Generated masks: 'all', 'random', or comma-separated type names (e.g. epithelial,lymphocyte).")
@click.option("--num", type=int, default=None, metavar="N",
              help="Generated masks: number of patches. With --recombine: masks to make (default one per mask of "
                   "the split).")
@click.option("--combination", "combinations", multiple=True, metavar="NAME+NAME:N",
              help="Generated masks: N patches holding exactly these types (repeat the option).")
@click.option("--marker-threshold", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Generated masks: a nucleus marker per peak of the distance channel above this, as well as per "
                   "edge-bounded core, so touching nuclei whose generated edge is faint come apart (default 0.5; "
                   "0: edge markers alone).")
# -- rare-type balancing
@click.option("--balance-for", default=None, metavar="STORE.h5[:SPLIT]",
              help="Generated masks of the type combinations that move this real split (default Train) "
                   "toward --target; the plan is stored in the bank's attrs['balance_plan'].")
@click.option("--recombine", default=None, metavar="STORE.h5[:SPLIT]",
              help="Recombined masks: real masks of this split (default Train) with real nuclei of the types it "
                   "lacks relative to --target added, drawn by the patch model; how they were made is stored in "
                   "the bank's attrs['recombine'].")
@click.option("--target", default="sqrt", show_default=True, metavar="uniform|sqrt|NAME=W,...",
              help="With --balance-for or --recombine: target type distribution.")
@click.option("--ratio", type=float, default=0.5, show_default=True, metavar="R",
              help="With --balance-for: at most R x (split size) patches, R in (0, 1].")
# -- output
@click.option("--out", type=click.Path(dir_okay=False), required=True, metavar="BANK.h5", help="Output bank.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bank (and parts of a different run).")
@click.option("--resume", is_flag=True,
              help="Accept an existing bank as done when it is complete and made with the same arguments and "
                   "weights (else refused); interrupted runs resume by themselves.")
@click.option("--preview", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Write BANK.h5.preview.png: mask | synthetic | real parent for the first N patches.")
# -- sampling
@click.option("--sampler", type=click.Choice(sorted(SAMPLERS)), default=None, help="Sampler (default: ddpm).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Network evaluations per sample (default: the sampler's own: "
                   + ", ".join(f"{n} {s.default_steps}" for n, s in SAMPLERS.items()) + ").")
@click.option("--guidance", type=click.FloatRange(min=0), default=None, help="Classifier-free guidance scale.")
@click.option("--eta", type=click.FloatRange(min=0), default=None,
              help="--sampler ddim: noise per step (0 deterministic, the default; 1 DDPM-like).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Run seed; patch i is seeded by (seed, i).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Patches per forward and per chunk.")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="Sampling precision (default auto: bfloat16 where this machine runs it natively, an Ampere or "
                   "later GPU or a CPU with AVX512-BF16 / AMX; else float32).")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default=None,
              help="Memory layout of the models and samples (default auto: contiguous on a CUDA GPU, whose group "
                   "norm works in NCHW; channels_last elsewhere, the faster on the CPU measured).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="Sample through torch.compile of the networks: a one-off compile per batch shape (on a CPU it "
                   "needs a C++ compiler); same patches up to float rounding (default off).")
@click.option("--device", default=None, metavar="DEV", help="cpu, cuda, cuda:1 ... (default: GPU when available).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, metavar="JSON",
              help="A full SynthesizeConfig; options given on the line override it.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the number of patches, then exit.")
def synthesize(models, masks, split, indices, types, num, combinations, marker_threshold, balance_for, recombine, target,
               ratio, out, overwrite, resume, preview, sampler, steps, guidance, eta, seed, batch_size, dtype, layout, compile_, device, config_path,
               dry_run) -> None:
    """Make a synthetic PatchStore with trained NASDM models (resumable; shards under torchrun)."""
    from nasdm_aug.synthesize import SynthesizeConfig, plan_jobs, synthesize as run

    base = SynthesizeConfig.load(config_path).to_dict() if config_path else {"types": "all", "num": 1}
    given = {"masks": masks, "split": split, "types": types, "num": num, "guidance": guidance, "seed": seed,
             "batch_size": batch_size, "dtype": dtype, "layout": layout, "compile": compile_,
             "marker_threshold": marker_threshold}
    plan = _balance_plan(balance_for, target, ratio) if balance_for else None
    if plan is not None:
        combinations = plan.combinations
    if masks is not None or types is not None or combinations or recombine:  # the source given on the line replaces the config's
        base.update({"masks": "", "types": "", "num": 0, "split": "", "indices": [], "combinations": [],
                     "recombine": None})
    if combinations:
        base["combinations"] = list(combinations)
    if recombine:
        base["recombine"] = _recombine_options(recombine, target, num)
        given["num"] = None  # the count of recombined masks lives in recombine.n
    base.update({k: v for k, v in given.items() if v is not None})
    base["sampling"] = _sampling(dict(base.get("sampling") or {}), sampler, steps, eta)
    if tuple(models) != ("toy",) or "model" not in base:
        base["model"] = list(models)
    if indices is not None:
        try:
            base["indices"] = [int(v) for v in indices.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--indices must be comma-separated integers, got {indices!r}") from None
    try:
        config = SynthesizeConfig.from_dict(base)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if dry_run:
        click.echo(config.to_json())
        click.echo(f"patches: {len(plan_jobs(config))}")
        if plan is not None:
            click.echo(plan.summary())
        return
    if resume and Path(out).exists() and not overwrite:
        from nasdm_aug.synthesize import finished_bank_problem

        problem = finished_bank_problem(out, config, device)
        if problem:
            raise InputError(f"{out}: {problem}; pass --overwrite to replace it")
        click.echo(f"{out} is complete; nothing to do")
        return
    attrs = {"balance_plan": plan.record} if plan is not None else None
    result = run(config, out, device=device, overwrite=overwrite, preview=preview, attrs=attrs)
    from nasdm_aug.training.distributed import process_rank

    if process_rank() == 0:  # under torchrun only rank 0 reports
        click.echo(json.dumps(result, indent=2))


def _sampling(base: dict, sampler: str | None, steps: int | None, eta: float | None) -> dict:
    """The config's sampler options with those given on the line; naming another sampler starts
    from its own defaults (its steps, no options of the previous one)."""
    if sampler is not None and sampler != base.get("sampler"):
        base = {k: v for k, v in base.items() if k in ("spacing", "clip_denoised")} | {"sampler": sampler}
    if steps is not None:
        base["steps"] = steps
    if eta is not None:
        base["eta"] = eta
    return base


def _recombine_options(arg: str, target: str, num: int | None) -> dict:
    """``RecombineOptions`` fields for ``--recombine STORE.h5[:SPLIT]`` (split Train when none is named)."""
    import numpy as np

    from nasdm_aug.data.store import PatchStore, parse_store_arg
    from nasdm_aug.mixing.balance import parse_target, resolve_target

    path, split = parse_store_arg(arg, "Train")
    if not Path(path).is_file():
        raise InputError(f"--recombine: {path} does not exist")
    store = PatchStore(path)
    if split not in store.splits:
        raise InputError(f"--recombine: {path} has no split {split!r} (splits: {', '.join(store.splits) or 'none'})")
    resolve_target(parse_target(target), store.type_table, np.ones(store.type_table.n_types), path)  # names it lacks
    if num is not None and num < 1:
        raise InputError(f"--num must be >= 1 with --recombine, got {num}")
    return {"store": path, "split": split, "target": target, "n": num or 0}


def _balance_plan(balance_for: str, target: str, ratio: float):
    """The balance plan for ``STORE.h5[:SPLIT]`` (split Train when none is named)."""
    from nasdm_aug.data.store import PatchStore, parse_store_arg
    from nasdm_aug.mixing.balance import parse_target, plan_balance_synthesis

    path, split = parse_store_arg(balance_for, "Train")
    if not Path(path).is_file():
        raise InputError(f"--balance-for: {path} does not exist")
    store = PatchStore(path)
    if split not in store.splits:
        raise InputError(f"--balance-for: {path} has no split {split!r} (splits: {', '.join(store.splits) or 'none'})")
    return plan_balance_synthesis(store, split, parse_target(target), ratio)
