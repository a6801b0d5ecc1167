#!/usr/bin/env python3
"""Perplexity of a Hugging Face model and of an ONNX / ORT GenAI model on exactly the same token ids, side by side
with the ratio and its uncertainty.

    python tools/calculate_perplexity.py --hf_model ./llama --model ./llama-int4 --max_length 1024 --stride 512

The corpus (Wikitext-2 test through ``datasets``, or ``--text-file``) is tokenized once with the Hugging Face
tokenizer into strided windows (each token scored once, Hugging Face's fixed-length perplexity rule); both models
consume that one input set, so their perplexities differ only by the models. Exit codes: 0 done, 2 usage, 3
unusable input.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The tool's argument parser."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Example:\n  python "
                                "tools/calculate_perplexity.py --hf_model ./tiny-llama --model ./tiny-fp32 "
                                "--text-file corpus.txt --max_length 256 --stride 128 --max-samples 4",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf_model", required=True, help="Hugging Face model folder (the reference and the tokenizer).")
    p.add_argument("--model", required=True, help="ORT GenAI model folder, or an .onnx file with a 'logits' output.")
    p.add_argument("--max_length", "--max-length", dest="max_length", type=int, default=None,
                   help="Window length in tokens [1024, or the smaller context of the two models when shorter].")
    p.add_argument("--stride", type=int, default=None,
                   help="Stride between windows [half the window]; 0 for disjoint chunks.")
    p.add_argument("--text-file", "--text_file", dest="text_file", default=None,
                   help="UTF-8 corpus to use instead of Wikitext-2 test.")
    p.add_argument("--max-samples", type=int, default=None, help="Use the first N windows only.")
    p.add_argument("--device", default="cpu", help="Torch device of the Hugging Face model [cpu].")
    p.add_argument("--dtype", default="float32", help="Torch dtype of the Hugging Face model [float32].")
    p.add_argument("--ep", default="cpu", help="ONNX Runtime execution provider of an .onnx model [cpu].")
    p.add_argument("--python", default=None, help="Capture --model in a subprocess of this interpreter.")
    p.add_argument("--output", default=None, help="Write the comparison as JSON here.")
    p.add_argument("--keep", default=None, help="Keep the input set and both dumps in this folder.")
    return p


def main(argv=None) -> int:
    """Parse, run workflows.perplexity_side_by_side.compare_perplexity, print the side-by-side table."""
    args = build_parser().parse_args(argv)
    from protocol import ParityError
    from workflows.context_lengths import ChunkTooLongError
    from workflows.perplexity_side_by_side import (
        comparison_lines, compare_perplexity, perplexity_window, write_comparison,
    )
    try:
        window, note = perplexity_window(args.hf_model, args.model, args.max_length)
    except ChunkTooLongError as exc:
        build_parser().error(str(exc))
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    stride = window // 2 if args.stride is None else args.stride
    if stride > window:
        build_parser().error(f"--stride {stride} is more than the window ({window} tokens): every token must be "
                             f"scored once")
    try:
        result = compare_perplexity(args.hf_model, args.model, text_file=args.text_file, max_length=window,
                                    stride=stride or None, max_samples=args.max_samples, device=args.device,
                                    dtype=args.dtype, ep=args.ep, python=args.python, work_dir=args.keep,
                                    echo=lambda line: print(line, file=sys.stderr, flush=True))
    except ParityError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    for line in comparison_lines(result):
        print(line)
    if args.output:
        write_comparison(result, args.output)
        print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
