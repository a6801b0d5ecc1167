"""Every `parity` command and sub-command answers --help, lists itself, and ends its help with a worked example."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from workflows.cli.main import COMMANDS, cli


def _command_paths() -> list[tuple[str, ...]]:
    paths = []
    for name, (target, _help) in sorted(COMMANDS.items()):
        if isinstance(target, dict):
            paths += [(name, sub) for sub in sorted(target)]
        else:
            paths.append((name,))
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_help_runs_and_ends_with_an_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {' '.join(path)}" in result.output or f"{' '.join(path)} [OPTIONS]" in result.output
    assert "Example" in result.output, f"`parity {' '.join(path)} --help` has no worked example"


def test_root_help_lists_every_command_with_one_line():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"\n  {name} " in result.output, name


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2 and "No such command" in result.output
