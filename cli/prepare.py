"""``nasdm-aug prepare``: a dataset on disk (or generated toy tissue) -> one PatchStore with splits."""

from __future__ import annotations

import click

from cli import options
from nasdm_aug.types import TYPE_TABLES


def _triple(kind: type):
    def parse(ctx: click.Context, param: click.Parameter, value: str | None):
        if value is None:
            return None
        try:
            parts = tuple(kind(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"expected three comma-separated numbers TEST,R2,R1, got {value!r}") from None
        if len(parts) != 3:
            raise click.BadParameter(f"expected three values TEST,R2,R1, got {len(parts)} in {value!r}")
        return parts
    return parse


@click.command(context_settings={"show_default": True})
@click.argument("paths", nargs=-1, metavar="[SRC] OUT.h5")
@options.dataset_format(toy=True, required=True)
# -- tiling
@click.option("--patch-size", type=click.IntRange(8), default=128, help="patch side in pixels")
@click.option("--stride", type=click.IntRange(1), default=64, help="step between patches")
@click.option("--min-tissue", type=click.FloatRange(0, 1), default=0.5, help="keep patches with at least this tissue fraction")
@click.option("--tissue-threshold", type=click.FloatRange(0, 1, max_open=True), default=0.05,
              help="HSV saturation above which a pixel is tissue")
# -- magnification and classes
@options.magnification(unset="the source's")
@click.option("--source-magnification", type=click.FloatRange(0, min_open=True), default=None,
              help="objective power of SRC [default: the format's: lizard/conic/toy 20, consep/pannuke 40]")
@click.option("--min-nucleus-area", type=click.IntRange(0), default=4,
              help="after downsampling, drop pieces of nuclei smaller than this (px)")
@options.consep_classes()
# -- splits
@click.option("--split-counts", callback=_triple(int), metavar="TEST,R2,R1",
              help="images per split (Train is the rest) [default: the paper's fractions]")
@click.option("--split-fractions", callback=_triple(float), metavar="TEST,R2,R1",
              help="fractions of all images [default: 12/238,36/238,36/238 as in the paper]")
@options.seed(0)
@click.option("--type-table", type=click.Choice(sorted(TYPE_TABLES)), default=None,
              help="type table to check and record [default: the format's own]")
@click.option("--limit", type=click.IntRange(0), default=0, help="use only the first N images (0 = all)")
# -- toy tissue
@click.option("--images", type=click.IntRange(1), default=8, help="toy: images to generate")
@click.option("--size", type=click.IntRange(16), default=1000, help="toy: image side in pixels")
@click.option("--keep-source", type=click.Path(file_okay=False), default=None,
              help="toy: keep the generated Lizard-layout folder here")
# -- output and run
@click.option("--compression", type=click.Choice(["lzf", "gzip", "none"]), default="lzf", help="HDF5 compression")
@click.option("--workers", type=click.IntRange(1), default=1, help="processes that read and tile images")
@options.overwrite()
@options.dry_run()
@options.quiet()
def prepare_cmd(paths, dry_run, quiet, **given):
    """Tile a dataset into a PatchStore with per-image splits (Test, R2, Train, R1 within Train).

    \b
      nasdm-aug prepare --format lizard|consep|conic|pannuke SRC OUT.h5
      nasdm-aug prepare --format toy OUT.h5 --images N --seed S [--keep-source DIR]

    Splits default to the paper's proportions of Lizard's 238 images (12 Test, 36 R2, 190 Train
    of which 36 R1), scaled to the number of images.

    \b
    NASDM works at 20x; CoNSeP and PanNuke are 40x:
      nasdm-aug prepare --format consep SRC OUT.h5 --magnification 20 --patch-size 64 --stride 32
    """
    from nasdm_aug.data.prepare import PrepareConfig, format_summary, prepare

    config = PrepareConfig.from_options(paths, **given)
    if dry_run:
        click.echo(config.to_json())
        return
    click.echo(format_summary(prepare(config, progress=not quiet)))
