"""``parity capture torch MODEL --inputs INPUTS.h5 --label L -o OUT.h5``: per-module capture of a PyTorch model."""
from __future__ import annotations

import click

from capture.policy import parse_size
from protocol import CAPTURE_MODES, COMPRESSIONS


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("torch")
@click.argument("model")
@click.option("--inputs", "inputs_path", required=True, type=click.Path(dir_okay=False),
              help="Input set file (from 'parity inputs').")
@click.option("--label", required=True, help="Name of this capture, e.g. cpu-fp32.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Dump to write (never replaced).")
@click.option("--device", default="cpu", show_default=True, help="Torch device: cpu, cuda:0, mps, xpu:0...")
@click.option("--dtype", default="float32", show_default=True, help="float32, float16 or bfloat16.")
@click.option("--attn-implementation", default=None, help="transformers attention implementation (eager, sdpa...).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model folder's own Python code to run.")
@click.option("--mode", type=click.Choice(CAPTURE_MODES), default="forward", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=0, help="Decode steps of the generate modes.")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="Reference dump whose generated tokens a teacher-forced capture feeds.")
@click.option("--policy", "rules", multiple=True, metavar="REGEX=ACTION",
              help="Per-site rule (first match wins): full, stats, skip, slice:DIM:INDEX, topk:K. Repeatable.")
@click.option("--default-policy", type=click.Choice(["full", "stats"]), default="full", show_default=True,
              help="What to keep of sites no rule matches.")
@click.option("--byte-budget", callback=_size, default=None, help="Tensor bytes per dump before degrading to stats.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="none", show_default=True)
@click.option("--include", default=None, help="Hook only modules whose path matches this regex.")
@click.option("--exclude", default=None, help="Do not hook modules whose path matches this regex.")
@click.option("--max-depth", type=click.IntRange(min=0), default=None, help="Hook modules at most this deep.")
@click.option("--check-perturbation", is_flag=True, help="Also run unhooked; record if outputs are bit-identical.")
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Capture the first N samples only.")
@click.option("--run-id", default="", help="Run id recorded in the manifest.")
def torch_cmd(model, inputs_path, label, output, device, dtype, attn_implementation, trust_remote_code, mode,
              max_new_tokens, reference, rules, default_policy, byte_budget, compression, include, exclude,
              max_depth, check_perturbation, max_samples, run_id):
    """Capture the inputs and outputs of every module of MODEL (a Hugging Face folder or hub id) over an input
    set, with forward hooks, into a dump.

    Keys are s<sample>/t<step>/<module path>:in|out[.<arg>]#<call> and are the same on every device and dtype,
    so dumps pair one to one. --mode generate decodes greedily (step 0 is the prefill); teacher-forced feeds the
    tokens of --reference. Prints one summary line.

    \b
    Example:
      parity inputs text MODEL_DIR --text-file corpus.txt -n 1024 -o inputs.h5
      parity capture torch MODEL_DIR --inputs inputs.h5 --label cpu-fp32 -o cpu-fp32.h5 \\
          --policy 'layers\\.\\d+\\.mlp=stats' --check-perturbation
    """
    from capture.base import CaptureOptions
    from capture.policy import RecordPolicy
    from capture.torch_backend import capture_torch_model
    from capture.torch_hooks import ModuleSelection
    try:
        policy = RecordPolicy.from_strings(list(rules), default_policy, byte_budget)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from None
    options = CaptureOptions(label=label, run_id=run_id, mode=mode, max_new_tokens=max_new_tokens,
                             reference=reference, policy=policy, compression=compression,
                             check_perturbation=check_perturbation, max_samples=max_samples)
    try:
        selection = ModuleSelection(include=include, exclude=exclude, max_depth=max_depth)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--include/--exclude") from None
    summary = capture_torch_model(model, inputs_path, output, options, device=device, dtype=dtype,
                                  attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
                                  selection=selection)
    click.echo(summary.line())
