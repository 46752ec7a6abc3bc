"""``nasdm-aug demo``: the whole product on the built-in toy tissue."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True, metavar="DIR",
              help="Output folder (a rerun reuses what is finished).")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="HoVerNet runs per study row.")
@click.option("--overwrite", is_flag=True, help="Train again study runs in --out made with another configuration.")
def demo(out, runs, overwrite) -> None:
    """Toy tissue -> prepare -> toy NASDM models -> synthesize -> the three studies -> report."""
    from nasdm_aug.demo import run_demo

    report = run_demo(out, runs=runs, overwrite=overwrite)
    click.echo(f"report: {report}")
