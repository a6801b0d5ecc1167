"""Asking the disk to start writing a file's dirty pages early, while the program goes on (Linux ``sync_file_range``).

A dump's bytes go to the page cache. For a dump written within the kernel's 30 s expiry and below its background
threshold (a tenth of memory) the disk writes them only at the fsync that ends the capture, so the capture then
waits for the whole dump. Asking every few MiB instead lets the disk work during the forward: on the benchmark
model (310 MB of activations), closing the dump went from 0.11-0.15 to 0.006-0.007 s, and the capture's time over
the bare forward fell by a fifth to a quarter (BENCHMARKS.md). A longer capture is written back by the kernel in any
case; there this keeps the dirty pages few while the disk keeps up.

``SYNC_FILE_RANGE_WRITE`` only starts the write: it does not wait for the write to finish (it may wait for room in
the device's queue, and on a network file system the calling thread builds the requests), and it makes nothing
durable; the fsync at close does, and reports any write error. So the request is advice: when it fails, for
whatever reason, the caller stops asking and nothing else changes. Elsewhere than Linux nothing is done.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


def _load():
    """libc's ``sync_file_range`` with its signature, or None (not Linux, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load()
#: False where ``start_writeback`` never does anything (not Linux).
SUPPORTED = _sync_file_range is not None


def start_writeback(fd: int) -> bool:
    """Ask the disk to start writing every dirty page of the open file ``fd`` (the whole file), without waiting for
    it; ctypes releases the GIL for the call. Pages already being written are left alone.

    Returns:
        True when the request was taken. False when this platform cannot make it or the kernel refused it (a pipe,
        a sandbox that forbids the call, a moment without memory): no need to ask again for this file. Never raises:
        write errors are the final fsync's to report.
    """
    if _sync_file_range is None:
        return False
    if _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0:  # offset 0, length 0: to the end of the file
        return True
    code = ctypes.get_errno()
    log.debug("early writeback refused for descriptor %d (%s); not asking again", fd, os.strerror(code))
    return False
