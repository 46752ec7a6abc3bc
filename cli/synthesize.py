"""``nasdm-aug synthesize``: a patch bank from real masks (S1 / S2) or from generated masks."""

from __future__ import annotations

import json

import click

from cli import options
from nasdm_aug.sampling.samplers import SAMPLERS


def _interval(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """``LOW,HIGH`` as two floats; ``all`` as the empty tuple (every step guided)."""
    if value is None:
        return None
    if value.strip().lower() == "all":
        return ()
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not LOW,HIGH (two noise levels, e.g. 0.3,5) or 'all'") from None
    from nasdm_aug.sampling import check_guidance_interval

    try:
        return check_guidance_interval((lo, hi))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _old_dtype(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--dtype``, replaced by ``--precision``: kept hidden for one release; it still works and says so."""
    if value is not None:
        click.echo("note: --dtype is replaced by --precision (float32 -> fp32, bfloat16 -> bf16, auto -> auto)",
                   err=True)
    return value


@click.command("synthesize")
# -- models
@click.option("--model", "models", multiple=True, default=("toy",), show_default=True, metavar="RUN",
              help="A shipped model ('toy': toy tissue; 'consep-cpu': real CoNSeP at 20x) or the mask and patch run directories "
                   "(repeat the option). A run's sampling.json sets how its model samples where no option or "
                   "--config does.")
# -- what to make
@click.option("--masks", type=click.Path(dir_okay=False), default=None, metavar="STORE.h5",
              help="Real PatchStore: one synthetic patch per real mask, recording its parent index.")
@click.option("--split", default=None, metavar="NAME", help="With --masks: use this split's masks (e.g. R2).")
@click.option("--indices", default=None, metavar="I,J,...", help="With --masks: explicit patch indices.")
@click.option("--types", default=None, metavar="NAMES",
              help="Generated masks: 'all', 'random', or comma-separated type names (e.g. epithelial,lymphocyte).")
@click.option("--num", type=int, default=None, metavar="N",
              help="Generated masks: number of patches. With --recombine: masks to make (default one per mask of "
                   "the split).")
@click.option("--combination", "combinations", multiple=True, metavar="NAME+NAME:N",
              help="Generated masks: N patches holding exactly these types (repeat the option).")
@click.option("--marker-threshold", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Generated masks: a nucleus marker per peak of the distance channel above this, as well as per "
                   "edge-bounded core, so touching nuclei whose generated edge is faint come apart (default 0.5; "
                   "0: edge markers alone).")
@click.option("--mask-tries", type=click.IntRange(min=1), default=None, metavar="N",
              help="Generated masks: draw a mask again, with fresh noise, while its types are not exactly the ones "
                   "asked for, up to N draws in all; a mask that never holds them keeps its first draw (default 1; "
                   "not in the NASDM paper). The result's masks_off_request counts those left.")
@click.option("--mask-guidance", type=click.FloatRange(min=0), default=None,
              help="Generated masks: the mask model's classifier-free guidance scale (default: the mask model's "
                   "sampling.json, else 2.5; --guidance is the patch model's). Masks want more than patches: at 1.5 the consep-cpu mask model draws a "
                   "quarter fewer nuclei than real patches hold.")
@click.option("--mask-guidance-interval", callback=_interval, default=None, metavar="LOW,HIGH|all",
              help="Generated masks: guide the mask model only at noise levels LOW < sigma <= HIGH (not in the "
                   "NASDM paper). Guidance at high noise packs nuclei into sheets, at low noise it draws the rare "
                   "types: 4.5 at 0,8 draws masks nearer real ones than 2.5 at every step, but the balance study's "
                   "HoVerNet gained less from them. 'all': every step (default, unless the mask model's sampling.json "
                   "says otherwise).")
@click.option("--mask-sampler", type=click.Choice(sorted(SAMPLERS)), default=None,
              help="Generated masks: the mask model's own sampler, starting from its default steps (default: the "
                   "mask model's sampling.json, else --sampler's, for both models). The mask guidance was tuned under ddpm; ddim draws denser "
                   "masks with it, so `--sampler ddim --mask-sampler ddpm` keeps the masks as ddpm draws them.")
@click.option("--mask-steps", type=click.IntRange(min=1), default=None,
              help="Generated masks: the mask model's own number of steps (default: the mask model's sampling.json, "
                   "else --steps, or --mask-sampler's default).")
@click.option("--guidance-interval", callback=_interval, default=None, metavar="LOW,HIGH|all",
              help="Guide the patch model only at noise levels LOW < sigma <= HIGH, sigma = sqrt((1 - "
                   "alpha_bar) / alpha_bar); the other steps run the conditional model alone, at half the cost "
                   "(Kynkaenniemi et al. 2024; not in the NASDM paper). 'all': every step (default, unless the patch "
                   "model's sampling.json says otherwise).")
# -- rare-type balancing
@click.option("--balance-for", default=None, metavar="STORE.h5[:SPLIT]",
              help="Generated masks of the type combinations that move this real split (default Train) "
                   "toward --target; the plan is stored in the bank's attrs['balance_plan'].")
@click.option("--recombine", default=None, metavar="STORE.h5[:SPLIT]",
              help="Recombined masks: real masks of this split (default Train) with real nuclei of the types it "
                   "lacks relative to --target added, drawn by the patch model; how they were made is stored in "
                   "the bank's attrs['recombine'].")
@click.option("--target", default="sqrt", show_default=True, metavar="uniform|sqrt|NAME=W,...",
              help="With --balance-for or --recombine: target type distribution.")
@click.option("--ratio", type=float, default=0.5, show_default=True, metavar="R",
              help="With --balance-for: at most R x (split size) patches, R in (0, 1].")
# -- output
@click.option("--out", type=click.Path(dir_okay=False), required=True, metavar="BANK.h5", help="Output bank.")
@options.overwrite()
@click.option("--resume", is_flag=True,
              help="Accept an existing bank as done when it is complete and made with the same arguments and "
                   "weights (else refused); interrupted runs resume by themselves.")
@click.option("--preview", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Write BANK.h5.preview.png: mask | synthetic | real parent for the first N patches.")
# -- sampling
@options.sampler_options
@options.seed()
@options.batch_size()
@options.precision()
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "auto"]), default=None, hidden=True,
              callback=_old_dtype)
@options.layout()
@click.option("--compile/--no-compile", "compile", default=None,
              help="Sample through torch.compile of the networks: a one-off compile per batch shape (on a CPU it "
                   "needs a C++ compiler); same patches up to float rounding (default off).")
@options.device("auto")
@click.option("--config", type=click.Path(dir_okay=False), default=None, metavar="JSON",
              help="A full SynthesizeConfig; options given on the line override it.")
@options.dry_run()
def synthesize(out: str, overwrite: bool, resume: bool, preview: int, device: str, dry_run: bool, **given) -> None:
    """Make a synthetic PatchStore with trained NASDM models (resumable; shards under torchrun).

    Sampling options left unset take --config's values, else each model's recommended sampling
    (sampling.json in its run; consep-cpu: patches by dpmpp_2m in 15 steps at guidance 1.5 up to
    sigma 5.42, masks by ddpm in 50 steps at 2.5), else ddpm in 50 steps at guidance 1.5 (masks
    2.5). --dry-run prints what a run would use.
    """
    from nasdm_aug.synthesize import synthesis_request, synthesize as run

    request = synthesis_request(**given)
    if dry_run:
        click.echo(request.describe())
        return
    result = run(request.config, out, device=device, overwrite=overwrite, resume=resume, preview=preview,
                 attrs=request.attrs)
    from nasdm_aug.training.distributed import process_rank

    if result["finished_before"]:
        click.echo(f"{out} is complete; nothing to do")
    elif process_rank() == 0:  # under torchrun only rank 0 reports
        click.echo(json.dumps(result, indent=2))
