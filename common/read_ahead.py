"""Produce the next item of an iterator on a helper thread while the caller works on the current one.

h5py releases the GIL while HDF5 reads, so reading the next block of a dump overlaps the numpy work on this one
(measured on 2 cores: 1 GiB of paired blocks, read 0.40 s + metrics 0.75 s one after the other; see BENCHMARKS.md).
Used with ``DumpReader.iter_blocks(..., reuse=True)``, whose two alternating buffers keep the current block intact
while the next one is read.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Iterator, TypeVar

T = TypeVar("T")
_END = object()
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tensorparity-read")
        return _POOL


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """The items of ``items``, in order, each produced on a helper thread while the previous one is in use.

    At most one item is produced ahead. Errors raised while producing an item are raised here, in order. When the
    caller stops early, the item being produced is waited for before ``items`` is closed.
    """
    pool = _pool()
    pending = pool.submit(next, items, _END)
    try:
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, items, _END)
            yield item
    finally:
        wait([pending])
        close = getattr(items, "close", None)
        if close is not None:
            close()
