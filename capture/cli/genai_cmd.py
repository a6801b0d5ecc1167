"""``parity capture genai MODEL_DIR --inputs INPUTS.h5 --label L -o OUT.h5``: ORT GenAI logits (and intermediates)."""
from __future__ import annotations

import click

from .options import build_capture_options, capture_options


@click.command("genai")
@click.argument("model_dir", type=click.Path(file_okay=False))
@capture_options
@click.option("--intermediates", is_flag=True,
              help="Also capture intermediate values (outputs injected into a scratch copy of the folder).")
@click.option("--op", "include_ops", multiple=True, help="With --intermediates: only these op types (repeatable).")
@click.option("--name-regex", default=None, help="With --intermediates: only values whose name matches this regex.")
@click.option("--rename", "rename", multiple=True, metavar="OLD=NEW|@FILE",
              help="Module-path rename rules (default: the GenAI builder's names to Hugging Face names, e.g. "
                   "attn=self_attn). Repeatable.")
@click.option("--sites-like", "sites_like", type=click.Path(dir_okay=False), default=None,
              help="A dump (e.g. the PyTorch reference) whose site forms to follow.")
def genai_cmd(model_dir, intermediates, include_ops, name_regex, rename, sites_like, **params):
    """Capture the logits of every prompt position of an ORT GenAI model folder MODEL_DIR through the generator
    API (falling back to one token at a time for builds that return only the last position), in forward,
    generate or teacher-forced mode. Token ids come from the input set only. The execution provider is the one
    of the installed onnxruntime-genai package and the folder's genai_config.json (recorded).

    \b
    Example:
      parity capture genai llama-int4/ --inputs inputs.h5 --label genai-int4 -o genai-int4.h5 \\
          --intermediates --sites-like torch-cpu.h5
    """
    from capture.genai_backend import GenaiBackend
    from capture.onnx_backend import run_capture
    options, inputs_path, output = build_capture_options(params)
    ops = [v.strip() for item in include_ops for v in item.split(",") if v.strip()]
    backend = GenaiBackend(model_dir, intermediates=intermediates, include_ops=ops, name_regex=name_regex,
                           rename=list(rename) or None, reference_sites=sites_like)
    click.echo(run_capture(backend, inputs_path, output, options).line())
