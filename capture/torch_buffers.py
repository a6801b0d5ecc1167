"""Recycled host buffers for the hooks' tensor copies.

A copy into freshly allocated memory pays a page fault per 4 KiB page (a 2 MB clone takes ~5 ms instead of ~0.5 ms
on a busy machine), and pinned memory is expensive to allocate on accelerators. The hooks therefore copy into
buffers taken from this pool; a buffer returns to the pool when the last user of the copy (the queued record, then
the writer's numpy view) lets go of it. The pool keeps at most ``max_bytes`` of idle buffers, so host memory stays
within the sink's queue bound plus this amount.
"""
from __future__ import annotations

import threading
import weakref

import torch


class HostBufferPool:
    """Idle host byte buffers by size.

    Args:
        max_bytes: the most idle bytes kept for reuse.
        pinned: allocate page-locked memory (for non-blocking copies from an accelerator).
    """

    def __init__(self, max_bytes: int, *, pinned: bool = False):
        self.max_bytes = int(max_bytes)
        self.pinned = pinned
        self.idle_bytes = 0
        self.reused = 0
        self._free: dict[int, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def empty_like(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor of ``t``'s shape and dtype backed by a pooled buffer (returned when it is collected)."""
        nbytes = t.numel() * t.element_size()
        if nbytes == 0 or t.dim() == 0:
            return torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pinned)
        buf = self._take(nbytes)
        host = buf.view(t.dtype).view(t.shape)
        weakref.finalize(host, self._give, buf)
        return host

    def _take(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                self.idle_bytes -= nbytes
                self.reused += 1
                return free.pop()
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pinned)

    def _give(self, buf: torch.Tensor) -> None:
        nbytes = buf.numel()
        with self._lock:
            if self.idle_bytes + nbytes <= self.max_bytes:
                self._free.setdefault(nbytes, []).append(buf)
                self.idle_bytes += nbytes
