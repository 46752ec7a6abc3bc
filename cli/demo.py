"""``nasdm-aug demo``: the whole product on the built-in toy tissue."""

from __future__ import annotations

import click

from cli import options


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True, metavar="DIR",
              help="Output folder (a rerun reuses what is finished).")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="HoVerNet runs per study row.")
@options.overwrite()
def demo(out, runs, overwrite) -> None:
    """Toy tissue -> prepare -> toy NASDM models -> synthesize -> the three studies -> report.

    A rerun reuses what is finished in --out; study runs made there with another configuration are
    trained again only with --overwrite.
    """
    from nasdm_aug.demo import run_demo

    report = run_demo(out, runs=runs, overwrite=overwrite)
    click.echo(f"report: {report}")
