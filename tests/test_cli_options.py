"""The options several commands take (cli/options.py) have one name, type and help text in each."""

from __future__ import annotations

import click

from cli import options
from cli.main import COMMANDS, cli

# the same flag for another option: export's --format is the output format, not a dataset reader;
# train's --steps counts optimiser steps, not sampler steps
OTHER = {("export", "--format"), ("train", "--steps")}
UNCHECKED: set[str] = set()


def _commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(cli)
    out = []
    for name in sorted(set(COMMANDS) - UNCHECKED):
        cmd = cli.get_command(ctx, name)
        subs = cmd.commands.items() if isinstance(cmd, click.Group) else [(None, cmd)]
        out += [(f"{name} {sub}" if sub else name, command) for sub, command in subs]
    return out


def _problems(commands: list[tuple[str, click.Command]]) -> tuple[list[str], dict[str, set[type]]]:
    """(each shared option whose help differs from cli/options.py's, the types each flag has)."""
    problems, types = [], {}
    for name, cmd in commands:
        for param in cmd.params:
            flag = next((o for o in param.opts if o in options.HELP), None)
            if flag is None or param.hidden or (name, flag) in OTHER:
                continue
            if param.help != options.help_of(flag):
                problems.append(f"{name} {flag}")
            types.setdefault(flag, set()).add(type(param.type))
    return problems, types


def test_a_shared_option_has_one_help_and_type_in_every_command():
    problems, types = _problems(_commands())
    assert problems == []
    assert {flag: len(t) for flag, t in types.items()} == {flag: 1 for flag in options.HELP}  # each used, one type


def test_a_command_with_its_own_text_or_type_is_found():
    @click.command()
    @click.option("--seed", type=int, help="seed of the shuffle")
    @options.device()
    def odd(seed, device):
        pass

    problems, types = _problems([*_commands(), ("odd", odd)])
    assert problems == ["odd --seed"] and len(types["--seed"]) == 2 and len(types["--device"]) == 1
