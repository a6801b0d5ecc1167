"""``parity submit ROOT``: write a capture job into a shared folder."""
from __future__ import annotations

import datetime as _dt
import os
import uuid

import click

from protocol import CAPTURE_MODES, JobError
from protocol.jobs import BACKENDS, TARGET_KEYS


def _inside_root(root: str, path: str, what: str) -> str:
    """``path`` (as given, or relative to ROOT) as a path relative to ROOT; it must lie inside ROOT."""
    root_real = os.path.realpath(root)
    for candidate in (path, os.path.join(root, path)):
        if os.path.exists(candidate):
            full = os.path.realpath(candidate)
            if os.path.commonpath([root_real, full]) != root_real:
                raise JobError(f"{what} is outside the shared folder", path,
                               f"agents on other hosts see only the shared folder: copy it under {root}")
            return os.path.relpath(full, root_real)
    raise JobError(f"{what} not found", path)


def _parse_targets(items: tuple[str, ...]) -> dict:
    targets: dict = {}
    for item in items:
        label, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or key not in TARGET_KEYS:
            raise click.BadParameter(f"{item!r}: write LABEL:KEY=VALUE with KEY one of {', '.join(TARGET_KEYS)}",
                                     param_hint="--target")
        targets.setdefault(label, {})[key] = {"path": value} if key == "model" else value
    return targets


@click.command("submit")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--model", "model_path", default=None, help="Model folder or file inside ROOT.")
@click.option("--model-id", default=None, help="A hub model id instead of --model (the agents must reach it).")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True)
@click.option("--inputs", "inputs_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The input set (written by 'parity inputs'); copied into ROOT/inputs/<sha256>.h5.")
@click.option("--label", "labels", multiple=True, required=True, help="A label to capture (repeat).")
@click.option("--reference", required=True, help="The label every other label is compared with.")
@click.option("--run-id", default=None, help="The run's id [default: the time and a random suffix].")
@click.option("--mode", type=click.Choice(CAPTURE_MODES), default="forward", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--policy", "rules", multiple=True, help="Record policy rule PATTERN=ACTION (repeat).")
@click.option("--default-action", default=None,
              help="Action for sites no rule matches [default: stats with --zoom, else full].")
@click.option("--byte-budget", default=None, help="Bytes of tensor data per dump, e.g. 512MB.")
@click.option("--target", "targets", multiple=True,
              help="Per-label override LABEL:KEY=VALUE, e.g. gpu:device=cuda:0 (repeat).")
@click.option("--thresholds", default=None, help="A thresholds file inside ROOT, used for this run's reports.")
@click.option("--zoom", type=click.IntRange(min=0), default=None, metavar="WINDOW",
              help="Two-pass capture: this run is pass 1 (statistics everywhere unless --default-action says "
                   "otherwise); after a divergent "
                   "report the watcher submits pass 2, RUN.zoom, with the 'parity zoom --window WINDOW' policy.")
def submit_cmd(root, model_path, model_id, backend, inputs_path, labels, reference, run_id, mode, max_new_tokens,
               rules, default_action, byte_budget, targets, thresholds, zoom):
    """Write a capture job into shared folder ROOT; the agents of its labels capture it, the watcher compares.

    The job is validated first (model and thresholds inside ROOT, labels, policy) and written atomically as
    ROOT/jobs/<run-id>.json. Its path is printed.

    \b
    Example:
      parity submit /mnt/parity --model models/tiny-llama --inputs prompts.h5 \\
          --label cpu-fp32 --label cpu-bf16 --reference cpu-fp32
      parity submit /mnt/parity --model models/tiny-llama --inputs prompts.h5 \\
          --label cpu-fp32 --label cpu-bf16 --reference cpu-fp32 --zoom 3
    """
    from capture.agent import submit_job
    from capture.policy import RecordPolicy, parse_size
    from protocol.jobs import Job

    if (model_path is None) == (model_id is None):
        raise click.UsageError("give exactly one of --model and --model-id")
    if default_action is None:  # pass 1 of a two-pass capture keeps statistics: the point is not to write tensors
        default_action = "stats" if zoom is not None else "full"
    try:
        policy = RecordPolicy.from_strings(list(rules), default_action,
                                           parse_size(byte_budget) if byte_budget else None)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy/--default-action/--byte-budget") from None
    os.makedirs(root, exist_ok=True)
    model = {"path": _inside_root(root, model_path, "model")} if model_path else {"id": model_id}
    for target in (t := _parse_targets(targets)).values():
        if "model" in target:
            target["model"] = {"path": _inside_root(root, target["model"]["path"], "target model")}
    run_id = run_id or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    job = Job(run_id=run_id, model=model, backend=backend, inputs="0" * 64, labels=list(labels),
              reference=reference, mode=mode, max_new_tokens=max_new_tokens, policy=policy.to_dict(), targets=t,
              thresholds=_inside_root(root, thresholds, "thresholds file") if thresholds else None, zoom=zoom)
    click.echo(submit_job(root, job, inputs_path))
