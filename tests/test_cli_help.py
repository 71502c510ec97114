"""Every option of every command reads an OTRULES_* variable, and its --help says which."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from otrules.cli import main


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, command in sorted(group.commands.items()):
        out.append(((*path, name), command))
        if isinstance(command, click.Group):
            out.extend(commands(command, (*path, name)))
    return out


COMMANDS = commands(main)


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name not in ("help", "version")]


def envvars(option: click.Option) -> list[str]:
    if not option.envvar:
        return []
    return [option.envvar] if isinstance(option.envvar, str) else list(option.envvar)


def test_there_are_commands_to_check():
    assert {"run", "consume", "produce"} <= {path[-1] for path, _ in COMMANDS}


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_an_otrules_variable_and_help_shows_it(path: tuple[str, ...], command: click.Command):
    missing = [o.opts[0] for o in options(command) if not envvars(o)]
    assert not missing, f"otrules {' '.join(path)}: options without an OTRULES_* variable: {missing}"
    wrong = {o.opts[0]: envvars(o) for o in options(command) if not all(v.startswith("OTRULES_") for v in envvars(o))}
    assert not wrong, f"otrules {' '.join(path)}: variables not named OTRULES_*: {wrong}"

    result = CliRunner().invoke(main, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # --help wraps lines anywhere between words
    ctx = click.Context(command, info_name=path[-1], parent=click.Context(main, info_name="otrules"))
    for option in options(command):
        names = ", ".join(envvars(option))
        record = option.get_help_record(ctx)
        assert record is not None and f"env var: {names}" in record[1], (option.opts, record)
        assert f"env var: {names}" in text, f"otrules {' '.join(path)} --help does not show {names}"
