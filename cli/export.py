"""``nasdm-aug export``: a store, a split or a mixed set in the formats other trainers read."""

from __future__ import annotations

import click

from cli import options
from nasdm_aug.export import EXPORT_FORMATS
from nasdm_aug.mixing.plan import MODES

_FORMAT_HELP = "; ".join(f"{k}: {v.summary}" for k, v in EXPORT_FORMATS.items())


@click.command("export", context_settings={"show_default": True})
@click.argument("store_arg", metavar="STORE[:SPLIT]")
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False))
@click.option("--format", "fmt", required=True, type=click.Choice(sorted(EXPORT_FORMATS)), help=_FORMAT_HELP)
# -- the mix (the plan SyntheticMixDataset builds)
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="export a mixed set drawn from SPLIT (default Train) and --bank, instead of the patches as they are")
@click.option("--ratio", type=float, default=None, help="the mode's ratio (default: the mode's own)")
@click.option("--bank", type=click.Path(dir_okay=False), default=None, metavar="BANK.h5", help="synthetic bank of the mix")
@options.seed(0)
@click.option("--base-fraction", type=float, default=0.25, help="--mode add: fraction of SPLIT kept as the real base")
@click.option("--include-generated", is_flag=True, help="--mode add/synthetic: also draw patches of generated masks")
@click.option("--target", default="sqrt", metavar="uniform|sqrt|NAME=W,...", help="--mode balance: target type distribution")
# -- the fidelity filter (scores of `nasdm-aug score`)
@click.option("--min-fidelity", type=float, default=None, metavar="S",
              help="only bank patches whose fidelity score is at least S (the mix's --bank, or STORE if a bank)")
@click.option("--top-fraction", type=float, default=None, metavar="F",
              help="only the best fraction F of the bank's scored patches (not with --min-fidelity)")
# -- format details
@click.option("--map", "type_map", default=None, metavar="SRC=DST,...",
              help="conic / pannuke: where the store's types go when the format has no type of that name "
                   "(DST 'drop' leaves those nuclei out)")
@click.option("--fold", type=click.IntRange(0), default=None, help="pannuke: the fold number (default 0)")
@click.option("--tissue", default=None, help="pannuke: the tissue name written to types.csv (default 'unknown')")
@options.overwrite()
@options.quiet()
def export_command(store_arg, out, fmt, quiet, **given):
    """Write STORE (all patches, or SPLIT), or a mixed set of STORE:SPLIT and --bank, to OUT in
    the layout of another tool, with a manifest tracing every patch to its store and origin.

    \b
      nasdm-aug export consep.h5:Train out/hovernet --format hovernet
      nasdm-aug export consep.h5:R2 out/mix --format png --mode add --ratio 0.5 --bank s2.h5 --seed 0
      nasdm-aug export consep.h5:R2 out/best --format png --mode add --bank s2.h5 --top-fraction 0.5
      nasdm-aug export s2.h5 out/s2-good --format hovernet --min-fidelity 0.6
      nasdm-aug export lizard.h5:Train out/pannuke --format pannuke \\
          --map neutrophil=inflammatory,lymphocyte=inflammatory,plasma=inflammatory,eosinophil=inflammatory
    """
    from nasdm_aug.export import export_from_options

    manifest = export_from_options(store_arg, out, fmt, progress=not quiet, **given)
    o = manifest["origins"]
    click.echo(f"wrote {manifest['patches']} patches ({o['real']} real, {o['synthetic']} synthetic) to {out} "
               f"as {fmt}; manifest.json and manifest.csv trace each one")
    f = manifest["fidelity_filter"]
    if f:
        rule = f"min fidelity {f['min_fidelity']:g}" if f["min_fidelity"] is not None else \
            f"top fraction {f['top_fraction']:g}"
        click.echo(f"fidelity filter ({rule}): kept {f['kept']} of {f['of']} bank patches")
    if manifest["type_map"]:
        moved = {k: v for k, v in manifest["type_map"].items() if k != v}
        if moved:
            click.echo("types mapped: " + ", ".join(f"{k} -> {v}" for k, v in moved.items()))
