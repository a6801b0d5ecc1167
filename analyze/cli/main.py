"""The root ``parity`` command: the one place where capture/ and analyze/ commands are composed (lazily).

Exit codes: 0 fine, 1 divergence over tolerance or thresholds, 2 usage error, 3 unusable input.
"""
from __future__ import annotations

import logging
import sys

import click

from protocol.errors import ParityError

from .lazy import LazyGroup

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_BAD_INPUT = 0, 1, 2, 3

COMMANDS = {
    "inspect": ("analyze.cli.inspect_cmd:inspect_cmd", "Show a dump's or input set's manifest and records."),
    "validate": ("analyze.cli.validate_cmd:validate_cmd", "Check dump and input-set files completely."),
}
# Registered by later modules as they land: name -> ("module:attr", help). Kept in one table so that
# `parity --help` lists everything without importing any of it.
COMMANDS.update({
})


class ParityGroup(LazyGroup):
    """The root group: turns a ParityError anywhere below it into one line on stderr and exit code 3."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ParityError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=ParityGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tensorparity", prog_name="parity")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """tensorparity: find where a model's numbers drift between devices, dtypes and runtimes.

    Capture per-layer tensors on each host, then compare a candidate dump with a reference dump.
    Exit codes: 0 fine, 1 divergence, 2 usage error, 3 unusable input (bad file, wrong version).
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="parity")


if __name__ == "__main__":
    main()
