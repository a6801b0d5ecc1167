"""Compiled float64 sums, min and max for protocol.stats (numba, from the ``fast`` extra; ``all`` includes it).

numpy needs a float64 copy of a float32 block and a pass per sum, plus a pass each for min and max (three passes
over memory for a tensor just written by the forward); ``sums_minmax32``/``64`` take all four in one pass straight
from the block, widening each value in a register (33 GB/s from cache, 25 GB/s from memory here: the speed of
numpy's own float32 sum, which reads memory only). They run without the GIL, so the writer's statistics thread
overlaps the data write. Reassociation into vector lanes makes the sums
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
        # numba computes int32 shifts and masks in int64; the cast back keeps the keys in int32 lanes, where AVX2
        # has a vector min/max (it has none for int64): the min/max of the keys alone 15-19 -> 35-46 GB/s from cache
        kmin = kmax = itype(b ^ ((b >> sh) & mk))
        s1 = 0.0
        s2 = 0.0
        for start in range(0, n, _CHUNK):
            # a slice, looped over from 0: indexing x[i] for i in range(start, stop) keeps numba's negative-index
            # wraparound in the loop, which stops vectorization (2.9 GB/s from memory; 25 GB/s this way)
            xs = x[start:start + _CHUNK]
            bs = bits[start:start + _CHUNK]
            p1 = 0.0
            p2 = 0.0
            for i in range(xs.size):
                v = np.float64(xs[i])
                p1 += v
                p2 += v * v
                b = bs[i]
                k = itype(b ^ ((b >> sh) & mk))
                kmin = min(kmin, k)
                kmax = max(kmax, k)
            s1 += p1
            s2 += p2
        return s1, s2, kmin, kmax
    return kernel


def _fold(sums, itype, ftype, shift: int, mask: int, lo_key: int, hi_key: int):
    """The whole-array kernel over the block kernel ``sums`` for floats whose bits are ``itype`` (view ``ftype``);
    see ``fold32``."""
    sh, mk = itype(shift), itype(mask)
    lo, hi = itype(lo_key), itype(hi_key)  # the order keys of -inf and +inf: finite values lie strictly between

    # no fastmath here: the per-block moments and their combination round exactly as protocol.stats' Python code
    # (StatsAccumulator._fold) does, so the result does not depend on which of the two ran. The blocks are slices
    # (numba keeps them contiguous): a loop over x[start:stop] by index keeps numba's negative-index check in the
    # loop, which stops vectorization (4 GB/s instead of 11).
    @jit(**_KERNEL)
    def fold(x, bits, block, n, mean, m2, lo_val, hi_val):
        keys = np.empty(2, dtype=itype)
        vals = keys.view(ftype)
        size = x.size
        start = 0
        while start < size:
            stop = min(start + block, size)
            xb = x[start:stop]
            s1, s2, kmin, kmax = sums(xb, bits[start:stop])
            if kmin <= lo or kmax >= hi:  # NaN or Inf in this block: the caller counts them, from here on
                break
            keys[0] = kmin ^ ((kmin >> sh) & mk)
            keys[1] = kmax ^ ((kmax >> sh) & mk)
            bmin = np.float64(vals[0])
            bmax = np.float64(vals[1])
            bn = stop - start
            if bmin == bmax:
                bmean = bmin
                bm2 = 0.0
            else:
                bmean = s1 / bn
                bm2 = s2 - s1 * bmean
                if bm2 <= 1e-2 * s2:
                    bm2 = centred(xb, bmean)
            total = n + bn
            delta = bmean - mean
            mean += delta * bn / total
            m2 += bm2 + delta * delta * n * bn / total
            n = total
            if bmin < lo_val:  # Python's min(lo_val, bmin) and max(hi_val, bmax): the first of equals stays
                lo_val = bmin
            if bmax > hi_val:
                hi_val = bmax
            start = stop
        return start, n, mean, m2, lo_val, hi_val
    return fold


#: ``(sum x, sum x*x, min key, max key)`` of a 1-D float32 array ``x`` and its int32 view ``bits``, in one pass.
#:
#: The sums are float64, as sums of chunk sums. min and max are taken over order keys ``b ^ ((b >> 31) & 0x7FFFFFFF)``,
#: integers that sort as the floats do (-NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN), because integer min/max
#: reductions vectorize and float ones with NaN semantics do not; the same map turns a key back into the float's
#: bits. No ``nnan``/``ninf`` flags: the block may hold NaN or Inf, which the keys reveal (then the sums are unused).
sums_minmax32 = _sums_minmax(np.int32, 31, 0x7FFFFFFF)
#: The same for float64 and its int64 view.
sums_minmax64 = _sums_minmax(np.int64, 63, 0x7FFFFFFFFFFFFFFF)

#: The statistics of a whole 1-D float32 array ``x`` (its int32 view ``bits``) in one call: block by block of
#: ``block`` elements, each block's sums, min and max in one pass (as ``sums_minmax32``) and its mean and centred
#: sum of squares, combined with Chan et al.'s formula into a running ``(n, mean, m2, min, max)`` that starts from the
#: values passed. Returns ``(stop, n, mean, m2, min, max)``: ``stop`` is ``x.size``, or the start of the first block
#: holding NaN or Inf (the caller takes over there; the state covers the blocks before it). One call per tensor
#: instead of a Python round per block: the per-block work done in Python (key conversion, the combination) was
#: ~14 us a block, a fifth of the kernel's own time on cache-resident data.
fold32 = _fold(sums_minmax32, np.int32, np.float32, 31, 0x7FFFFFFF, -0x7F800001, 0x7F800000)
#: The same for float64 and its int64 view.
fold64 = _fold(sums_minmax64, np.int64, np.float64, 63, 0x7FFFFFFFFFFFFFFF, -0x7FF0000000000001, 0x7FF0000000000000)


@jit(**_KERNEL, fastmath=True)
def centred(x, mean):
    """``sum (x - mean)**2`` in float64 of a 1-D float32 or float64 array of finite values, as sums of chunk sums."""
    n = x.size
    m2 = 0.0
    for start in range(0, n, _CHUNK):
        xs = x[start:start + _CHUNK]  # a slice from 0: vectorized (see _sums_minmax)
        part = 0.0
        for i in range(xs.size):
            d = np.float64(xs[i]) - mean
            part += d * d
        m2 += part
    return m2
