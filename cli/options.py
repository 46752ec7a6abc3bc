"""Click options that several commands take. Each has one name, type and help text wherever it
appears; a command chooses only its default. A default of None means "the value of the command's
config" (its ``--config`` or preset), shown as such in ``--help``.

Every factory returns a decorator: ``@options.device("auto")``.
"""

from __future__ import annotations

from typing import Any, Callable

import click

from nasdm_aug.types import LAYOUT_CHOICES, PRECISIONS

__all__ = ["HELP", "help_of", "device", "seed", "overwrite", "batch_size", "precision", "layout", "dataset_format",
           "magnification", "consep_classes", "sampler_options", "hed_jitter", "dry_run", "quiet"]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# readers, samplers and their vocabularies are imported by the factories that need them, so that
# loading a command that takes neither imports no reader or torch code

#: the help text of each shared option, by flag (``--format`` and ``--steps``: :func:`help_of`)
HELP = {
    "--device": "auto (this rank's GPU when there is one, else the CPU), cpu, cuda, cuda:1 ...",
    "--seed": "Seed of every random choice the command makes; the same seed and inputs make the same ones.",
    "--overwrite": "Replace earlier output that this run would not reuse (without it, such output is refused).",
    "--batch-size": "Patches per batch: one forward pass, and in training one optimiser step.",
    "--precision": ("fp32, or bf16 autocast of the networks (the diffusion math and the losses stay fp32). auto: "
                    "bf16 where this machine runs it natively (an Ampere or later GPU, a CPU with AVX512-BF16 or "
                    "AMX), else fp32; decided when a run starts, and a resumed run keeps it."),
    "--layout": ("Memory layout of the networks: channels_last or contiguous (NCHW). auto: in training the "
                 "faster of the two here, timed once per machine and model and cached (NASDM_AUG_CACHE, else "
                 "~/.cache/nasdm-aug); in sampling contiguous on a CUDA GPU, channels_last elsewhere."),
    "--format": ("Dataset format of the source folder: a reader of nasdm_aug.data.readers (toy, where listed, "
                 "generates toy tissue instead of reading a folder)."),
    "--magnification": ("Objective power to prepare the data at, e.g. 20: images area-downsampled, labels "
                        "nearest (prepare only downsamples)."),
    "--consep-classes": "--format consep: labels in CoNSeP's merged 4 classes, or its original 7 merged as HoVer-Net does.",
    "--sampler": "Sampler; naming another than the config's starts from that sampler's own options and steps.",
    "--steps": "Network evaluations per sample (a sampler's own unless given: {steps}).",
    "--guidance": "Classifier-free guidance scale (1: none).",
    "--eta": "--sampler ddim: noise per step (0 deterministic, the default; 1 DDPM-like).",
    "--hed-jitter": ("HoVerNet training: H&E stain jitter on half the items, beside hover_net's own colour jitter: "
                     "each stain's optical density s becomes a*s + b, a ~ U(1-SCALE, 1+SCALE), b ~ U(-SHIFT, SHIFT) "
                     "(rgb2hed units: real nuclei about 0.045). 0,0: none, as in hover_net and the paper. 0.2,0.01 "
                     "kept HoVerNets trained on synthetic patches from missing pale real nuclei."),
    "--dry-run": "Print the resolved configuration and exit without writing anything.",
    "--quiet": "No progress bar.",
}

_CONFIGS = "the config's"


def help_of(flag: str) -> str:
    """The help text of a shared option, with the samplers' default steps filled in."""
    if flag == "--steps":
        from nasdm_aug.sampling.samplers import SAMPLERS

        return HELP[flag].format(steps=", ".join(f"{n} {s.default_steps}" for n, s in SAMPLERS.items()))
    return HELP[flag]


def _shown(default: Any, unset: str | None) -> bool | str:
    """click's ``show_default``: the default, or for None what stands in for it."""
    return True if default is not None else (unset or False)


def device(default: str | None = "auto", unset: str | None = _CONFIGS) -> Decorator:
    """``--device DEV``."""
    return click.option("--device", default=default, show_default=_shown(default, unset), metavar="DEV",
                        help=HELP["--device"])


def seed(default: int | None = None, unset: str | None = _CONFIGS, required: bool = False) -> Decorator:
    """``--seed N`` (>= 0)."""
    return click.option("--seed", type=click.IntRange(min=0), default=default, required=required,
                        show_default=False if required else _shown(default, unset), help=HELP["--seed"])


def overwrite() -> Decorator:
    """``--overwrite`` (a flag)."""
    return click.option("--overwrite", is_flag=True, help=HELP["--overwrite"])


def batch_size(default: int | None = None, unset: str | None = _CONFIGS) -> Decorator:
    """``--batch-size N`` (>= 1)."""
    return click.option("--batch-size", type=click.IntRange(min=1), default=default,
                        show_default=_shown(default, unset), help=HELP["--batch-size"])


def precision(unset: str = _CONFIGS) -> Decorator:
    """``--precision fp32|bf16|auto`` (unset: the config's)."""
    return click.option("--precision", type=click.Choice(PRECISIONS), default=None, show_default=unset,
                        help=HELP["--precision"])


def layout(unset: str = _CONFIGS) -> Decorator:
    """``--layout auto|channels_last|contiguous`` (unset: the config's)."""
    return click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default=None, show_default=unset,
                        help=HELP["--layout"])


def dataset_format(toy: bool = False, required: bool = False) -> Decorator:
    """``--format NAME``: a reader of ``nasdm_aug.data.readers.READERS`` (and ``toy`` with ``toy``)."""
    from nasdm_aug.data.readers import READERS

    choices = [*READERS, "toy"] if toy else list(READERS)
    return click.option("--format", "fmt", type=click.Choice(choices), required=required, default=None,
                        help=HELP["--format"])


def magnification(unset: str) -> Decorator:
    """``--magnification X`` (> 0); ``unset`` says what None means."""
    return click.option("--magnification", type=click.FloatRange(0, min_open=True), default=None,
                        show_default=unset, help=HELP["--magnification"])


def consep_classes() -> Decorator:
    """``--consep-classes merged|original`` (unset: merged)."""
    from nasdm_aug.data.readers_folder import CONSEP_CLASSES

    return click.option("--consep-classes", type=click.Choice(CONSEP_CLASSES), default=None,
                        show_default=CONSEP_CLASSES[0], help=HELP["--consep-classes"])


def sampler_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--sampler``, ``--steps``, ``--guidance`` and ``--eta`` (each unset: the config's)."""
    from nasdm_aug.sampling.samplers import SAMPLERS

    for option in reversed([
        click.option("--sampler", type=click.Choice(sorted(SAMPLERS)), default=None, show_default=_CONFIGS,
                     help=HELP["--sampler"]),
        click.option("--steps", type=click.IntRange(min=1), default=None, show_default=_CONFIGS,
                     help=help_of("--steps")),
        click.option("--guidance", type=click.FloatRange(min=0), default=None, show_default=_CONFIGS,
                     help=HELP["--guidance"]),
        click.option("--eta", type=click.FloatRange(min=0), default=None, show_default=_CONFIGS, help=HELP["--eta"]),
    ]):
        fn = option(fn)
    return fn


def _parse_hed_jitter(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        scale, shift = (float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected SCALE,SHIFT, e.g. 0.2,0.01") from None
    if not 0.0 <= scale < 1.0 or not shift >= 0.0:
        raise click.BadParameter(f"{value!r}: SCALE must lie in [0, 1) and SHIFT be >= 0")
    return scale, shift


def hed_jitter(unset: str = _CONFIGS) -> Decorator:
    """``--hed-jitter SCALE,SHIFT`` (unset: the config's), parsed to a (scale, shift) tuple."""
    return click.option("--hed-jitter", default=None, metavar="SCALE,SHIFT", callback=_parse_hed_jitter,
                        show_default=unset, help=HELP["--hed-jitter"])


def dry_run() -> Decorator:
    """``--dry-run`` (a flag)."""
    return click.option("--dry-run", is_flag=True, help=HELP["--dry-run"])


def quiet() -> Decorator:
    """``--quiet`` (a flag)."""
    return click.option("--quiet", is_flag=True, help=HELP["--quiet"])
