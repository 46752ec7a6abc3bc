"""``nasdm-aug train mask|patch``: train a NASDM model on a PatchStore split (thin wrapper over
:func:`nasdm_aug.training.run.train`; runs under ``torchrun`` unchanged)."""

from __future__ import annotations

from pathlib import Path

import click

from nasdm_aug.diffusion.gaussian import LOSS_WEIGHTINGS, ModelMeanType
from nasdm_aug.nets.presets import INPUT_CONDITIONS
from nasdm_aug.training.config import PRECISIONS
from nasdm_aug.types import LAYOUT_CHOICES, MODEL_KINDS

__all__ = ["train_command"]


def _resolve(kind: str, store: Path, preset: str, config_path: Path | None, out: Path, resume: bool, steps: int | None,
             seed: int | None, layout: str | None = None, loss_weighting: str | None = None,
             input_condition: str | None = None, mean_type: str | None = None, precision: str | None = None):
    from nasdm_aug.training.config import TrainConfig, get_train_preset
    from nasdm_aug.training.run import resolve_run_config
    from nasdm_aug.utils import InputError

    if config_path is not None:
        config = TrainConfig.load(config_path)
        if config.kind != kind:
            raise InputError(f"{config_path}: config is for the {config.kind!r} model, not {kind!r}")
    elif resume and (out / "config.json").is_file():
        config = TrainConfig.load(out / "config.json")  # the run's own config
    else:  # a preset is a recipe: the data fixes the number of types and the patch size
        from nasdm_aug.data.store import PatchStore

        with PatchStore(store) as data:
            try:
                config = get_train_preset(kind, preset, n_types=data.type_table.n_types, image_size=data.patch_size)
            except ValueError as exc:
                raise InputError(f"preset {preset!r} does not fit {store} ({data.patch_size}-px patches): {exc}") from None
    if seed is not None:
        config = config.replace(seed=seed)  # before resolving, so a resume cannot change it silently
    if layout is not None:
        config = config.replace(layout=layout)
    if precision is not None:
        config = config.replace(precision=precision)
    if loss_weighting is not None:
        config = config.replace(diffusion=config.diffusion.replace(loss_weighting=loss_weighting))
    if mean_type is not None:
        config = config.replace(diffusion=config.diffusion.replace(mean_type=mean_type))
    if input_condition is not None:
        if config.kind != "patch" and input_condition != "none":
            raise InputError(f"--input-condition {input_condition} is for the patch model; the mask model's "
                             "condition is a type-presence vector")
        config = config.replace(model=config.model.replace(input_condition=input_condition))
    return resolve_run_config(out, config, resume, steps)


@click.command("train", context_settings={"show_default": True})
@click.argument("kind", type=click.Choice(MODEL_KINDS))
# -- data
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="S.h5", help="PatchStore to train on.")
@click.option("--split", default="Train", metavar="NAME", help="Split of the store to train on.")
# -- config
@click.option("--preset", type=click.Choice(["tiny", "paper", "consep-cpu"]), default="tiny",
              help="Named config (ignored with --config); its depth and attention follow the store's patch size. "
                   "consep-cpu: the real-tissue recipe for CoNSeP at 20x in 64-px patches on a CPU (its patch model "
                   "departs from the paper: --mean-type start_x --loss-weighting min-snr --input-condition mask).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="RUN.json", help="Full TrainConfig JSON.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override the number of steps.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Override the seed.")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default=None,
              help="Override the memory layout; auto (the presets'): the faster one here, timed once per machine "
                   "and model and cached (NASDM_AUG_CACHE, else ~/.cache/nasdm-aug).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Override the precision: bf16 autocast of the network (the diffusion math stays fp32). auto (the "
                   "paper preset's): bf16 where this machine runs it natively (an Ampere or later GPU, a CPU with "
                   "AVX512-BF16 or AMX), else fp32, decided at the start and kept on resume. The other presets: fp32.")
@click.option("--loss-weighting", type=click.Choice(LOSS_WEIGHTINGS), default=None,
              help="Override the MSE term's per-timestep weight. none: the paper's L_simple. Departures from the "
                   "paper: min-snr (Min-SNR-gamma, gamma 5: min(SNR, 5) on the x_0 loss, min(SNR, 5) / SNR on the eps "
                   "loss) and p2 (1 / (1 + SNR) on the eps loss); the bound term that trains the variance stays "
                   "unweighted.")
@click.option("--mean-type", type=click.Choice([m.value for m in ModelMeanType]), default=None,
              help="Override what the network predicts. epsilon: the noise (the paper's). Departures from the "
                   "paper: start_x (x_0) and v (sqrt(abar) eps - sqrt(1 - abar) x_0), which keep the implied x_0 "
                   "sane at high noise, where an eps error is amplified by 1 / sqrt(SNR).")
@click.option("--input-condition", type=click.Choice(INPUT_CONDITIONS), default=None,
              help="Override where the patch model's condition enters. none: SPADE in the middle and decoder "
                   "(the paper's). mask (a departure from the paper): the type channels and instance-edge map "
                   "also concatenated to the noisy image at the input.")
# -- run
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="RUN_DIR", help="Run directory.")
@click.option("--device", default="auto", metavar="DEV", help="auto (this rank's GPU, else CPU), cpu, cuda, cuda:1 ...")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in RUN_DIR.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config as JSON and exit.")
def train_command(
    kind: str,
    store: Path,
    split: str,
    preset: str,
    config_path: Path | None,
    steps: int | None,
    seed: int | None,
    layout: str | None,
    precision: str | None,
    loss_weighting: str | None,
    input_condition: str | None,
    mean_type: str | None,
    out: Path,
    device: str,
    resume: bool,
    overwrite: bool,
    no_progress: bool,
    dry_run: bool,
) -> None:
    """Train the KIND model (mask: type presence -> nuclei mask; patch: mask -> H&E patch).

    Multi-GPU: torchrun --nproc_per_node N -m cli.main train ...
    """
    if resume and not dry_run:
        from nasdm_aug.training.checkpoint import latest_checkpoint
        from nasdm_aug.utils import InputError

        if not (out / "config.json").is_file() and (not out.is_dir() or latest_checkpoint(out) is None):
            raise InputError(f"{out}: nothing to resume (no run there); drop --resume to start a new run")
        if latest_checkpoint(out) is None:
            click.echo(f"{out}: no checkpoint yet; the run starts again from step 0 with its config.json", err=True)
    config = _resolve(kind, store, preset, config_path, out, resume, steps, seed, layout, loss_weighting,
                      input_condition, mean_type, precision)
    if dry_run:
        click.echo(config.to_json())
        return
    from nasdm_aug.training.run import train
    from nasdm_aug.training.trainer import NonFiniteLossError

    try:
        run_dir = train(
            kind, store, split, config, out, resume=resume, overwrite=overwrite, device=device, progress=not no_progress
        )
    except NonFiniteLossError as exc:
        raise click.ClickException(str(exc)) from None
    from nasdm_aug.training.distributed import process_rank

    if process_rank() == 0:  # under torchrun, one line for the whole job
        click.echo(f"trained {kind} model: {run_dir}")
