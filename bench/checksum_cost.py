"""What the format 1.1 checksums cost (issue 19): CRC-32C alone, and DumpWriter / DumpReader with and without them.

Writes N float32 arrays (default 64 x 16 MB = 1 GiB, as ``protocol_io``) through ``DumpWriter`` in three variants,
interleaved within each round so that a noisy moment hurts them alike, and reports the median over ``--repeat``
rounds:

- ``v1.1``: the writer as it is (CRC-32C of every record's data, HDF5 1.10 file format with metadata checksums);
- ``nocrc``: the same with the data checksums stubbed out (``array_crc32c`` returns 0): the data checksums' cost;
- ``v1.0``: also HDF5's default (1.8) file format instead of 1.10: roughly the format 1.0 writer.

each uncompressed and with lz4, with the statistics computed by the writer (the checksum runs in the same helper
task) and given by the caller (the checksum is then the helper's only work); wall time and CPU time (all threads:
what the checksums add in work, which the machine's other users do not blur). Reads: ``DumpReader.read`` of every
record with and without verification. Files are fsynced at close (the writer does it); reads come from the page
cache.

``run_p2`` measures P2 of the capture (bench/capture_overhead.py's model) with and without the data checksums in the
same rounds.

Run: ``python -m bench checksum_cost`` or ``python -m bench.checksum_cost --arrays 16 --mb 16 --repeat 3``.
Environment overrides for ``python -m bench``: BENCH_IO_ARRAYS, BENCH_IO_MB, BENCH_IO_REPEAT, BENCH_IO_DIR.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
import zlib

import numpy as np

from bench import record
from bench.protocol_io import io_arguments
from protocol import DumpReader, DumpWriter, Manifest, RecordKey, compute_stats
from protocol import dump_reader as _reader_mod
from protocol import dump_writer as _writer_mod
from protocol.checksum import array_crc32c

BENCH = "checksum_cost"


@contextlib.contextmanager
def _variant(name: str):
    """Patch the writer (and reader) into one of the variants of the module docstring."""
    saved = (_writer_mod.array_crc32c, _writer_mod.DUMP_LIBVER, _reader_mod.array_crc32c, DumpReader._verify)
    try:
        if name in ("nocrc", "v1.0"):
            _writer_mod.array_crc32c = lambda array, value=0: 0
        if name == "v1.0":
            _writer_mod.DUMP_LIBVER = ("earliest", "latest")  # h5py's default, what format 1.0 dumps were written with
        if name == "noverify":  # read without computing or comparing checksums
            _reader_mod.array_crc32c = lambda array, value=0: 0
            DumpReader._verify = lambda *args: None
        yield
    finally:
        _writer_mod.array_crc32c, _writer_mod.DUMP_LIBVER, _reader_mod.array_crc32c, DumpReader._verify = saved


def _write(path: str, arrays: list[np.ndarray], compression: str, stats: list | None) -> tuple[float, float]:
    """Wall time and CPU time (every thread of the process) of one dump write."""
    t0, c0 = time.perf_counter(), time.process_time()
    with DumpWriter(path, Manifest(run_id="bench", label="bench"), compression=compression) as w:
        for i, a in enumerate(arrays):
            w.add(RecordKey(0, 0, f"layers.{i}:out"), a, stats=None if stats is None else stats[i])
    return time.perf_counter() - t0, time.process_time() - c0


def _read(path: str) -> float:
    t0 = time.perf_counter()
    with DumpReader(path) as r:
        for info in r.records():
            r.read(info)
    return time.perf_counter() - t0


def _drop(path: str) -> None:
    for p in (path, path + ".partial"):
        if os.path.exists(p):
            os.unlink(p)


def _rate(fn, data, nbytes: int, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for a in data:
            fn(a)
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def run(n_arrays: int = 64, mb: int = 16, repeat: int = 5, folder: str | None = None) -> list[dict]:
    """Run every variant and record its figures; returns the JSON documents written."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((mb << 20) // 4, dtype=np.float32).reshape(-1, 1024) for _ in range(n_arrays)]
    total = sum(a.nbytes for a in arrays)
    gb = total / 1e9
    extra = {"arrays": n_arrays, "array_mb": mb, "bytes": total, "repeat": repeat}
    docs = []
    # the checksum alone: arrays from memory (as the writer meets a capture's tensors), and cache-resident 1 MiB ones
    small = [a.reshape(-1)[: 1 << 18] for a in arrays[:4]] * 16
    docs.append(record(BENCH, "crc32c_alone_memory", _rate(array_crc32c, arrays, total), "GB/s", extra=extra))
    docs.append(record(BENCH, "crc32c_alone_cached_1MiB", _rate(array_crc32c, small, 64 << 20, 20), "GB/s",
                       extra=extra))
    views = [memoryview(a.reshape(-1)).cast("B") for a in arrays]
    docs.append(record(BENCH, "zlib_crc32_alone_memory", _rate(zlib.crc32, views, total), "GB/s", extra=extra))
    compute_stats(arrays[0][:1 << 16])  # warm-up: the compiled kernels' one-time import and load
    stats = [compute_stats(a) for a in arrays]
    work = tempfile.mkdtemp(prefix="bench-crc-", dir=folder)
    path = os.path.join(work, "x.h5")
    variants = ("v1.1", "nocrc", "v1.0")
    try:
        for comp in ("none", "lz4"):
            for given in (False, True):
                times: dict[str, list[float]] = {v: [] for v in variants}
                cpu: dict[str, list[float]] = {v: [] for v in variants}  # robust to other users of the cores
                reads: dict[str, list[float]] = {"verify": [], "noverify": []}
                for _ in range(repeat):
                    for v in variants:
                        _drop(path)
                        with _variant(v):
                            wall, used = _write(path, arrays, comp, stats if given else None)
                        times[v].append(wall)
                        cpu[v].append(used)
                    # the last file written is a v1.0 one: write a v1.1 file to read (not timed)
                    _drop(path)
                    _write(path, arrays, comp, stats)  # not timed
                    for v in ("verify", "noverify"):
                        with _variant(v):
                            reads[v].append(_read(path))
                    _drop(path)
                med = {v: statistics.median(t) for v, t in times.items()}
                mcpu = {v: statistics.median(t) for v, t in cpu.items()}
                tag = f"{comp}_{'given' if given else 'stats'}"
                e = {**extra, "compression": comp, "stats": "given" if given else "computed",
                     "times_s": {v: [round(x, 4) for x in t] for v, t in times.items()},
                     "cpu_s": {v: [round(x, 4) for x in t] for v, t in cpu.items()}}
                docs.append(record(BENCH, f"write_{tag}_v1.1_vs_nocrc", gb / med["v1.1"], "GB/s",
                                   baseline=gb / med["nocrc"], ratio=med["nocrc"] / med["v1.1"], extra=e))
                docs.append(record(BENCH, f"write_{tag}_v1.1_vs_v1.0", gb / med["v1.1"], "GB/s",
                                   baseline=gb / med["v1.0"], ratio=med["v1.0"] / med["v1.1"], extra=e))
                # CPU seconds per GB written: what the checksums add in work, whatever the machine's load
                docs.append(record(BENCH, f"cpu_{tag}_v1.1_vs_nocrc", mcpu["v1.1"] / gb, "cpu-s/GB",
                                   baseline=mcpu["nocrc"] / gb, ratio=mcpu["v1.1"] / mcpu["nocrc"], extra=e))
                docs.append(record(BENCH, f"cpu_{tag}_v1.1_vs_v1.0", mcpu["v1.1"] / gb, "cpu-s/GB",
                                   baseline=mcpu["v1.0"] / gb, ratio=mcpu["v1.1"] / mcpu["v1.0"], extra=e))
                if not given:
                    rmed = {v: statistics.median(t) for v, t in reads.items()}
                    docs.append(record(BENCH, f"read_{comp}_verify_vs_not", gb / rmed["verify"], "GB/s",
                                       baseline=gb / rmed["noverify"], ratio=rmed["noverify"] / rmed["verify"],
                                       extra={**extra, "compression": comp}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return docs


def run_p2(repeat: int = 7, folder: str | None = None) -> list[dict]:
    """P2 of bench/capture_overhead.py with and without the data checksums, in the same interleaved rounds (bare
    forward, full capture, full capture with ``array_crc32c`` stubbed out, the raw h5py write of the same bytes);
    best of rounds, as capture_overhead reports P2."""
    import torch

    from .capture_overhead import _bare, _captured, build_model
    from .protocol_io import raw_write
    work = tempfile.mkdtemp(prefix="bench-crc-p2-", dir=folder)
    try:
        model = build_model(8, 512, 4096)
        ids = torch.randint(4, 4096, (1, 512), generator=torch.Generator().manual_seed(0))
        feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
        _bare(model, feed)
        kept = os.path.join(work, "kept.h5")
        _captured(model, feed, kept, "full")
        with DumpReader(kept) as dump:
            arrays = [np.ascontiguousarray(dump.read(r, raw=True)) for r in dump.records() if r.has_data]
        times: dict = {"bare": [], "v1.1": [], "nocrc": [], "raw": []}
        for i in range(repeat):
            times["bare"].append(_bare(model, feed))
            for variant in ("v1.1", "nocrc"):
                path = os.path.join(work, f"{variant}{i}.h5")
                with _variant(variant):
                    times[variant].append(_captured(model, feed, path, "full")[0])
                os.unlink(path)
            raw_path = os.path.join(work, f"raw{i}.h5")
            times["raw"].append(raw_write(raw_path, arrays, "none"))
            os.unlink(raw_path)
        best = {k: min(v) for k, v in times.items()}
        extra = {"records": len(arrays), "bytes": int(sum(a.nbytes for a in arrays)), "rounds": repeat}
        return [record(BENCH, f"P2_{v}", best[v] - best["bare"], "s", baseline=best["raw"],
                       ratio=(best[v] - best["bare"]) / best["raw"], target="<=1.4", extra=extra)
                for v in ("v1.1", "nocrc")]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m bench`` (no arguments: environment defaults) and direct runs."""
    args = io_arguments(argv, __doc__.splitlines()[0], repeat=5)
    run(args.arrays, args.mb, args.repeat, args.dir)
    run_p2(folder=args.dir)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
