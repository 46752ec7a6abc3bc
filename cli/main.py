"""The ``nasdm-aug`` click group.

Commands load lazily (``COMMANDS`` maps a name to ``module:attribute`` and a one-line help), so
``nasdm-aug --help`` answers without importing torch. User errors (:class:`InputError`,
``click.ClickException``) print one line and exit 2; nothing else is caught.

The library names what it needs by its parameters, in backticks (``pass `overwrite` to replace
it``); for a user of the command line those names become the flags (``--overwrite``).
"""

from __future__ import annotations

import importlib
import re
import sys

import click

from nasdm_aug import __version__

# name -> (import path, one-line help shown by `nasdm-aug --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cli.train:train_command", "train the NASDM mask or patch diffusion model on a PatchStore split"),
    "toy": ("cli.toy:toy", "write procedural H&E toy tissue (Lizard layout) with exact labels"),
    "synthesize": ("cli.synthesize:synthesize", "make a synthetic patch bank from real or generated masks"),
    "score": ("cli.score:score", "fidelity score per bank patch: how well a real-data HoVerNet finds its own nuclei"),
    "benchmark": ("cli.benchmark:benchmark", "reproduce the addition, replacement and synthetic-vs-real studies"),
    "demo": ("cli.demo:demo", "run the whole product on the built-in toy tissue and write a report"),
    "prepare": ("cli.prepare:prepare_cmd", "tile a dataset or toy tissue into a PatchStore with splits"),
    "hovernet": ("cli.hovernet:hovernet", "train, evaluate and apply the bundled HoVerNet (Dice, PQ, AJI, mPQ+)"),
    "evaluate": ("cli.evaluate:evaluate", "FID/IS/KID, expert criteria, mask checks and nuclear stain of a synthetic bank"),
    "export": ("cli.export:export_command", "write a store, split or mixed set for hover_net, CoNIC, CellViT, StarDist or Cellpose"),
}


# library parameters whose flag is not the parameter's own name
_FLAG_OF = {"type_map": "--map", "fmt": "--format", "data_arg": "--data", "models": "--model"}


def as_flags(message: str) -> str:
    """A library message with its backticked parameter names (`patch_size`) as flags (--patch-size)."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: _FLAG_OF.get(m.group(1), "--" + m.group(1).replace("_", "-")),
                  message)


class _LazyGroup(click.Group):
    def invoke(self, ctx: click.Context):
        from nasdm_aug.utils import InputError

        try:
            return super().invoke(ctx)
        except InputError as exc:
            flagged = as_flags(str(exc))
            if flagged == str(exc):
                raise
            raise type(exc)(flagged) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="nasdm-aug")
def cli() -> None:
    """NASDM: nuclei-aware diffusion models that make annotated H&E patches, mix them into
    MONAI training data, and measure with a bundled HoVerNet whether they help."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; turns :class:`InputError` into one clear line."""
    from nasdm_aug.utils import InputError

    try:
        cli.main(args=argv, prog_name="nasdm-aug", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except InputError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a full disk, a read-only or vanished folder: the path and the reason
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
