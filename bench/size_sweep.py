"""Analysis throughput and capture overhead against tensor size, and the plot of both (bench/plots/*.png).

Analysis (P3 per size): dump pairs of ``--pair-mb`` MiB per side made of float32 records of 0.25 to 64 MiB each;
per size, ``analyze.compare`` against the plain numpy implementation and Polygraphy's comparator (the baselines of
bench.compare_throughput), and plain h5py reading the same pair without computing anything (the ceiling: no
analysis can be faster than reading its input). GB/s counts both sides' bytes.

Capture (P1, P2 per size): the random Llama of bench.capture_overhead (hidden 512, ``--layers``) at sequence lengths
64-1024, so that each record holds 128 KiB to 5.5 MiB: statistics-only and full capture against the bare forward,
and the full capture's extra time against plain h5py writing the same bytes.

The plot: bench/plots/size_sweep.png (two panels). Figures go to results.jsonl like every benchmark's.

Run: ``python -m bench size_sweep`` or ``python -m bench.size_sweep --pair-mb 64 --seqs 64,256``.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time

import numpy as np

from bench import record

BENCH = "size_sweep"
PLOTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plots")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _h5_read(paths: list[str]) -> None:
    import h5py
    for path in paths:
        with h5py.File(path, "r") as f:
            for name in f["data"]:
                f["data"][name][()]


def analysis_sweep(sizes_mb: list[float], pair_mb: int, repeat: int, folder: str | None) -> list[dict]:
    """Throughput (GB/s of paired data) of ours, plain numpy, Polygraphy and a bare h5py read, per record size."""
    import analyze
    from bench.compare_throughput import plain_numpy, polygraphy_compare, write_pair
    rows = []
    for size in sizes_mb:
        work = tempfile.mkdtemp(prefix="bench-sweep-", dir=folder)
        try:
            records = max(int(round(pair_mb / size)), 1)
            ref, cand, nbytes = write_pair(work, int(round(size * records)), records)
            gb = nbytes / 1e9
            analyze.compare(ref, cand)  # page cache and imports
            t = {"ours": math.inf, "plain": math.inf, "polygraphy": math.inf, "read": math.inf}
            for _ in range(repeat):
                t["read"] = min(t["read"], _timed(lambda: _h5_read([ref, cand])))
                t["ours"] = min(t["ours"], _timed(lambda: analyze.compare(ref, cand)))
                t["plain"] = min(t["plain"], _timed(lambda: plain_numpy(ref, cand)))
                poly = polygraphy_compare(ref, cand)
                t["polygraphy"] = min(t["polygraphy"], poly if poly is not None else math.inf)
            extra = {"record_mb": size, "records": records, "pair_bytes": nbytes}
            row = {"record_mb": size}
            for name, secs in t.items():
                if math.isfinite(secs):
                    row[name] = gb / secs
                    record(BENCH, f"analysis_{name}_{size:g}MiB", gb / secs, "GB/s",
                           baseline=None if name == "ours" else gb / t["ours"],
                           ratio=None if name == "ours" else secs / t["ours"], extra=extra)
            rows.append(row)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def capture_sweep(seqs: list[int], layers: int, repeat: int, folder: str | None) -> list[dict]:
    """P1 and P2 ratios per sequence length (record size) of the capture_overhead model."""
    import torch

    from bench.capture_overhead import _bare, _captured, build_model
    from bench.protocol_io import raw_write
    from protocol import open_dump
    hidden, vocab = 512, 4096
    model = build_model(layers, hidden, vocab)
    rows = []
    for seq in seqs:
        work = tempfile.mkdtemp(prefix="bench-sweep-cap-", dir=folder)
        try:
            ids = torch.randint(4, vocab, (1, seq), generator=torch.Generator().manual_seed(0))
            feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
            _bare(model, feed)
            bare = stats = full = math.inf
            nbytes = 0
            for i in range(repeat):
                bare = min(bare, _bare(model, feed))
                stats = min(stats, _captured(model, feed, os.path.join(work, f"s{i}.h5"), "stats")[0])
                path = os.path.join(work, f"f{i}.h5")
                secs, _, nbytes = _captured(model, feed, path, "full")
                full = min(full, secs)
            with open_dump(path) as dump:
                arrays = [np.ascontiguousarray(dump.read(r, raw=True)) for r in dump.records() if r.has_data]
            raw_path = os.path.join(work, "raw.h5")
            raw = math.inf
            for _ in range(repeat):
                if os.path.exists(raw_path):
                    os.unlink(raw_path)
                raw = min(raw, raw_write(raw_path, arrays, "none"))
            record_mb = seq * hidden * 4 / 2**20
            extra = {"seq": seq, "layers": layers, "hidden": hidden, "record_mb": record_mb, "bytes": nbytes,
                     "threads": torch.get_num_threads()}
            p1, p2 = stats / bare, (full - bare) / raw
            record(BENCH, f"capture_P1_seq{seq}", stats, "s", baseline=bare, ratio=p1, target="<=1.3", extra=extra)
            record(BENCH, f"capture_P2_seq{seq}", full - bare, "s", baseline=raw, ratio=p2, target="<=1.4",
                   extra=extra)
            rows.append({"seq": seq, "record_mb": record_mb, "p1": p1, "p2": p2, "full_over_bare": full / bare})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def _plain_ticks(ax) -> None:
    from matplotlib.ticker import FuncFormatter
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def plot(analysis: list[dict], capture: list[dict], path: str, note: str) -> str:
    """Draw both panels into ``path`` (PNG); returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    styles = {"read": ("h5py read only (ceiling)", "k", ":"), "ours": ("tensorparity: all 13 metrics", "C0", "-"),
              "plain": ("plain numpy, metric by metric", "C1", "--"),
              "polygraphy": ("Polygraphy CompareFunc.simple", "C2", "-.")}
    for key, (label, color, ls) in styles.items():
        pts = [(r["record_mb"], r[key]) for r in analysis if key in r]
        if pts:
            left.plot(*zip(*pts), marker="o", color=color, linestyle=ls, label=label)
    left.axhline(1.0, color="C3", linewidth=1, label="P3 target 1 GB/s")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    _plain_ticks(left)
    left.set_xlabel("record size (MiB, float32, each side)")
    left.set_ylabel("GB/s of paired data (both dumps)")
    left.set_title("Analysis throughput, dump pair read from disk")
    left.legend(fontsize=8)
    left.grid(True, which="both", alpha=0.3)
    if capture:
        x = [r["record_mb"] for r in capture]
        right.plot(x, [r["p1"] for r in capture], marker="o", color="C0", label="P1: statistics-only / bare forward")
        right.plot(x, [r["p2"] for r in capture], marker="s", color="C1",
                   label="P2: (full capture - bare) / raw h5py write")
        right.plot(x, [r["full_over_bare"] for r in capture], marker="^", color="C2", linestyle="--",
                   label="full capture / bare forward")
        for seq_row in capture:
            right.annotate(f"seq {seq_row['seq']}", (seq_row["record_mb"], seq_row["p1"]), fontsize=7,
                           textcoords="offset points", xytext=(0, -12), ha="center")
        right.axhline(1.3, color="C0", linewidth=1, linestyle=":", label="P1 target 1.3")
        right.axhline(1.4, color="C1", linewidth=1, linestyle=":", label="P2 target 1.4")
        right.set_xscale("log", base=2)
        right.set_ylim(bottom=0)
        _plain_ticks(right)
    right.set_xlabel("activation record size (MiB; hidden 512, float32)")
    right.set_ylabel("ratio (lower is better)")
    right.set_title("Capture overhead, CPU forward of a random Llama")
    right.legend(fontsize=8, loc="upper right")
    right.grid(True, which="both", alpha=0.3)
    fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _last_sweep() -> tuple[list[dict], list[dict], str]:
    """The rows of the last size_sweep run recorded in results.jsonl (by date), for ``--replot``."""
    import json

    from bench import RESULTS
    docs = [d for d in map(json.loads, open(RESULTS, encoding="utf-8")) if d["bench"] == BENCH]
    if not docs:
        raise SystemExit(f"no {BENCH} figures in {RESULTS}: run the sweep first")
    last = max(d["date"] for d in docs)[:15]  # same run: same date to the 10 minutes
    docs = [d for d in docs if d["date"][:15] == last]
    analysis: dict[float, dict] = {}
    capture: dict[int, dict] = {}
    for d in docs:
        if d["figure"].startswith("analysis_"):
            name = d["figure"].split("_")[1]
            analysis.setdefault(d["record_mb"], {"record_mb": d["record_mb"]})[name] = d["value"]
        else:
            row = capture.setdefault(d["seq"], {"seq": d["seq"], "record_mb": d["record_mb"]})
            row["p1" if "_P1_" in d["figure"] else "p2"] = d["ratio"]
            if "_P1_" in d["figure"]:
                row["stats_s"], row["bare_s"] = d["value"], d["baseline"]
            else:
                row["extra_s"] = d["value"]
    for row in capture.values():
        row["full_over_bare"] = (row["extra_s"] + row["bare_s"]) / row["bare_s"]
    m = docs[0]["machine"]
    note = (f"{m['cpu']}, {m['cpu_count']} cores; load average {docs[0]['load_at_start'][0]:.1f} at start; "
            f"{docs[0]['date'][:16]} UTC; git {docs[0]['git']}")
    return sorted(analysis.values(), key=lambda r: r["record_mb"]), sorted(capture.values(), key=lambda r: r["seq"]), note


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m bench`` (no arguments: environment defaults) and direct runs."""
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=env("BENCH_SWEEP_SIZES", "0.25,1,4,16,64"), help="record sizes, MiB")
    p.add_argument("--pair-mb", type=int, default=int(env("BENCH_SWEEP_PAIR_MB", 128)), help="MiB per side")
    p.add_argument("--seqs", default=env("BENCH_SWEEP_SEQS", "64,128,256,512,1024"))
    p.add_argument("--layers", type=int, default=int(env("BENCH_SWEEP_LAYERS", 4)))
    p.add_argument("--repeat", type=int, default=int(env("BENCH_SWEEP_REPEAT", 2)))
    p.add_argument("--dir", default=env("BENCH_SWEEP_DIR"))
    p.add_argument("--out", default=os.path.join(PLOTS, "size_sweep.png"))
    p.add_argument("--replot", action="store_true", help="redraw from the last sweep in results.jsonl, no measuring")
    a = p.parse_args([] if argv is None else argv)
    from bench import load_average, machine
    if a.replot:
        analysis, capture, note = _last_sweep()
        print(f"{'':>12} plot written to {plot(analysis, capture, a.out, note)}", flush=True)
        return
    load = load_average()
    analysis = analysis_sweep([float(s) for s in a.sizes.split(",") if s], a.pair_mb, a.repeat, a.dir)
    capture = capture_sweep([int(s) for s in a.seqs.split(",") if s], a.layers, a.repeat, a.dir)
    m = machine()
    note = (f"{m['cpu']}, {m['cpu_count']} cores; load average {load[0]:.1f} at start, {load_average()[0]:.1f} at end; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; best of {a.repeat}")
    print(f"{'':>12} plot written to {plot(analysis, capture, a.out, note)}", flush=True)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
