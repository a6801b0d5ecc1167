"""Starting the disk write of a file's dirty pages early, while the program goes on (Linux ``sync_file_range``).

A dump's bytes go to the page cache, and the disk writes them when the kernel decides to: for a dump smaller than
the kernel's background threshold (a tenth of memory), only at the fsync that ends the capture, so the capture then
waits for the whole dump. Asking for the write every few MiB instead lets the disk work during the forward: on the
benchmark model (310 MB of activations), closing the dump went from 0.11-0.15 to 0.006-0.007 s, and P2 (the full
capture's overhead against a raw h5py write of the same bytes) from 1.34-1.57x to 1.21-1.35x (BENCHMARKS.md). It also
keeps the dirty pages of a long capture few, on a host whose memory the model needs.

``SYNC_FILE_RANGE_WRITE`` only starts the write: it does not wait for it, and it makes nothing durable (the fsync at
close still does). Elsewhere than Linux, or on a file system without it, nothing is done.
"""
from __future__ import annotations

import ctypes
import errno
import os
import sys

_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
#: errors that mean "not supported for this file" (a pipe, a file system without it), never a failed write
_UNSUPPORTED = {errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENODEV}


def _load():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # a libc without it (very old, or not glibc/musl)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load()
#: False where ``start_writeback`` never does anything (not Linux).
SUPPORTED = _sync_file_range is not None


def start_writeback(fd: int) -> bool:
    """Start writing every dirty page of the open file ``fd`` to its disk, without waiting (ctypes releases the
    GIL for the call). Pages already being written are left alone.

    Returns:
        False when this platform or file system cannot do it (nothing was done; no need to ask again for this file).

    Raises:
        OSError: the kernel refused the write (e.g. EIO, ENOSPC): the same error the final fsync would raise.
    """
    if _sync_file_range is None:
        return False
    if _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0:  # offset 0, length 0: the whole file
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code))
