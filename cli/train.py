"""``nasdm-aug train mask|patch``: train a NASDM model on a PatchStore split (thin wrapper over
:func:`nasdm_aug.training.run.train`; runs under ``torchrun`` unchanged)."""

from __future__ import annotations

from pathlib import Path

import click

from cli import options
from nasdm_aug.diffusion.gaussian import LOSS_WEIGHTINGS, ModelMeanType
from nasdm_aug.diffusion.schedules import BETA_SCHEDULES
from nasdm_aug.nets.presets import INPUT_CONDITIONS
from nasdm_aug.types import MODEL_KINDS

__all__ = ["train_command"]


@click.command("train", context_settings={"show_default": True})
@click.argument("kind", type=click.Choice(MODEL_KINDS))
# -- data
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="S.h5", help="PatchStore to train on.")
@click.option("--split", default="Train", metavar="NAME", help="Split of the store to train on.")
# -- config
@click.option("--preset", type=click.Choice(["tiny", "paper", "consep-cpu"]), default="tiny",
              help="Named config (ignored with --config); its depth and attention follow the store's patch size. "
                   "consep-cpu: the real-tissue recipe for CoNSeP at 20x in 64-px patches on a CPU (its patch model "
                   "departs from the paper: --mean-type start_x --loss-weighting min-snr --input-condition mask --schedule "
                   "cosine --drop-unannotated 3; its mask model: --mean-type start_x --loss-weighting min-snr "
                   "--gap-weight 0.5).")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="RUN.json", help="Full TrainConfig JSON.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override the number of steps. The learning-rate drop stays at the config's "
                   "`lr_drop_step`: to stretch a recipe, give a --config with both.")
@options.seed()
@options.layout()
@options.precision()
@click.option("--loss-weighting", type=click.Choice(LOSS_WEIGHTINGS), default=None,
              help="Override the MSE term's per-timestep weight. none: the paper's L_simple. Departures from the "
                   "paper: min-snr (Min-SNR-gamma, gamma 5: min(SNR, 5) on the x_0 loss, min(SNR, 5) / SNR on the eps "
                   "loss) and p2 (1 / (1 + SNR) on the eps loss); the bound term that trains the variance stays "
                   "unweighted.")
@click.option("--mean-type", type=click.Choice([m.value for m in ModelMeanType]), default=None,
              help="Override what the network predicts. epsilon: the noise (the paper's). Departures from the "
                   "paper: start_x (x_0) and v (sqrt(abar) eps - sqrt(1 - abar) x_0), which keep the implied x_0 "
                   "sane at high noise, where an eps error is amplified by 1 / sqrt(SNR).")
@click.option("--schedule", type=click.Choice(BETA_SCHEDULES), default=None,
              help="Override the noise schedule. linear: Ho et al.'s (the paper's recipe here). cosine (improved "
                   "DDPM's; a departure from the paper): with x_0 prediction and Min-SNR, half the timesteps the "
                   "linear schedule draws hold an SNR below 0.09 and barely train, a fifth under cosine.")
@click.option("--input-condition", type=click.Choice(INPUT_CONDITIONS), default=None,
              help="Override where the patch model's condition enters. none: SPADE in the middle and decoder "
                   "(the paper's). mask (a departure from the paper): the type channels and instance-edge map "
                   "also concatenated to the noisy image at the input.")
@click.option("--gap-weight", type=click.FloatRange(min=0), default=None, metavar="W0",
              help="Override the mask model's extra loss weight on the background between nearby nuclei, "
                   "1 + W0 exp(-(d1 + d2)^2 / (2 sigma^2)) with d1, d2 the distances to the two nearest nuclei "
                   "(U-Net's border weight, Ronneberger et al. 2015). 0: the paper's loss; above 0 departs from it "
                   "(the consep-cpu mask preset uses 0.5).")
@click.option("--gap-sigma", type=click.FloatRange(min=0, min_open=True), default=None, metavar="PX",
              help="Override the gap weight's width sigma, in pixels.")
@click.option("--drop-unannotated", type=click.IntRange(min=0), default=None, metavar="N",
              help="Override how many dark blobs away from every annotated nucleus (as dark as the split's median "
                   "nucleus pixel, >= 12 px and > 2 px from a nucleus at 20x, scaled with the store's magnification: unannotated nuclei, necrotic debris, tissue dye) "
                   "leave a training patch out. 0: keep every patch (the paper's data); above 0 departs from it "
                   "(data.json records how many were left out).")
# -- run
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="RUN_DIR", help="Run directory.")
@options.device("auto")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its latest checkpoint.")
@options.overwrite()
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@options.dry_run()
def train_command(kind: str, store: Path, split: str, out: Path, device: str, resume: bool, overwrite: bool,
                  no_progress: bool, dry_run: bool, **given) -> None:
    """Train the KIND model (mask: type presence -> nuclei mask; patch: mask -> H&E patch).

    Multi-GPU: torchrun --nproc_per_node N -m cli.main train ...
    """
    from nasdm_aug.training.run import check_resumable, run_config_from_options, train
    from nasdm_aug.training.trainer import NonFiniteLossError

    if resume and not dry_run and not check_resumable(out):
        click.echo(f"{out}: no checkpoint yet; the run starts again from step 0 with its config.json", err=True)
    config = run_config_from_options(kind, store, out, resume=resume, **given)
    if dry_run:
        click.echo(config.to_json())
        return
    try:
        run_dir = train(kind, store, split, config, out, resume=resume, overwrite=overwrite, device=device,
                        progress=not no_progress)
    except NonFiniteLossError as exc:
        raise click.ClickException(str(exc)) from None
    from nasdm_aug.training.distributed import process_rank

    if process_rank() == 0:  # under torchrun, one line for the whole job
        click.echo(f"trained {kind} model: {run_dir}")
