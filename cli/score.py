"""``nasdm-aug score``: per-patch fidelity scores of a synthetic bank, stored in the bank."""

from __future__ import annotations

import click

from cli import options


@click.command("score", context_settings={"show_default": True})
@click.argument("bank", metavar="BANK.h5")
@click.option("--segmenter", required=True, metavar="HV_RUN",
              help="HoVerNet run trained on real data (nasdm-aug hovernet train), of the bank's types and "
                   "magnification")
@click.option("--criterion", type=click.Choice(["pq", "dq"]), default="pq",
              help="pq: panoptic quality of the segmentation against the patch's own mask; dq: detection quality")
@options.batch_size(32)
@options.device("auto")
@options.overwrite()
@options.quiet()
def score(bank: str, segmenter: str, criterion: str, batch_size: int, device: str, overwrite: bool,
          quiet: bool) -> None:
    """Score every patch of BANK.h5 by how well HV_RUN finds the bank's own nuclei in it.

    The scores go into the bank (dataset `fidelity`); a rerun after a kill scores only the rest,
    and scores made by another segmenter or criterion are replaced only with --overwrite.
    A patch whose mask has no nucleus scores 1 if HV_RUN finds none either, else 0. Then
    `export --min-fidelity/--top-fraction` and SyntheticMixDataset(min_fidelity=..., top_fraction=...)
    draw only the patches that pass.

    \b
      nasdm-aug score s2.h5 --segmenter hv/
      nasdm-aug export consep.h5:R2 out/mix --format png --mode add --bank s2.h5 --top-fraction 0.5
    """
    import numpy as np

    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.scoring import read_score_info, read_scores, score_bank

    PatchStore(bank).close()  # a missing or foreign file fails here with its one line
    before = None if overwrite else read_scores(bank)
    n_before = 0 if before is None else int(np.count_nonzero(~np.isnan(before)))
    scores = score_bank(bank, segmenter, criterion=criterion, device=device, batch_size=batch_size,
                        progress=not quiet, overwrite=overwrite)
    info = read_score_info(bank) or {}
    click.echo(f"{bank}: {len(scores)} patches scored ({len(scores) - n_before} now, {n_before} before) by "
               f"{info.get('segmenter', segmenter)}, {criterion}")
    if len(scores):
        q1, median, q3 = np.quantile(scores, [0.25, 0.5, 0.75])
        click.echo(f"mean {float(np.mean(scores)):.4f}; quartiles {q1:.4f} / {median:.4f} / {q3:.4f}")
