"""``parity capture torch MODEL --inputs INPUTS.h5 --label L -o OUT.h5``: per-module capture of a PyTorch model."""
from __future__ import annotations

import click

from .options import build_capture_options, capture_options, placement_options


@click.command("torch")
@click.argument("model")
@capture_options
@click.option("--device", default=None, help="Torch device for the whole model: cpu, cuda:0, mps, xpu:0... "
                                             "[default: cpu]")
@click.option("--dtype", default="float32", show_default=True, help="float32, float16 or bfloat16.")
@click.option("--attn-implementation", default=None, help="transformers attention implementation (eager, sdpa...).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model folder's own Python code to run.")
@click.option("--include", default=None, help="Hook only modules whose path matches this regex.")
@click.option("--exclude", default=None, help="Do not hook modules whose path matches this regex.")
@click.option("--max-depth", type=click.IntRange(min=0), default=None, help="Hook modules at most this deep.")
@placement_options
def torch_cmd(model, device, dtype, attn_implementation, trust_remote_code, include, exclude, max_depth, device_map,
              max_memory, offload_folder, **params):
    """Capture the inputs and outputs of every module of MODEL (a Hugging Face folder or hub id) over an input
    set, with forward hooks, into a dump.

    Keys are s<sample>/t<step>/<module path>:in|out[.<arg>]#<call> and are the same on every device and dtype,
    so dumps pair one to one. --mode generate decodes greedily (step 0 is the prefill); teacher-forced feeds the
    tokens of --reference. A model too big for one device loads with --device-map (one checkpoint shard at a time;
    what --max-memory leaves out is offloaded to host memory or disk and brought in per module): each module is
    captured where it runs, under the same keys as a one-device capture. Prints one summary line.

    \b
    Example:
      parity inputs text MODEL_DIR --text-file corpus.txt -n 1024 -o inputs.h5
      parity capture torch MODEL_DIR --inputs inputs.h5 --label cpu-fp32 -o cpu-fp32.h5 \\
          --policy 'layers\\.\\d+\\.mlp=stats' --check-perturbation
      parity capture torch MODEL_DIR --inputs inputs.h5 --label offload -o offload.h5 \\
          --device-map auto --max-memory 0=2GiB,cpu=4GiB --offload-folder /tmp/offload
    """
    import os

    from capture.torch_backend import capture_torch_model
    from capture.torch_hooks import ModuleSelection
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:  # torchrun's: every rank would run the whole model and write one -o
        raise click.UsageError(
            f"parity capture torch runs one process with the whole model, and WORLD_SIZE is {world} (torchrun?): "
            "every rank would write the same output. Capture tensor-parallel ranks from your own script with "
            "TorchBackend(model).capture(..., f'cand.rank{rank}.h5', ...) (README, 'Sharded models'), or give "
            "--device-map to spread one model over devices")
    options, inputs_path, output = build_capture_options(params)
    try:
        selection = ModuleSelection(include=include, exclude=exclude, max_depth=max_depth)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--include/--exclude") from None
    summary = capture_torch_model(model, inputs_path, output, options, device=device, dtype=dtype,
                                  attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
                                  selection=selection, device_map=device_map, max_memory=max_memory,
                                  offload_folder=offload_folder)
    click.echo(summary.line())
