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
                        "policy_file", "default_policy", "byte_budget", "compression", "check_perturbation",
                        "max_samples", "run_id")


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
    click.option("--policy-file", type=click.Path(dir_okay=False), default=None, metavar="POLICY.json",
                 help="Record policy document ({rules, default, byte_budget}, e.g. from 'parity zoom'); --policy "
                      "rules are tried before its rules, --default-policy and --byte-budget override its own."),
    click.option("--default-policy", type=click.Choice(["full", "stats"]), default=None,
                 help="What to keep of sites no rule matches [default: the policy file's, else full]."),
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
        ParityError: a policy file that cannot be read or is not a policy document.
    """
    from capture.base import CaptureOptions
    from capture.policy import RecordPolicy
    values = {name: params.pop(name) for name in CAPTURE_OPTION_NAMES}
    base = read_policy_file(values["policy_file"]) if values["policy_file"] else RecordPolicy()
    try:
        cli_policy = RecordPolicy.from_strings(list(values["rules"]), values["default_policy"] or base.default,
                                               values["byte_budget"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from None
    # command-line rules first (first match wins), so a rule typed now can override the file for some sites
    policy = RecordPolicy(cli_policy.rules + base.rules, cli_policy.default,
                          cli_policy.byte_budget if cli_policy.byte_budget is not None else base.byte_budget)
    return CaptureOptions(label=values["label"], run_id=values["run_id"], mode=values["mode"],
                          max_new_tokens=values["max_new_tokens"], reference=values["reference"], policy=policy,
                          compression=values["compression"], check_perturbation=values["check_perturbation"],
                          max_samples=values["max_samples"]), values["inputs_path"], values["output"]


def read_policy_file(path: str):
    """The RecordPolicy of a policy document (``RecordPolicy.to_dict``'s JSON form, as ``parity zoom`` writes).

    Raises:
        ParityError: the file is missing, not JSON, or not a valid policy document.
    """
    import re

    from capture.policy import RecordPolicy, parse_action
    from protocol import read_json
    from protocol.errors import ParityError
    from protocol.jobs import validate_policy_document
    hint = "write it with 'parity zoom -o', or as {\"rules\": [{\"pattern\", \"action\"}], \"default\": \"stats\"}"
    doc = read_json(path, "policy file", error=ParityError, hint=hint, missing_hint="check the path")
    try:
        validate_policy_document(doc, path)  # the structure, as a job's policy is checked
        policy = RecordPolicy.from_dict(doc)
        parse_action(policy.default)
    except ParityError as exc:
        raise ParityError(f"invalid policy file ({exc.what})", path, hint) from None
    except (ValueError, re.error) as exc:
        raise ParityError(f"invalid policy file ({exc})", path, hint) from None
    return policy


def parse_key_values(items, param_hint: str) -> dict:
    """``KEY=VALUE`` strings to a dict (click.BadParameter when one has no ``=``)."""
    result = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint=param_hint)
        result[key] = value
    return result
