"""Click options shared by the capture commands (``parity capture torch|onnx|genai``), defined once.

    @click.command("onnx")
    @click.argument("model")
    @capture_options
    def onnx_cmd(model, **kwargs):
        options = build_capture_options(kwargs)
"""
from __future__ import annotations

import click

from capture.policy import parse_size
from protocol import CAPTURE_MODES, COMPRESSIONS

#: the parameter names that ``capture_options`` adds (popped by ``build_capture_options``)
CAPTURE_OPTION_NAMES = ("inputs_path", "label", "output", "mode", "max_new_tokens", "reference", "rules",
                        "default_policy", "byte_budget", "compression", "check_perturbation", "max_samples", "run_id")


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_OPTIONS = [
    click.option("--inputs", "inputs_path", required=True, type=click.Path(dir_okay=False),
                 help="Input set file (from 'parity inputs')."),
    click.option("--label", required=True, help="Name of this capture, e.g. cpu-fp32."),
    click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
                 help="Dump to write (never replaced)."),
    click.option("--mode", type=click.Choice(CAPTURE_MODES), default="forward", show_default=True),
    click.option("--max-new-tokens", type=click.IntRange(min=0), default=0, help="Decode steps of the generate modes."),
    click.option("--reference", type=click.Path(dir_okay=False), default=None,
                 help="Reference dump whose generated tokens a teacher-forced capture feeds."),
    click.option("--policy", "rules", multiple=True, metavar="REGEX=ACTION",
                 help="Per-site rule (first match wins): full, stats, skip, slice:DIM:INDEX, topk:K. Repeatable."),
    click.option("--default-policy", type=click.Choice(["full", "stats"]), default="full", show_default=True,
                 help="What to keep of sites no rule matches."),
    click.option("--byte-budget", callback=_size, default=None,
                 help="Tensor bytes per dump before degrading to stats."),
    click.option("--compression", type=click.Choice(COMPRESSIONS), default="none", show_default=True),
    click.option("--check-perturbation", is_flag=True,
                 help="Also run without capture; record whether the final outputs are bit-identical."),
    click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Capture the first N samples only."),
    click.option("--run-id", default="", help="Run id recorded in the manifest."),
]


#: Where a torch model's modules go (capture/torch_loading.py ``parse_placement`` checks the values).
_PLACEMENT_OPTIONS = [
    click.option("--device-map", default=None, metavar="auto|balanced|sequential|FILE.json",
                 help="Spread the model over devices, host memory and disk while loading (accelerate); a JSON file "
                      "maps module paths to devices (0, cuda:1, cpu, disk). Instead of --device."),
    click.option("--max-memory", default=None, metavar="DEVICE=SIZE,...",
                 help="With --device-map: memory each device may take, e.g. 0=2GiB,cpu=4GiB (what does not fit "
                      "goes to disk)."),
    click.option("--offload-folder", type=click.Path(file_okay=False), default=None,
                 help="With --device-map: folder for weights offloaded to disk (needed for checkpoints that are "
                      "not safetensors)."),
]


def placement_options(func):
    """Add ``--device-map``, ``--max-memory`` and ``--offload-folder`` (torch models) to a click command."""
    for option in reversed(_PLACEMENT_OPTIONS):
        func = option(func)
    return func


def capture_options(func):
    """Add the shared capture options (see CAPTURE_OPTION_NAMES) to a click command."""
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def build_capture_options(params: dict):
    """Pop the shared options from a command's keyword arguments and build a CaptureOptions.

    Raises:
        click.BadParameter: an invalid policy rule.
    """
    from capture.base import CaptureOptions
    from capture.policy import RecordPolicy
    values = {name: params.pop(name) for name in CAPTURE_OPTION_NAMES}
    try:
        policy = RecordPolicy.from_strings(list(values["rules"]), values["default_policy"], values["byte_budget"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from None
    return CaptureOptions(label=values["label"], run_id=values["run_id"], mode=values["mode"],
                          max_new_tokens=values["max_new_tokens"], reference=values["reference"], policy=policy,
                          compression=values["compression"], check_perturbation=values["check_perturbation"],
                          max_samples=values["max_samples"]), values["inputs_path"], values["output"]


def parse_key_values(items, param_hint: str) -> dict:
    """``KEY=VALUE`` strings to a dict (click.BadParameter when one has no ``=``)."""
    result = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint=param_hint)
        result[key] = value
    return result
