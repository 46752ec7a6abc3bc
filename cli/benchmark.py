"""``nasdm-aug benchmark``: the paper's addition, replacement and synthetic-vs-real studies, the
rare-type balancing study and the low-label study."""

from __future__ import annotations

import click

from cli import options
from nasdm_aug.studies.registry import BANK_REGISTRY, STUDY_REGISTRY

_BANKS = "; ".join(f"{b.name}: {b.about}" for b in BANK_REGISTRY.values())


def _old_bank_flag(name: str):
    """A removed per-bank flag, kept hidden for one release: it still works and says what replaces it."""
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            click.echo(f"note: --{param.name.replace('_', '-')} is replaced by --bank {name}=BANK.h5", err=True)
            ctx.meta.setdefault("old_banks", []).append(f"{name}={value}")
        return value
    return callback


@click.command("benchmark")
@click.option("--preset", default="demo", show_default=True, metavar="demo|consep|lizard|CONFIG.json",
              help="A named study preset or a StudyConfig JSON file.")
@click.option("--study", type=click.Choice([*STUDY_REGISTRY, "all"]),
              default="all", show_default=True,
              help="Which study (Table 3, 4 or 5 of the paper, rare-type balance, or few labels); all = the "
                   "paper's three.")
@click.option("--out", type=click.Path(file_okay=False), required=True, metavar="DIR",
              help="Output folder; finished runs in it are reused on a rerun when made with the same "
                   "configuration and data.")
# -- data and models
@click.option("--store", default=None, metavar="STORE.h5", help="The real PatchStore (else prepared from --source).")
@click.option("--source", default=None, metavar="DIR", help="Dataset folder to prepare (consep/lizard presets).")
@click.option("--test", default=None, metavar="STORE.h5[:SPLIT]|DIR",
              help="External test set instead of the store's own Test split: a PatchStore split (default: "
                   "the whole store if it has one split, else Test) or a dataset folder, prepared once into "
                   "OUT/data/test.h5 like the study's data, all its images as Test.")
@click.option("--model", "models", multiple=True, metavar="RUN",
              help="NASDM runs that make the banks ('toy', 'consep-cpu', or mask and patch run dirs; repeat the "
                   "option).")
@click.option("--bank", "banks", multiple=True, metavar="NAME=BANK.h5",
              help=f"An existing synthetic bank (repeat the option); else made in OUT/banks with --model. {_BANKS}.")
@click.option("--s1", default=None, hidden=True, callback=_old_bank_flag("S1"), expose_value=False)
@click.option("--s2", default=None, hidden=True, callback=_old_bank_flag("S2"), expose_value=False)
@click.option("--balance-bank", default=None, hidden=True, callback=_old_bank_flag("B"), expose_value=False)
@click.option("--balance-target", default=None, metavar="uniform|sqrt|NAME=W,...",
              help="Balance study: target nuclei-type distribution (default: the preset's, uniform).")
@click.option("--segmenter", default=None, metavar="HV_RUN",
              help="A HoVerNet run trained on real data that scores a bank's fidelity for the filtered rows, "
                   "where the bank holds no scores yet (see `nasdm-aug score`).")
@click.option("--label-split", default=None, metavar="R2|R1",
              help="Low-label study: the split whose fractions are labelled, with the bank of its own masks "
                   "(R2 with S2, the default; R1 with S1).")
@click.option("--label-fractions", default=None, metavar="F,F,...",
              help="Low-label study: the labelled shares of the split (default 0.1,0.25).")
# -- protocol
@click.option("--equal-steps/--equal-epochs", default=None,
              help="Train every row of a study for the same optimiser steps (a smaller row repeats its own "
                   "patches), or for the same epochs as the paper does. Default: the study's own (equal steps for "
                   "low-label, equal epochs for the others).")
@click.option("--epoch-patches", type=click.IntRange(min=1), default=None,
              help="With --equal-steps: patches per epoch (default: the study's largest row).")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Runs (seeds) per row.")
@click.option("--epochs", default=None, metavar="P1,P2",
              help="HoVerNet epochs of phase 1 (encoder frozen) and phase 2 (all layers), overriding the preset's.")
@click.option("--val-patches", type=click.IntRange(min=0), default=None,
              help="Validation patches from Train outside R1 choosing each run's best epoch (0: keep the last).")
@options.hed_jitter(unset="the preset's (none)")
@options.seed(None, unset="the preset's")
@options.device(None, unset="the preset's")
@options.overwrite()
@options.dry_run()
@click.pass_context
def benchmark(ctx, preset, study, out, store, source, test, models, banks, balance_target, segmenter, label_split,
              label_fractions, equal_steps, epoch_patches, runs, epochs, val_patches, hed_jitter, seed, device,
              overwrite, dry_run) -> None:
    """Reproduce the NASDM downstream studies: HoVerNet trained on real/synthetic mixes, tested on Test
    (or on --test). --seed is the first run's seed (a row's runs take seed, seed + 1, ...);
    --overwrite trains again the runs in --out made with another configuration; --dry-run also
    prints the banks and every run with its data sizes."""
    from nasdm_aug.studies.config import parse_bank_args, study_config
    from nasdm_aug.studies.run import describe_study, run_studies

    config = study_config(preset, store=store, source=source, test=test, model=models,
                          banks=parse_bank_args((*ctx.meta.get("old_banks", ()), *banks)) or None,
                          balance_target=balance_target, segmenter=segmenter, label_split=label_split,
                          label_fractions=label_fractions,
                          equal_steps=equal_steps, epoch_patches=epoch_patches, n_runs=runs, epochs=epochs,
                          val_patches=val_patches, hed_jitter=hed_jitter, seed=seed, device=device)
    if dry_run:
        click.echo("\n".join(describe_study(config, study, out)))
        return
    run_studies(config, study, out, overwrite=overwrite)
    click.echo(open(f"{out}/tables.md").read())
    click.echo(f"results: {out}/results.json, {out}/results.csv, {out}/tables.md; all in one page: {out}/report.html")
