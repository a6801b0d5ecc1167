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

# Every command, as name -> ("module:attr", one-line help), so that `parity --help` lists everything without
# importing any of it. Sub-groups are dicts of the same shape.
CAPTURE_COMMANDS: dict = {
    # PyTorch capture
    "torch": ("capture.cli.torch_cmd:torch_cmd", "Capture every module of a PyTorch / transformers model."),
    # ONNX / ORT GenAI capture
    "onnx": ("capture.cli.onnx_cmd:onnx_cmd", "Capture an ONNX model's intermediate values with ONNX Runtime."),
    "genai": ("capture.cli.genai_cmd:genai_cmd", "Capture an ORT GenAI model's logits (and intermediates)."),
}
INPUTS_COMMANDS: dict = {
    # text / tokens input sets
    "text": ("capture.cli.inputs_cmd:text_cmd", "Tokenize a corpus once into chunks or strided windows."),
    "tokens": ("capture.cli.inputs_cmd:tokens_cmd", "Make an input set from the arrays of an .npz file."),
    # random input sets from an ONNX I/O spec
    "random": ("capture.cli.random_inputs_cmd:random_inputs_cmd", "Random inputs from an ONNX model's input spec."),
}
THRESHOLDS_COMMANDS: dict = {
    # thresholds build / check
    "build": ("analyze.cli.thresholds_cmd:build_cmd", "Build per-site thresholds from baseline reports."),
    "check": ("analyze.cli.thresholds_cmd:check_cmd", "Judge a report against a thresholds file."),
}
COMMANDS: dict = {
    "inspect": ("analyze.cli.inspect_cmd:inspect_cmd", "Show a dump's or input set's manifest and records."),
    "validate": ("analyze.cli.validate_cmd:validate_cmd", "Check dump and input-set files completely."),
    # analyzer core: compare / kl / ppl
    "compare": ("analyze.cli.compare_cmd:compare_cmd", "Compare a candidate dump with a reference dump."),
    "kl": ("analyze.cli.kl_cmd:kl_cmd", "Pairwise KL divergence of several dumps' logits."),
    "ppl": ("analyze.cli.ppl_cmd:ppl_cmd", "Perplexity of a dump's logits on its input set."),
    # reports, demo
    "report": ("analyze.cli.report_cmd:report_cmd", "Render a saved report as a self-contained HTML page."),
    "demo": ("analyze.cli.demo_cmd:demo_cmd", "Run the whole job on a tiny built-in Llama, offline."),
    # shared-folder workflow: submit / agent / watch / status
    "submit": ("capture.cli.submit_cmd:submit_cmd", "Write a capture job into a shared folder."),
    "agent": ("capture.cli.agent_cmd:agent_cmd", "Capture the shared folder's jobs of one label (daemon)."),
    "watch": ("analyze.cli.watch_cmd:watch_cmd", "Compare each run's dumps as they appear (daemon)."),
    "status": ("analyze.cli.status_cmd:status_cmd", "Show a shared folder's runs, claims and verdicts."),
    # existing workflows: eval-compare
    "eval-compare": ("analyze.cli.eval_compare_cmd:eval_compare_cmd",
                     "An ONNX model vs its HF model on random inputs, per output."),
}
for _name, _table, _help in (
        ("capture", CAPTURE_COMMANDS, "Capture per-layer tensors of a model into a dump."),
        ("inputs", INPUTS_COMMANDS, "Build input sets (token ids, random inputs) that every backend consumes."),
        ("thresholds", THRESHOLDS_COMMANDS, "Build and check per-site thresholds from baseline reports.")):
    if _table:
        COMMANDS[_name] = (_table, _help)


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
