"""The root ``parity`` command: the one place where the command tables of capture/, analyze/ and workflows/ are
composed, each loaded lazily (``parity --help`` and ``parity compare --help`` import no ML framework).

Each package owns its table (capture/cli/commands.py, analyze/cli/commands.py, WORKFLOW_COMMANDS below); a new
command goes into its package's table. Exit codes: 0 fine, 1 divergence over tolerance or thresholds, 2 usage
error, 3 unusable input.
"""
from __future__ import annotations

import logging
import sys

import click

from analyze.cli.commands import COMMANDS as ANALYZE_COMMANDS
from capture.cli.commands import COMMANDS as CAPTURE_COMMANDS
from protocol.errors import ParityError

from .lazy import LazyGroup

#: The workflows' own commands: jobs that run capture and analysis together.
WORKFLOW_COMMANDS: dict = {
    "demo": ("workflows.cli.demo_cmd:demo_cmd", "Run the whole job on a tiny built-in Llama, offline."),
    "eval-compare": ("workflows.cli.eval_compare_cmd:eval_compare_cmd",
                     "An ONNX model vs its HF model on random inputs, per output."),
}


def _compose(*tables: dict) -> dict:
    """One table from the packages' tables; a name in two of them is a bug, caught here."""
    out: dict = {}
    for table in tables:
        clash = sorted(set(out) & set(table))
        if clash:
            raise RuntimeError(f"command name(s) {', '.join(clash)} defined by two packages")
        out.update(table)
    return out


COMMANDS = _compose(CAPTURE_COMMANDS, ANALYZE_COMMANDS, WORKFLOW_COMMANDS)


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
