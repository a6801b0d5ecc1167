"""``parity capture onnx MODEL.onnx --inputs IN.h5 --label L -o OUT.h5``: ONNX Runtime capture by output injection."""
from __future__ import annotations

import click

from .options import build_capture_options, capture_options, parse_key_values


def _split(values) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@click.command("onnx")
@click.argument("model")
@capture_options
@click.option("--ep", default="cpu", show_default=True,
              help="Execution provider: cpu, cuda, dml, tensorrt, rocm, coreml, openvino, qnn... or a full ORT name.")
@click.option("--provider-option", "provider_options", multiple=True, metavar="KEY=VALUE",
              help="Option for the execution provider, e.g. device_id=0. Repeatable.")
@click.option("--graph-optimization", type=click.Choice(["disable", "basic", "extended", "layout", "all"]),
              default="all", show_default=True, help="ORT graph optimization level (recorded in the manifest).")
@click.option("--op", "include_ops", multiple=True,
              help="Capture only outputs of these op types (comma list, repeatable).")
@click.option("--exclude-op", "exclude_ops", multiple=True, help="Leave out these op types (comma list, repeatable).")
@click.option("--name-regex", default=None, help="Capture only values whose value or node name matches this regex.")
@click.option("--outputs-only", is_flag=True, help="Record the graph outputs only (no injection).")
@click.option("--rename", "rename", multiple=True, metavar="OLD=NEW|@FILE",
              help="Rename module-path components, e.g. attn=self_attn; NEW '-' drops the mapping; @FILE reads one "
                   "rule a line. Repeatable.")
@click.option("--sites-like", "sites_like", type=click.Path(dir_okay=False), default=None,
              help="A dump (e.g. the PyTorch reference) whose site forms (:out, :out.0, :out.<field>) to follow.")
@click.option("--scratch-dir", type=click.Path(file_okay=False), default=None,
              help="Where the edited model copy is written (removed afterwards).")
def onnx_cmd(model, ep, provider_options, graph_optimization, include_ops, exclude_ops, name_regex, outputs_only,
             rename, sites_like, scratch_dir, **params):
    """Capture every intermediate value of ONNX model MODEL (a .onnx file, or a folder holding one) with ONNX
    Runtime, by adding node outputs as graph outputs in a scratch copy (the model file is never changed).

    Values are named by module path (from the exporter's scopes: dynamo metadata or /-scoped node names) so the
    dump pairs with a PyTorch dump of the same model; unmapped values keep their ONNX names. Exposing outputs can
    block ORT fusions: the manifest records how the tensors were captured. Prints one summary line.

    \b
    Example:
      parity inputs random model.onnx --dim batch=1 --dim sequence=128 --int-range input_ids=0:32000 -o inputs.h5
      parity capture onnx model.onnx --inputs inputs.h5 --label ort-cpu -o ort-cpu.h5 \\
          --ep cpu --sites-like torch-cpu.h5 --rename attn=self_attn
    """
    from capture.onnx_backend import OnnxBackend, run_capture
    options, inputs_path, output = build_capture_options(params)
    backend = OnnxBackend(model, ep=ep, provider_options=parse_key_values(provider_options, "--provider-option"),
                          graph_optimization=graph_optimization, include_ops=_split(include_ops),
                          exclude_ops=_split(exclude_ops), name_regex=name_regex, intermediates=not outputs_only,
                          rename=list(rename), reference=sites_like, scratch_dir=scratch_dir)
    click.echo(run_capture(backend, inputs_path, output, options).line())
