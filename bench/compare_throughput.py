"""P3 and P5 (docs/PERFORMANCE.md): all tensor metrics of a dump pair read from disk, and peak memory.

P3: ``analyze.compare`` on a dump pair (default 2 x 512 MiB of float32 in 8 records per side; reads come from the
page cache since the files were just written) against (a) a plain numpy implementation that reads each record
whole and computes each metric separately in float64 (what hand-written scripts do) and (b) Polygraphy's
``CompareFunc.simple`` on the same arrays (fewer metrics), and (c) the read limit: plain h5py reading every dataset of
both files whole (``bench.protocol_io.raw_read``), the floor of any analysis that reads the records
(``p3_share_of_read``: that read time / ours, target >= 0.7 where 2 GB/s is above the read rate). Then one more run
under cProfile, summarised as where the time goes (``profile_p3``: reading the records, the tensor metrics, the
worst elements of the first divergent record, the statistics, the rest). P5: peak resident memory of
``analyze.compare`` on a larger pair (default 2 x 2 GiB), measured in a fresh subprocess through
``resource.getrusage``.

Run: ``python -m bench compare_throughput`` or ``python -m bench.compare_throughput --mb 512 --p5-mb 2048``.
Environment overrides: BENCH_CMP_MB, BENCH_CMP_P5_MB, BENCH_CMP_DIR.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import record
from bench.protocol_io import raw_read
from protocol import DumpWriter, Manifest, RecordKey, open_dump

BENCH = "compare_throughput"


def write_pair(folder: str, total_mb: int, records: int = 8) -> tuple[str, str, int]:
    """Two dumps of ``records`` float32 tensors [rows, 4096] totalling ``total_mb`` MiB per side."""
    per = total_mb * (1 << 20) // records // 4
    rows = max(per // 4096, 1)
    rng = np.random.default_rng(0)
    paths = []
    for side in ("ref", "cand"):
        path = os.path.join(folder, f"{side}.h5")
        with DumpWriter(path, Manifest(label=side)) as w:
            for i in range(records):
                base = np.random.default_rng(i).standard_normal((rows, 4096), dtype=np.float32)
                if side == "cand":
                    base += rng.standard_normal((rows, 4096), dtype=np.float32) * np.float32(1e-3)
                w.add(RecordKey(0, 0, f"layers.{i}:out"), base)
        paths.append(path)
    return paths[0], paths[1], 2 * records * rows * 4096 * 4


def plain_numpy(ref: str, cand: str) -> None:
    """Baseline (a): whole arrays, one metric at a time, float64."""
    with open_dump(ref) as r, open_dump(cand) as c:
        for info in r.records():
            a = r.read(info).astype(np.float64)
            b = c.read(info.key).astype(np.float64)
            np.max(np.abs(a - b))
            np.mean(np.abs(a - b))
            mse = np.mean((a - b) ** 2)
            math.sqrt(mse)
            np.linalg.norm(a - b) / np.linalg.norm(a)
            np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b))
            10 * math.log10(np.sum(a ** 2) / np.sum((a - b) ** 2))
            10 * math.log10(np.max(np.abs(a)) ** 2 / mse)
            np.mean(~((np.abs(a - b) > 1e-5) & (np.abs(a - b) > 1e-5 * np.abs(a))))
            np.count_nonzero(np.isnan(a) ^ np.isnan(b))
            np.count_nonzero(np.isinf(a) ^ np.isinf(b))
            rows = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            rows.mean(), rows.min()


def polygraphy_compare(ref: str, cand: str) -> float | None:
    """Baseline (b): Polygraphy's default comparator on the same arrays; None when polygraphy is missing."""
    try:
        from polygraphy.comparator import CompareFunc
        from polygraphy.comparator.struct import IterationResult
        from polygraphy.logger import G_LOGGER
    except ImportError:
        return None
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        func = CompareFunc.simple(atol=1e-5, rtol=1e-5)
    t0 = time.perf_counter()
    with open_dump(ref) as r, open_dump(cand) as c:
        for info in r.records():
            a, b = r.read(info), c.read(info.key)
            func(IterationResult({"x": a}, runner_name="ref"), IterationResult({"x": b}, runner_name="cand"))
    return time.perf_counter() - t0


def peak_rss_mb(ref: str, cand: str) -> tuple[float, float]:
    """Peak RSS (MiB) of a fresh interpreter that imports analyze, and of one that also runs compare()."""
    # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark across fork+exec into ru_maxrss.
    code = ("import sys, analyze\n"
            "def hwm():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024\n"
            "base = hwm()\n"
            "if sys.argv[1] == 'run': analyze.compare(sys.argv[2], sys.argv[3])\n"
            "print(hwm(), base)")
    out = subprocess.run([sys.executable, "-c", code, "run", ref, cand], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=int(os.environ.get("BENCH_CMP_MB", 512)))
    parser.add_argument("--p5-mb", type=int, default=int(os.environ.get("BENCH_CMP_P5_MB", 2048)))
    parser.add_argument("--dir", default=os.environ.get("BENCH_CMP_DIR"))
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_CMP_REPEAT", 2)))
    args = parser.parse_args(argv or [])
    folder = tempfile.mkdtemp(prefix="bench-compare-", dir=args.dir)
    try:
        ref, cand, nbytes = write_pair(folder, args.mb)
        gb = nbytes / 1e9
        import analyze
        analyze.compare(ref, cand)  # warm the page cache and imports
        t_ours = t_plain = t_poly = t_read = math.inf
        for _ in range(args.repeat):  # interleaved, best of each: the machine is shared and noisy
            t_ours = min(t_ours, _timed(lambda: analyze.compare(ref, cand)))
            t_read = min(t_read, raw_read(ref) + raw_read(cand))
            t_plain = min(t_plain, _timed(lambda: plain_numpy(ref, cand)))
            poly = polygraphy_compare(ref, cand)
            t_poly = None if poly is None else min(t_poly, poly)
        extra = {"pair_bytes": nbytes}
        record(BENCH, "p3_ours_throughput", gb / t_ours, "GB/s", target=">=1.0 GB/s", extra=extra)
        record(BENCH, "p3_read_rate", gb / t_read, "GB/s", extra=extra)
        record(BENCH, "p3_share_of_read", t_ours, "s", baseline=t_read, ratio=t_read / t_ours,
               target=">=0.7", extra=extra)  # or P3 >= 2 GB/s, when the read rate is above that
        shares = profile_compare(ref, cand)
        record(BENCH, "profile_p3", shares["total"], "s", extra={**extra, **shares})
        record(BENCH, "p3_time_vs_plain_numpy", t_ours, "s", baseline=t_plain, ratio=t_plain / t_ours,
               target=">=3", extra=extra)
        if t_poly is None:
            print("polygraphy is not installed: baseline (b) skipped", flush=True)
        else:
            record(BENCH, "p3_time_vs_polygraphy", t_ours, "s", baseline=t_poly, ratio=t_poly / t_ours,
                   target=">=1", extra=extra)
        shutil.rmtree(folder)
        os.makedirs(folder)
        ref, cand, nbytes = write_pair(folder, args.p5_mb, records=4)
        peak, base = peak_rss_mb(ref, cand)
        record(BENCH, "p5_peak_rss", peak, "MiB", baseline=base, ratio=None, target="<=512 MiB",
               extra={"pair_bytes": nbytes, "import_only_rss_mib": base})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: where a profiled function's own time goes: by the file that defines it, or for a C method the type it belongs to
#: (first match wins)
#: (cProfile sees the main thread only: its wait for the read-ahead thread, a lock's acquire, is read time)
_PROFILE_GROUPS = (("read", ("h5py", "dump_reader.py", "h5util.py", "checksum.py", "crc32c", "read_ahead.py",
                             "_thread.lock")),
                   ("metrics", ("tensor_metrics.py", "tensor_kernels.py", "dots.py")),
                   ("worst_elements", ("localize.py:worst_elements", "argpartition", "lexsort")),
                   ("stats", ("stats.py", "stats_kernels.py")))


def profile_compare(ref: str, cand: str) -> dict:
    """One ``analyze.compare`` under cProfile: seconds of own time per group of _PROFILE_GROUPS, the rest as
    ``other`` (numba kernels count in the Python function that calls them), printed as shares."""
    import cProfile
    import pstats

    import analyze
    prof = cProfile.Profile()
    prof.enable()
    analyze.compare(ref, cand)
    prof.disable()
    groups = {name: 0.0 for name, _ in _PROFILE_GROUPS} | {"other": 0.0}
    stats = pstats.Stats(prof)
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():
        where = f"{filename}:{function}"  # a C method has no file: its name says whose it is ('h5py.h5d...')
        name = next((g for g, files in _PROFILE_GROUPS if any(f in where for f in files)), "other")
        groups[name] += tottime
    total = sum(groups.values())
    print("where analyze.compare's time goes (cProfile, own time): " +
          ", ".join(f"{g.replace('_', ' ')} {t / total:.0%}" for g, t in groups.items()), flush=True)
    return {"total": round(total, 4), **{f"{g}_s": round(t, 4) for g, t in groups.items()}}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main(sys.argv[1:])
