"""Compiled float64 sums, min and max for protocol.stats (numba, from the ``fast`` extra; ``all`` includes it).

numpy needs a float64 copy of a float32 block and a pass per sum, plus a pass each for min and max (three passes
over memory for a tensor just written by the forward); ``sums_minmax32``/``64`` take all four in one pass straight
from the block, widening each value in a register (~14 GB/s from cache, 8-9 GB/s from memory here). They run without
the GIL, so the writer's statistics thread overlaps the data write. Reassociation into vector lanes makes the sums
float64 sums in another order, of chunk sums so that their error stays near numpy's pairwise sum, and deterministic
on a given CPU. ``centred`` (the second pass for blocks whose mean dwarfs their spread) only sees finite blocks, which
is what makes its full ``fastmath`` safe.

Importing this module imports numba (0.2 s), so protocol.stats imports it on first use only (``_kernels()``), never
at ``import protocol`` (``common.compiled.load``).
"""
from __future__ import annotations

import numpy as np

from common.jit import jit

#: every kernel: no GIL; numpy's error model (no ZeroDivisionError checks, which would stop vectorization)
_KERNEL = {"nogil": True, "error_model": "numpy"}

_CHUNK = 1024  # elements summed into a partial before it joins the total: the rounding error stays ~O(1000) ulps


def _sums_minmax(itype, shift: int, mask: int):
    """The one-pass kernel for floats whose bits are ``itype`` (int32 or int64); see ``sums_minmax32``."""
    sh, mk = itype(shift), itype(mask)  # compile-time constants of the bits' width: the loop stays in vector lanes

    @jit(**_KERNEL, fastmath={"reassoc", "contract", "nsz"})
    def kernel(x, bits):
        n = x.size
        b = bits[0]
        kmin = kmax = b ^ ((b >> sh) & mk)
        s1 = 0.0
        s2 = 0.0
        for start in range(0, n, _CHUNK):
            p1 = 0.0
            p2 = 0.0
            for i in range(start, min(start + _CHUNK, n)):
                v = np.float64(x[i])
                p1 += v
                p2 += v * v
                b = bits[i]
                k = b ^ ((b >> sh) & mk)
                kmin = min(kmin, k)
                kmax = max(kmax, k)
            s1 += p1
            s2 += p2
        return s1, s2, kmin, kmax
    return kernel


#: ``(sum x, sum x*x, min key, max key)`` of a 1-D float32 array ``x`` and its int32 view ``bits``, in one pass.
#:
#: The sums are float64, as sums of chunk sums. min and max are taken over order keys ``b ^ ((b >> 31) & 0x7FFFFFFF)``,
#: integers that sort as the floats do (-NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN), because integer min/max
#: reductions vectorize and float ones with NaN semantics do not; the same map turns a key back into the float's
#: bits. No ``nnan``/``ninf`` flags: the block may hold NaN or Inf, which the keys reveal (then the sums are unused).
sums_minmax32 = _sums_minmax(np.int32, 31, 0x7FFFFFFF)
#: The same for float64 and its int64 view.
sums_minmax64 = _sums_minmax(np.int64, 63, 0x7FFFFFFFFFFFFFFF)


@jit(**_KERNEL, fastmath=True)
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
