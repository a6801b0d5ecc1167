#!/usr/bin/env python3
"""KL divergence between a Hugging Face model and ORT GenAI builds of it on several execution providers, with the
command line of the Model-Optimizer KL toolkit.

    python tools/compute_kl_divergence.py --hf_model ./llama \\
        --ep cuda --path ./llama-int4-cuda --python /envs/cuda/bin/python \\
        --ep directml --path ./llama-int4-dml --python /envs/dml/bin/python \\
        --output results.json

The corpus (Wikitext-2 test through ``datasets``, or ``--text-file``) is tokenized once; every model consumes the
same 1024-token chunks (fewer when a model's context is shorter: config.json max_position_embeddings,
genai_config.json context_length). Each GenAI capture runs in its own subprocess of the ``--python`` given after its ``--ep``
(default: this interpreter); nothing is installed during a run. Without ``--hf_model`` the GenAI models are compared
among themselves. The JSON is what ``parity kl`` writes: ``kl_divergences`` {pair: {total, average, tokens}} with
the true KL (and the toolkit's quantity under ``kl_abs_variant``). Exit codes: 0 done, 2 usage, 3 unusable input.
"""
from __future__ import annotations

import argparse
import logging
import sys


class _ModelArg(argparse.Action):
    """``--ep`` opens a model entry; ``--path`` and ``--python`` fill the latest one (order is what pairs them)."""

    def __call__(self, parser, namespace, value, option_string=None):
        entries = getattr(namespace, "entries", None) or []
        if option_string == "--ep":
            entries.append({"ep": value, "path": None, "python": None})
        else:
            if not entries:
                parser.error(f"{option_string} must follow an --ep")
            key = option_string.lstrip("-")
            if entries[-1][key] is not None:
                parser.error(f"two {option_string} values for one --ep {entries[-1]['ep']}; repeat --ep")
            entries[-1][key] = value
        namespace.entries = entries


def build_parser() -> argparse.ArgumentParser:
    """The tool's argument parser (the KL toolkit's flags, plus --text-file, --python, --chunk-tokens, --max-chunks)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Example:\n  python "
                                "tools/compute_kl_divergence.py --hf_model ./tiny-llama --ep cpu --path ./tiny-fp32 "
                                "--ep cpu --path ./tiny-int4 --text-file corpus.txt --output kl.json",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf_model", default=None, help="Hugging Face reference model folder (optional).")
    p.add_argument("--ep", choices=("cuda", "directml", "cpu"), action=_ModelArg,
                   help="Execution provider of the next --path (repeatable, one per model).")
    p.add_argument("--path", action=_ModelArg, help="ORT GenAI model folder for the preceding --ep.")
    p.add_argument("--python", action=_ModelArg,
                   help="Interpreter that holds the preceding --ep's onnxruntime-genai package (default: this one).")
    p.add_argument("--output", default="results.json", help="JSON results file [results.json].")
    p.add_argument("--device", default="cpu", help="Torch device of the Hugging Face model [cpu].")
    p.add_argument("--dtype", default="float32", help="Torch dtype of the Hugging Face model [float32].")
    p.add_argument("--text-file", "--text_file", dest="text_file", default=None,
                   help="UTF-8 corpus to use instead of Wikitext-2 test.")
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="Tokens per disjoint chunk [1024, or the smallest context of the models when shorter].")
    p.add_argument("--max-chunks", type=int, default=None, help="Use the first N chunks only.")
    p.add_argument("--keep_logits", action="store_true",
                   help="Keep the input set and the logits dumps in <output stem>_dumps/.")
    p.add_argument("--debug", action="store_true", help="Full detail: every capture's own output and debug logs.")
    return p


def main(argv=None) -> int:
    """Parse, run workflows.kl_across_backends.compute_kl_divergence, print one line per pair."""
    args = build_parser().parse_args(argv)
    entries = getattr(args, "entries", None) or []
    for e in entries:
        if not e["path"]:
            build_parser().error(f"--ep {e['ep']} has no --path")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from protocol import ParityError
    from workflows.context_lengths import ChunkTooLongError
    from workflows.kl_across_backends import (
        KlRunOptions, chunk_tokens_for, compute_kl_divergence, summary_lines, unique_labels,
    )
    from workflows.runs import ModelSpec
    labels = unique_labels([e["ep"] for e in entries])
    models = [ModelSpec("genai", e["path"], label, ep=e["ep"], python=e["python"])
              for e, label in zip(entries, labels)]
    opts = KlRunOptions(hf_model=args.hf_model, models=models, output=args.output, device=args.device,
                        dtype=args.dtype, text_file=args.text_file, chunk_tokens=args.chunk_tokens,
                        max_chunks=args.max_chunks, keep_logits=args.keep_logits, debug=args.debug,
                        echo=lambda line: print(line, flush=True))
    try:
        opts.chunk_tokens, _, note = chunk_tokens_for(opts)
    except ChunkTooLongError as exc:
        build_parser().error(str(exc))
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    try:
        doc = compute_kl_divergence(opts)
    except ParityError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    for line in summary_lines(doc):
        print(line)
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
