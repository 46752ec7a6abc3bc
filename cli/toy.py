"""``nasdm-aug toy``: write procedural H&E toy tissue in the Lizard on-disk layout."""

from __future__ import annotations

import click

from cli import options
from nasdm_aug.data.toy import FREQUENCIES, ToyConfig, write_toy_dataset
from nasdm_aug.utils import InputError, check_writable


@click.command(context_settings={"show_default": True})
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--images", type=click.IntRange(1), required=True, help="number of images to generate")
@options.seed(required=True)
@click.option("--size", type=click.IntRange(16), default=1000, help="image side in pixels (Lizard: ~1000)")
@click.option("--frequencies", type=click.Choice(sorted(FREQUENCIES)), default="lizard",
              help="nuclei-type shares: Lizard's imbalance or all six about equal")
@options.overwrite()
@options.dry_run()
@options.quiet()
def toy(out_dir, images, seed, size, frequencies, overwrite, dry_run, quiet):
    """Generate toy tissue into DIR/Images/*.png and DIR/Labels/*.mat (Lizard layout); image i is
    seeded from (--seed, i).

    \b
      nasdm-aug toy DIR --images N --seed S [--size 1000] [--frequencies lizard|balanced]
    """
    try:
        config = ToyConfig(n_images=images, seed=seed, size=(size, size), frequencies=frequencies)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if dry_run:
        click.echo(config.to_json())
        return
    check_writable(out_dir, overwrite)
    summary = write_toy_dataset(out_dir, images, seed, size=config.size, frequencies=frequencies,
                                progress=not quiet, overwrite=overwrite)
    total = sum(summary["nuclei"].values())
    click.echo(f"wrote {summary['images']} images, {total} nuclei to {out_dir} in {summary['seconds']:.1f} s")
    for name, n in summary["nuclei"].items():
        click.echo(f"  {name:<12} {n:>8}  {100 * n / max(total, 1):5.1f}%")
