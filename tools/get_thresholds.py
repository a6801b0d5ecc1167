#!/usr/bin/env python3
"""Thresholds from the metric CSVs of generate_layers_metrics.py, with the command line of aiu-fms-testing-utils'
get_thresholds.py, written as a thresholds file that ``parity compare --thresholds`` applies.

    python tools/get_thresholds.py --models ./llama --metrics abs_diff cos_sim --file_base /tmp/output --layer_io

With --layer_io: one line per layer, ``Layer <name> avg <metric> = <value>``, and limits per layer site
(max_abs_diff from abs_diff, cos_rows_min from cos_sim; see workflows/layer_thresholds.py). Without it: the 99th
percentile of each metric over all files. Writes <output_path>/<model id>-thresholds.json. Exit codes: 0 done,
2 usage, 3 unusable input.
"""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    """The tool's argument parser."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Example:\n  python tools/get_thresholds.py --models ./tiny-llama --metrics "
                                       "abs_diff cos_sim --file_base layers --layer_io",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="Models as given to generate_layers_metrics.py.")
    p.add_argument("--metrics", nargs="+", required=True, help="abs_diff cos_sim (layers), or ce diff_mean.")
    p.add_argument("--file_base", required=True, help="Folder of the metric CSVs.")
    p.add_argument("--layer_io", action="store_true", help="Per-layer mode (the CSVs of generate_layers_metrics).")
    p.add_argument("--output_path", default=None, help="Folder of the thresholds JSON [--file_base].")
    p.add_argument("--margin", type=float, default=1.5, help="Multiplies the baseline error [1.5].")
    return p


def main(argv=None) -> int:
    """Parse, run workflows.layer_thresholds.get_thresholds, write one thresholds file per model."""
    args = build_parser().parse_args(argv)
    from analyze.thresholds import write_thresholds
    from protocol import ParityError
    from workflows.layer_thresholds import get_thresholds
    try:
        docs = get_thresholds(args.models, args.metrics, args.file_base, layer_io=args.layer_io,
                              margin=args.margin, echo=lambda line: print(line, flush=True))
        out_dir = args.output_path or args.file_base
        os.makedirs(out_dir, exist_ok=True)
        for mid, doc in docs.items():
            path = os.path.join(out_dir, f"{mid}-thresholds.json")
            write_thresholds(doc, path)
            print(f"thresholds: {path}")
    except ParityError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
