"""Compiled float64 sums for protocol.stats (numba, from the ``fast`` extra; ``all`` includes it).

numpy needs a float64 copy of a float32 block and a pass per sum (4-4.8 GB/s of float32 on one core here); these
loops widen each value in a register and keep both sums in float64, straight from the block (~30 GB/s from cache).
They run without the GIL, so the writer's statistics thread overlaps the data write. They are only called on blocks
known to be finite (their min and max are), which is what makes ``fastmath`` (reassociation into vector lanes) safe:
the result is a float64 sum in another order, of chunk sums so that its error stays near numpy's pairwise sum, and
deterministic on a given CPU.

Importing this module imports numba (0.2 s), so protocol.stats imports it on first use only (``_kernels()``), never
at ``import protocol`` (``protocol.compiled.load``).
"""
from __future__ import annotations

import numpy as np

from .jit import jit

_CHUNK = 1024  # elements summed into a partial before it joins the total: the rounding error stays ~O(1000) ulps


@jit(fastmath=True)
def sums(x):
    """``(sum x, sum x*x)`` in float64 of a 1-D float32 or float64 array of finite values, as sums of chunk sums."""
    n = x.size
    s1 = 0.0
    s2 = 0.0
    for start in range(0, n, _CHUNK):
        p1 = 0.0
        p2 = 0.0
        for i in range(start, min(start + _CHUNK, n)):
            v = np.float64(x[i])
            p1 += v
            p2 += v * v
        s1 += p1
        s2 += p2
    return s1, s2


@jit(fastmath=True)
def centred(x, mean):
    """``sum (x - mean)**2`` in float64 of a 1-D float32 or float64 array of finite values, as sums of chunk sums."""
    n = x.size
    m2 = 0.0
    for start in range(0, n, _CHUNK):
        part = 0.0
        for i in range(start, min(start + _CHUNK, n)):
            d = np.float64(x[i]) - mean
            part += d * d
        m2 += part
    return m2
