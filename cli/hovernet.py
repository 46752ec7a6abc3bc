"""`nasdm-aug hovernet train|evaluate|predict`: thin click wrappers around the bundled HoVerNet."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hovernet.config import POSTPROCESS_PRESETS
from nasdm_aug.types import LAYOUT_CHOICES
from nasdm_aug.utils import InputError


@click.group("hovernet")
def hovernet() -> None:
    """Train, evaluate and apply the bundled HoVerNet (nuclei segmentation and classification)."""


def _resolve_config(preset: str, config: str | None, epochs: int | None, batch_size: int | None, seed: int | None,
                    device: str | None, workers: int | None, encoder_weights: str | None, layout: str | None = None,
                    precision: str | None = None):
    from hovernet.config import HoVerNetConfig, get_hovernet_preset

    cfg = HoVerNetConfig.load(config) if config else get_hovernet_preset(preset)
    changes: dict = {}
    if epochs is not None:
        # both phases get N epochs and decay after half, the paper's 25 of 50
        changes.update(phase1_epochs=epochs, phase2_epochs=epochs, lr_decay_epoch=max(1, epochs // 2))
    for key, value in (("batch_size", batch_size), ("seed", seed), ("device", device), ("num_workers", workers),
                       ("layout", layout), ("precision", precision)):
        if value is not None:
            changes[key] = value
    if encoder_weights is not None:
        changes["model"] = cfg.model.replace(encoder_weights=None if encoder_weights == "none" else encoder_weights)
    try:
        return cfg.replace(**changes)
    except ValueError as exc:
        raise InputError(str(exc)) from None


@hovernet.command("train")
# -- data and output
@click.option("--train", "train_arg", required=True, metavar="STORE[:SPLIT]", help="training PatchStore (split default Train)")
@click.option("--val", "val_arg", default=None, metavar="STORE:SPLIT", help="validation store and split (best checkpoint by its Dice)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory")
# -- recipe
@click.option("--preset", type=click.Choice(["tiny", "paper"]), default="tiny", show_default=True)
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="full HoVerNetConfig JSON (replaces --preset)")
@click.option("--epochs", type=click.IntRange(1), default=None, help="epochs per phase (lr decays after half)")
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--encoder-weights", default=None, metavar="none|imagenet|FILE", help="encoder initialisation")
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="DataLoader workers (default: none on a CPU, on CUDA min(8, CPUs per rank))")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default=None,
              help="memory layout of the network; auto (the config's default): the faster one here, timed once "
                   "per machine and model and cached (NASDM_AUG_CACHE, else ~/.cache/nasdm-aug)")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default=None,
              help="bf16 autocast of the network (losses in fp32); auto: bf16 where this machine runs it natively "
                   "(an Ampere or later GPU, a CPU with AVX512-BF16 or AMX), else fp32, decided at the start and "
                   "kept on resume. Default: the preset's (auto)")
# -- run control
@click.option("--resume", is_flag=True, help="continue the run in --out")
@click.option("--overwrite", is_flag=True, help="replace a non-empty --out")
@click.option("--dry-run", is_flag=True, help="print the resolved config and exit")
def train(train_arg: str, val_arg: str | None, out: str, preset: str, config: str | None, epochs: int | None,
          batch_size: int | None, encoder_weights: str | None, seed: int | None, device: str | None,
          workers: int | None, layout: str | None, precision: str | None, resume: bool, overwrite: bool,
          dry_run: bool) -> None:
    """Train HoVerNet with the paper's two-phase recipe (use torchrun for several processes)."""
    from hovernet.data import store_dataset
    from nasdm_aug.data.store import parse_store_arg
    from hovernet.trainer import train_hovernet

    cfg = _resolve_config(preset, config, epochs, batch_size, seed, device, workers, encoder_weights, layout,
                          precision)
    if dry_run:
        click.echo(cfg.to_json())
        return
    path, split = parse_store_arg(train_arg, "Train")
    train_ds = store_dataset(path, split)
    val_ds = store_dataset(*parse_store_arg(val_arg)) if val_arg else None
    store = train_ds.real
    result = train_hovernet(train_ds, out, cfg, val_data=val_ds, type_table=store.type_table,
                            patch_size=store.patch_size, magnification=store.magnification,
                            data_desc=f"train={train_arg} val={val_arg}",
                            resume=resume, overwrite=overwrite)
    kept = (f"best epoch {result['best_epoch']} (val Dice {result['best_dice']:.4f})" if val_ds is not None
            else "kept the last epoch (no --val)")
    click.echo(f"trained {result['epochs_done']} epochs; {kept} in the {result['layout']} layout, "
               f"{result['precision']}; run in {out}")


@hovernet.command("evaluate")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False), help="run or checkpoint directory")
@click.option("--data", "data_arg", required=True, metavar="STORE[:SPLIT]|DIR",
              help="test set: a store and split (default: Test, or the whole store if it has one split), "
                   "or a dataset folder (with --format), prepared at the model's patch size, all images as Test")
@click.option("--format", "fmt", type=click.Choice(["lizard", "consep", "conic", "pannuke"]), default=None,
              help="reader of a --data dataset folder")
@click.option("--consep-classes", type=click.Choice(["merged", "original"]), default=None,
              help="--format consep: labels in the merged 4 classes (default) or CoNSeP's original 7")
@click.option("--magnification", type=click.FloatRange(0, min_open=True), default=None,
              help="--data folder: prepare at this objective power (default: the model's recorded one, "
                   "else the source's own)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output directory (metrics.json, overlay.png)")
@click.option("--postprocess", type=click.Choice(sorted(POSTPROCESS_PRESETS)), default=None,
              help="post-processing in place of the run's own: default (ours), monai (MONAI's "
                   "HoVerNetInstanceMapPostProcessing) or hovernet (hover_net's process())")
@click.option("--overlays", type=click.IntRange(0), default=8, show_default=True, help="patches drawn in overlay.png")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("--dry-run", is_flag=True, help="print the model's config and exit")
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
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True)
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
