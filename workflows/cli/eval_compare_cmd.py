"""``parity eval-compare MODEL.onnx --hf HF_DIR``: an ONNX model against its Hugging Face model on random inputs,
per output, 5 metrics x 4 statistics (workflows.eval_compare)."""
from __future__ import annotations

import json

import click


def _pairs(kind):
    def parse(ctx, param, values):
        out = {}
        for item in values:
            name, sep, value = item.partition("=")
            try:
                if kind is tuple:
                    lo, sep2, hi = value.partition(":")
                    if not sep2:
                        raise ValueError
                    out[name] = (int(lo), int(hi))
                else:
                    out[name] = int(value)
            except ValueError:
                sep = ""
            if not sep or not name:
                example = "input_ids=0:32000" if kind is tuple else "sequence=128"
                raise click.BadParameter(f"{item!r}: write e.g. {example}")
        return out
    return parse


@click.command("eval-compare")
@click.argument("model", type=click.Path())
@click.option("--hf", "hf_dir", required=True, type=click.Path(file_okay=False),
              help="The Hugging Face model folder the ONNX model was exported from (the reference, cpu float32).")
@click.option("--samples", type=click.IntRange(min=1), default=100, show_default=True, help="Random input samples.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "int4"]), default="fp32",
              show_default=True, help="The ONNX model's precision (recorded; the reference is always fp32).")
@click.option("--dim", "dims", multiple=True, callback=_pairs(int), metavar="NAME=SIZE",
              help="Size of a named dynamic dim (default: 1 for batch dims, --sequence-length for the others).")
@click.option("--sequence-length", type=click.IntRange(min=1), default=32, show_default=True,
              help="Size of the named non-batch dims not given with --dim.")
@click.option("--int-range", "int_ranges", multiple=True, callback=_pairs(tuple), metavar="INPUT=LO:HI",
              help="Integer input values in [LO, HI) (default: input_ids below the vocabulary, masks of ones).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i is drawn from (seed, i).")
@click.option("--ep", default="cpu", show_default=True, help="ONNX Runtime execution provider of MODEL.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the JSON results here.")
@click.option("--keep", "keep_dir", type=click.Path(file_okay=False), default=None,
              help="Keep the input set and both dumps in this folder.")
def eval_compare_cmd(model, hf_dir, samples, precision, dims, sequence_length, int_ranges, seed, ep, output,
                     keep_dir) -> None:
    """Compare ONNX model MODEL with its Hugging Face model (HF_DIR, run on CPU in float32 as the reference) on
    random inputs drawn from MODEL's input spec: per output, SQNR, PSNR, cosine, MSE and max-abs-diff, each with
    mean/std/min/max across samples (20 keys per output). Outputs are paired by name on their intersection (a
    warning lists the others); composite models (encoder + decoder, pipelines) are refused: compare each component.

    \b
    Example:
      parity eval-compare model.onnx --hf ./tiny-llama --samples 100 --precision fp32 -o eval.json
    """
    from protocol import atomic_write_json
    from workflows.eval_compare import eval_compare, result_lines

    result = eval_compare(model, hf_dir, samples=samples, precision=precision, dims=dims, int_ranges=int_ranges,
                          sequence_length=sequence_length, seed=seed, ep=ep, work_dir=keep_dir)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    for line in result_lines(result):
        click.echo(line)
    if output:
        atomic_write_json(output, result.to_dict())
        click.echo(f"results: {output}")
    else:
        click.echo(json.dumps(result.outputs, indent=2))
