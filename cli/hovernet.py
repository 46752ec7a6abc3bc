"""`nasdm-aug hovernet train|evaluate|predict`: thin click wrappers around the bundled HoVerNet."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli import options
from hovernet.config import POSTPROCESS_PRESETS
from nasdm_aug.utils import InputError


@click.group("hovernet")
def hovernet() -> None:
    """Train, evaluate and apply the bundled HoVerNet (nuclei segmentation and classification)."""


@hovernet.command("train")
# -- data and output
@click.option("--train", "train_arg", required=True, metavar="STORE[:SPLIT]", help="training PatchStore (split default Train)")
@click.option("--val", "val_arg", default=None, metavar="STORE:SPLIT", help="validation store and split (best checkpoint by its Dice)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory")
# -- recipe
@click.option("--preset", type=click.Choice(["tiny", "paper"]), default="tiny", show_default=True)
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="full HoVerNetConfig JSON (replaces --preset)")
@click.option("--epochs", type=click.IntRange(1), default=None, help="epochs per phase (lr decays after half)")
@options.batch_size()
@click.option("--encoder-weights", default=None, metavar="none|FILE",
              help="Encoder initialisation: none (random), or a local weights file (safetensors or a torch state "
                   "dict). Nothing is downloaded at run time, so 'imagenet' is refused: pass a local copy of the "
                   "ImageNet weights as FILE.")
@options.seed()
@options.device(None)
@click.option("--workers", type=click.IntRange(0), default=None,
              help="DataLoader workers (default: none on a CPU, on CUDA min(8, CPUs per rank))")
@options.layout()
@options.precision()
@options.hed_jitter()
# -- run control
@click.option("--resume", is_flag=True, help="continue the run in --out")
@options.overwrite()
@options.dry_run()
def train(train_arg: str, val_arg: str | None, out: str, resume: bool, overwrite: bool, dry_run: bool,
          **given) -> None:
    """Train HoVerNet with the paper's two-phase recipe (use torchrun for several processes)."""
    from hovernet.config import HoVerNetConfig
    from hovernet.trainer import train_hovernet_on_stores

    hed = given.pop("hed_jitter", None)
    if hed is not None:
        given["hed_scale"], given["hed_shift"] = hed
    cfg = HoVerNetConfig.from_options(**given)
    if dry_run:
        click.echo(cfg.to_json())
        return
    result = train_hovernet_on_stores(train_arg, out, cfg, val=val_arg, resume=resume, overwrite=overwrite)
    kept = (f"best epoch {result['best_epoch']} (val Dice {result['best_dice']:.4f})" if val_arg
            else "kept the last epoch (no --val)")
    click.echo(f"trained {result['epochs_done']} epochs; {kept} in the {result['layout']} layout, "
               f"{result['precision']}; run in {out}")


@hovernet.command("evaluate")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False), help="run or checkpoint directory")
@click.option("--data", "data_arg", required=True, metavar="STORE[:SPLIT]|DIR",
              help="test set: a store and split (default: Test, or the whole store if it has one split), "
                   "or a dataset folder (with --format), prepared at the model's patch size, all images as Test")
@options.dataset_format()
@options.consep_classes()
@options.magnification(unset="the model's, else the source's")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output directory (metrics.json, overlay.png)")
@click.option("--postprocess", type=click.Choice(sorted(POSTPROCESS_PRESETS)), default=None,
              help="post-processing in place of the run's own: default (ours), monai (MONAI's "
                   "HoVerNetInstanceMapPostProcessing) or hovernet (hover_net's process())")
@click.option("--overlays", type=click.IntRange(0), default=8, show_default=True, help="patches drawn in overlay.png")
@options.batch_size(8)
@options.device("cpu")
@options.overwrite()
@options.dry_run()
def evaluate(model_dir: str, data_arg: str, fmt: str | None, consep_classes: str | None, magnification: float | None,
             out: str, postprocess: str | None, overlays: int, batch_size: int, device: str, overwrite: bool,
             dry_run: bool) -> None:
    """Score a trained HoVerNet: Dice and mIoU (nuclei alone and MONAI's over background + nuclei),
    PQ/DQ/SQ, AJI, per-type PQ, mPQ+, per-type F1 (JSON + PNG)."""
    from hovernet.evaluate import evaluate as run_evaluate
    from hovernet.evaluate import resolve_model_dir
    from hovernet.eval_data import open_eval_data
    from nasdm_aug.utils import check_writable

    if dry_run:
        click.echo((resolve_model_dir(model_dir) / "config.json").read_text())
        return
    check_writable(out, overwrite)  # before a dataset folder is prepared; evaluate() checks again on writing
    with open_eval_data(data_arg, model_dir, fmt=fmt, consep_classes=consep_classes, magnification=magnification,
                        progress=True) as (ds, desc):
        result = run_evaluate(model_dir, ds, out, n_overlay=overlays, batch_size=batch_size, device=device,
                              overwrite=overwrite, data_desc=desc, postprocess=postprocess)
    keys = ("dice", "miou", "dice_with_bg", "miou_with_bg", "pq", "aji", "mpq_plus")
    click.echo(json.dumps({k: result[k] for k in keys}) + f"  -> {Path(out) / 'metrics.json'}")


@hovernet.command("predict")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--image", required=True, type=click.Path(exists=True, dir_okay=False), help="RGB image (PNG, any size)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="overlay PNG; maps go to the same name .npz")
@options.device("cpu")
@options.overwrite()
def predict(model_dir: str, image: str, out: str, device: str, overwrite: bool) -> None:
    """Segment and classify the nuclei of one image; write an overlay PNG and inst/type maps (.npz)."""
    import numpy as np
    from PIL import Image

    from hovernet.evaluate import predict_image
    from nasdm_aug.utils import atomic_output

    try:
        rgb = np.asarray(Image.open(image).convert("RGB"))
    except OSError as exc:
        raise InputError(f"{image}: not a readable image ({exc})") from None
    res = predict_image(model_dir, rgb, device=device)
    out_p = Path(out)
    with atomic_output(out_p, overwrite=overwrite) as tmp:
        Image.fromarray(res["overlay"]).save(tmp, format="PNG")
    with atomic_output(out_p.with_suffix(".npz"), overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, inst=res["inst"], type=res["type"])
    click.echo(f"{int(res['inst'].max())} nuclei -> {out_p}")
