#!/usr/bin/env python3
"""Per-layer metrics of a model on a reference device/dtype against a candidate device/dtype, with the environment
variables and files of aiu-fms-testing-utils' generate_layers_metrics.py.

    MODEL_PATHS=./llama BATCH_SIZES=1,2 SEQ_LENGTHS=64 MAX_NEW_TOKENS=8 OUTPUT_PATH=/tmp/output \\
        python tools/generate_layers_metrics.py --mode model-forward --candidate-dtype float16

MODEL_PATHS, BATCH_SIZES, SEQ_LENGTHS, MAX_NEW_TOKENS and OUTPUT_PATH take a single value or comma-separated values
(the flags --models, --batch_sizes, --seq_lengths, --max_new_tokens, --output_path override them). For every
combination both captures run, and OUTPUT_PATH receives <prefix>--<layer>.abs_diff.csv and .cos_sim.csv per layer,
the two dumps and <prefix>.report.json (see workflows/layer_metrics.py). Exit codes: 0 done, 2 usage, 3 unusable
input.
"""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    """The tool's argument parser (flags override the environment variables)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Example:\n  MODEL_PATHS=./tiny-llama "
                                "SEQ_LENGTHS=16 OUTPUT_PATH=layers python tools/generate_layers_metrics.py --mode "
                                "model-forward --candidate-dtype bfloat16 --text-file corpus.txt",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("generate", "model-forward"), required=True,
                   help="generate: greedy decoding of MAX_NEW_TOKENS steps; model-forward: one forward.")
    p.add_argument("--models", nargs="+", default=None, help="Model folders or ids [MODEL_PATHS].")
    p.add_argument("--batch_sizes", nargs="+", default=None, help="Batch sizes [BATCH_SIZES, default 1].")
    p.add_argument("--seq_lengths", nargs="+", default=None, help="Sequence lengths [SEQ_LENGTHS, default 64].")
    p.add_argument("--max_new_tokens", nargs="+", default=None, help="Decode steps [MAX_NEW_TOKENS, default 128].")
    p.add_argument("--output_path", default=None, help="Output folder [OUTPUT_PATH, default /tmp/output].")
    p.add_argument("--reference-device", default="cpu", help="Reference torch device [cpu].")
    p.add_argument("--reference-dtype", default="float32", help="Reference dtype [float32].")
    p.add_argument("--candidate-device", default=None, help="Candidate torch device [cuda when available, else cpu].")
    p.add_argument("--candidate-dtype", default="float16", help="Candidate dtype [float16].")
    p.add_argument("--text-file", default=None, help="Text for the prompts [Wikitext-2 test through datasets].")
    return p


def main(argv=None) -> int:
    """Parse, run workflows.layer_metrics.generate_layers_metrics, print one line per combination."""
    args = build_parser().parse_args(argv)
    from protocol import ParityError
    from workflows.layer_metrics import LayerMetricsOptions, generate_layers_metrics, parse_list
    env = os.environ
    models = parse_list(args.models or env.get("MODEL_PATHS"))
    if not models:
        build_parser().error("set MODEL_PATHS or pass --models")
    try:
        batch = parse_list(args.batch_sizes or env.get("BATCH_SIZES") or "1", int)
        seq = parse_list(args.seq_lengths or env.get("SEQ_LENGTHS") or "64", int)
        new = parse_list(args.max_new_tokens or env.get("MAX_NEW_TOKENS") or "128", int)
    except ValueError as exc:
        build_parser().error(f"sizes must be integers ({exc})")
    device = args.candidate_device
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    opts = LayerMetricsOptions(models=models, batch_sizes=batch, seq_lengths=seq, max_new_tokens=new,
                               output_path=args.output_path or env.get("OUTPUT_PATH") or "/tmp/output",
                               mode=args.mode, reference_device=args.reference_device,
                               reference_dtype=args.reference_dtype, candidate_device=device,
                               candidate_dtype=args.candidate_dtype, text_file=args.text_file,
                               echo=lambda line: print(line, flush=True))
    try:
        results = generate_layers_metrics(opts)
    except ParityError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(f"{sum(r['layers'] for r in results)} layer series in {len(results)} combination(s) written to "
          f"{opts.output_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
