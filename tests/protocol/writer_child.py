"""A real writer process for the crash-safety tests (run as ``python -m tests.protocol.writer_child MODE ...``).

Modes:
  fill PATH RECORDS RECORD_KB [FSIZE_LIMIT_BYTES]  write RECORDS float32 records; print ``DONE`` or ``ERROR: <msg>``
                                                   (exit 3); with a limit, RLIMIT_FSIZE is set (SIGXFSZ ignored).
  big PATH                                         a large dump (~40 MB: 120 records + a streamed record), printing
                                                   ``START``, ``RECORD <i>``, ``STREAM <i>``, ``CLOSING``, ``DONE``.
"""
from __future__ import annotations

import os
import resource
import signal
import sys
import time

import numpy as np

from protocol import DumpWriter, Manifest, ParityError, RecordKey


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fill(path: str, records: int, record_kb: int, fsize: int | None) -> int:
    if fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    data = np.arange(record_kb * 256, dtype=np.float32)
    try:
        with DumpWriter(path, Manifest(run_id="fill", label="fill")) as w:
            for i in range(records):
                w.add(RecordKey(0, 0, f"layers.{i}:out"), data)
    except ParityError as exc:
        _say(f"ERROR: {exc.message}")
        return 3
    _say("DONE")
    return 0


def full_at_close(path: str) -> int:
    """Write 300 small records, then fill the disk (another process's file) to 0.4 MiB free, then close."""
    filler = os.path.join(os.path.dirname(path), "filler")
    try:
        with DumpWriter(path, Manifest(run_id="full", label="full")) as w:
            for i in range(300):
                w.add(RecordKey(0, 0, f"layers.{i}:out"), np.full(16, i, np.float32))
            with open(filler, "wb") as fh:
                while os.statvfs(os.path.dirname(path)).f_bavail * os.statvfs(os.path.dirname(path)).f_frsize \
                        > 400_000:
                    fh.write(b"\0" * 16384)
                    fh.flush()
    except ParityError as exc:
        _say(f"ERROR: {exc.message}")
        return 3
    finally:
        if os.path.exists(filler):
            os.unlink(filler)
    _say("DONE")
    return 0


def big(path: str) -> int:
    rng = np.random.default_rng(0)
    block = rng.standard_normal((64, 1024)).astype(np.float32)  # 256 KB
    _say("START")
    with DumpWriter(path, Manifest(run_id="big", label="big")) as w:
        for i in range(120):
            w.add(RecordKey(0, 0, f"layers.{i}:out"), block + i)
            _say(f"RECORD {i}")
        with w.stream(RecordKey(0, 0, ":out.logits"), (40 * 64, 1024), "float32") as s:
            for i in range(40):
                s.write(block - i)
                _say(f"STREAM {i}")
        _say("CLOSING")
    _say("DONE")
    # linger until the test's SIGKILL lands, even when the close finished before it: the test then sees a
    # complete dump under the final name, never a normal exit that races the kill
    time.sleep(120)
    return 0


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "fill":
        sys.exit(fill(args[0], int(args[1]), int(args[2]), int(args[3]) if len(args) > 3 else None))
    if mode == "full-at-close":
        sys.exit(full_at_close(args[0]))
    if mode == "big":
        sys.exit(big(args[0]))
    sys.exit(f"unknown mode {mode}")
