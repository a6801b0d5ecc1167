"""The machine's physical limits, measured on the spot, to quote beside every figure (docs/PERFORMANCE.md).

- ``disk_write_os``: sequential ``os.write`` of 16 MiB blocks then ``fsync`` (the disk and the page cache).
- ``disk_write_h5py``: the raw h5py baseline: one chunked dataset per array, flush, close, fsync (what P2 and the
  protocol_io figures compare against; bench.protocol_io.raw_write).
- ``read_h5py``: reading those datasets back with plain h5py (from the page cache: they were just written, and
  dropping the caches would disturb the other users of this machine).
- ``memory_copy``: one large numpy copy (read + write of each byte; GB/s counts the bytes copied once).
- ``memory_read``: a large float32 sum (one pass reading memory): the ceiling of any single-pass analysis kernel.

Each is the best of ``--repeat``. No baseline: these are the ceilings.

Run: ``python -m bench limits`` or ``python -m bench.limits --mb 256``. Environment: BENCH_LIMITS_MB, BENCH_LIMITS_DIR.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from bench import record
from bench.protocol_io import disk_write, raw_read, raw_write

BENCH = "limits"


def _best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(mb: int = 1024, repeat: int = 3, folder: str | None = None) -> list[dict]:
    """Measure and record every limit; returns the JSON documents written."""
    nbytes = mb << 20
    gb = nbytes / 1e9
    extra = {"bytes": nbytes, "repeat": repeat}
    work = tempfile.mkdtemp(prefix="bench-limits-", dir=folder)
    docs = []
    try:
        block = np.ones(16 << 20, dtype=np.uint8).tobytes()
        path = os.path.join(work, "raw.bin")

        def one_disk() -> float:
            t = disk_write(path, nbytes, block)
            os.unlink(path)
            return t
        docs.append(record(BENCH, "disk_write_os", gb / _best(one_disk, repeat), "GB/s", extra=extra))

        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal((16 << 20) // 4, dtype=np.float32).reshape(-1, 1024)
                  for _ in range(max(nbytes // (16 << 20), 1))]
        h5 = os.path.join(work, "raw.h5")
        writes, reads = [], []
        for _ in range(repeat):
            if os.path.exists(h5):
                os.unlink(h5)
            writes.append(raw_write(h5, arrays, "none"))
            reads.append(raw_read(h5))
        docs.append(record(BENCH, "disk_write_h5py", gb / min(writes), "GB/s", extra={**extra, "fsync": True}))
        docs.append(record(BENCH, "read_h5py_page_cache", gb / min(reads), "GB/s", extra=extra))
        os.unlink(h5)

        src = np.concatenate([a.reshape(-1) for a in arrays])
        del arrays
        dst = np.empty_like(src)
        dst.fill(0)  # fault the pages in first: the copy alone is measured
        t_copy = _best(lambda: _timed(lambda: np.copyto(dst, src)), repeat)
        docs.append(record(BENCH, "memory_copy", src.nbytes / 1e9 / t_copy, "GB/s", extra={**extra, "bytes": src.nbytes}))
        t_read = _best(lambda: _timed(lambda: np.add.reduce(src)), repeat)
        docs.append(record(BENCH, "memory_read", src.nbytes / 1e9 / t_read, "GB/s", extra={**extra, "bytes": src.nbytes}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return docs


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m bench`` (no arguments: environment defaults) and direct runs."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=int(os.environ.get("BENCH_LIMITS_MB", 1024)))
    p.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_LIMITS_REPEAT", 3)))
    p.add_argument("--dir", default=os.environ.get("BENCH_LIMITS_DIR"), help="folder for the files (default: temp)")
    a = p.parse_args([] if argv is None else argv)
    run(a.mb, a.repeat, a.dir)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
