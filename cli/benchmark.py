"""``nasdm-aug benchmark``: the paper's addition, replacement and synthetic-vs-real studies, and the
rare-type balancing study."""

from __future__ import annotations

import click

from nasdm_aug.studies.registry import STUDY_REGISTRY


@click.command("benchmark")
@click.option("--preset", default="demo", show_default=True, metavar="demo|consep|lizard|CONFIG.json",
              help="A named study preset or a StudyConfig JSON file.")
@click.option("--study", type=click.Choice([*STUDY_REGISTRY, "all"]),
              default="all", show_default=True,
              help="Which study (Table 3, 4 or 5 of the paper, or rare-type balance); all = the paper's three.")
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
              help="NASDM runs that make S1/S2 ('toy', or mask and patch run dirs; repeat the option).")
@click.option("--s1", default=None, metavar="BANK.h5", help="An existing S1 bank (synthetic from R1 masks).")
@click.option("--s2", default=None, metavar="BANK.h5", help="An existing S2 bank (synthetic from R2 masks).")
@click.option("--balance-bank", default=None, metavar="BANK.h5",
              help="Balance study: an existing bank of generated rare-type patches (else made with --model).")
@click.option("--balance-target", default=None, metavar="uniform|sqrt|NAME=W,...",
              help="Balance study: target nuclei-type distribution (default: the preset's, uniform).")
# -- protocol
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Runs (seeds) per row.")
@click.option("--epochs", default=None, metavar="P1,P2",
              help="HoVerNet epochs of phase 1 (encoder frozen) and phase 2 (all layers), overriding the preset's.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="First seed.")
@click.option("--device", default=None, metavar="DEV", help="auto, cpu, cuda ...")
@click.option("--overwrite", is_flag=True,
              help="Train again the runs in --out that were made with another configuration (else refused).")
@click.option("--dry-run", is_flag=True, help="Print the config and the runs with their data sizes, then exit.")
def benchmark(preset, study, out, store, source, test, models, s1, s2, balance_bank, balance_target, runs, epochs, seed,
              device, overwrite, dry_run) -> None:
    """Reproduce the NASDM downstream studies: HoVerNet trained on real/synthetic mixes, tested on Test
    (or on --test)."""
    from pathlib import Path

    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.studies import (
        StudyTestSet, check_store, get_study_preset, plan_study, resolve_test_set, run_studies, select_rows,
    )

    config = get_study_preset(preset)
    changes = {"store": store, "source": source, "test": test, "s1": s1, "s2": s2, "balance_bank": balance_bank,
               "balance_target": balance_target, "n_runs": runs, "seed": seed, "device": device}
    config = config.replace(**{k: v for k, v in changes.items() if v is not None})
    if models:
        config = config.replace(model=tuple(models))
    if epochs is not None:
        try:
            config = config.replace(epochs=tuple(int(e) for e in epochs.split(",")))
        except ValueError as exc:
            raise click.BadParameter(f"expected two epoch counts P1,P2 (e.g. 1,2), got {epochs!r} ({exc})",
                                     param_hint="--epochs") from None
    rows = select_rows(study)
    if dry_run:
        click.echo(config.to_json())
        real = PatchStore(config.store) if config.store else None
        if real is not None:
            check_store(real, rows, own_test=not config.test)
        test_set = resolve_test_set(config, real, Path(out), make=False)  # checks a given test store
        if test_set is None:
            test_set = StudyTestSet.own(real) if real is not None else None
        click.echo(test_set.describe() if test_set else "test set: the store's own Test split")
        if real is not None:
            for run in plan_study(real, rows, config):
                click.echo(f"{run['study']:<18} {run['row']:<18} seed {run['seed']}: {run['n_patches']} patches "
                           f"({run['n_real']} real + {'up to ' if run.get('upto') else ''}{run['n_synthetic']} synthetic)")
        else:
            click.echo(f"{len(rows) * config.n_runs} runs ({len(rows)} rows x {config.n_runs} seeds); data sizes "
                       "follow once the store is prepared (or pass --store)")
        return
    run_studies(config, study, out, overwrite=overwrite)
    click.echo(open(f"{out}/tables.md").read())
    click.echo(f"results: {out}/results.json, {out}/results.csv, {out}/tables.md; all in one page: {out}/report.html")
