"""Compiled tensor metrics of a paired block (numba, from the ``fast`` extra; ``all`` includes it).

``analyze.tensor_metrics`` computes every metric of a record from a few sums per paired block: sum d², a·b, a·a,
b·b and |d| (d = a - b, in float64), max |d|, max |a|, the count of elements outside the allclose tolerances, and
per row a·b, a·a, b·b for ``cos_rows``. numpy needs a float64 copy of each side and ~15 passes over 1 MiB tiles
(1.8-2 GB/s of paired float32 on this machine); ``block_metrics`` takes them all in one pass straight from the
float32 (or float64) blocks, widening each value in a register.

Two things keep the pass in vector lanes:

- the sums are reassociated (``fastmath`` without ``nnan``/``ninf``: NaN and Inf propagate into d², which is how the
  caller sees that a block needs its counting path); partial sums of at most 1,024 elements join the row's sums and
  those the totals, so the rounding error stays near numpy's pairwise sums;
- the maxima of |d| and |a| are taken over the bits of those non-negative floats as int64 (which sort as the floats
  do): numba does not vectorize float max reductions (5 GB/s with the max, 15-17 without, in every form tried,
  ``nnan`` included).

Importing this module imports numba, so ``analyze.tensor_metrics`` imports it on first use only (``_kernels()``).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from common.jit import jit

#: every kernel: no GIL; numpy's error model (a float division by zero gives inf/NaN instead of raising, which also
#: lets the loops vectorize)
_KERNEL = {"nogil": True, "error_model": "numpy"}
_SUMS = {"reassoc", "contract", "nsz"}  # reassociation into vector lanes; NaN and Inf keep their meaning

_CHUNK = 1024  # elements per partial sum


@intrinsic
def _bits(typingctx, x):
    """The bits of a float64 as an int64 (a bit cast, free in a vector register)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@jit(**_KERNEL, fastmath=_SUMS)
def _span(a, b, atol, rtol):
    """The sums of one contiguous span (at most a row's piece of ``_CHUNK`` elements)."""
    dd = ab = aa = bb = sad = 0.0
    dmax = amax = np.int64(0)  # bits of max |d| and max |a|: non-negative floats sort as their bits do
    fails = 0
    for i in range(a.size):
        x = np.float64(a[i])
        y = np.float64(b[i])
        d = x - y
        dd += d * d
        ab += x * y
        aa += x * x
        bb += y * y
        ad = abs(d)
        ax = abs(x)
        sad += ad
        dmax = max(dmax, _bits(ad))
        amax = max(amax, _bits(ax))
        # Polygraphy's rule, as the numpy path computes it: an element fails when |d| > atol and |d| > rtol*|a|
        fails += (ad > atol) & (ad > rtol * ax)
    return dd, ab, aa, bb, sad, dmax, amax, fails


@jit(**_KERNEL)
def _cosine(ab, aa, bb):
    if aa == 0.0 and bb == 0.0:
        return 1.0
    if aa == 0.0 or bb == 0.0:
        return 0.0
    return ab / (math.sqrt(aa) * math.sqrt(bb))


@jit(**_KERNEL)
def block_metrics(a, b, row_len, pos, atol, rtol, pab, paa, pbb):
    """Every sum of the tensor metrics over paired flat blocks ``a`` and ``b`` (1-D, contiguous, same length and
    dtype: float32 or float64), in one pass.

    Rows run along the last dimension, ``row_len`` elements each; the block starts ``pos`` elements into a row whose
    a·b, a·a, b·b so far are ``pab, paa, pbb`` (a row split across blocks).

    Returns ``(dd, ab, aa, bb, sad, max_d_bits, max_a_bits, fails, cos_sum, cos_min, rows, pab, paa, pbb)``: the sums
    of d², a·b, a·a, b·b and |d|; the bits of max |d| and of max |a| (int64, a float64's); the allclose failures; the
    sum and minimum of the cosines of the ``rows`` rows completed in this block; the open row's sums after it. The
    sums cover this block's elements only (the carried-in ``pab, paa, pbb`` count for the row's cosine alone). A
    non-finite ``dd`` means the block holds NaN or Inf (on either side): the other numbers are then meaningless.
    """
    n = a.size
    dd = ab = aa = bb = sad = 0.0
    dmax = amax = np.int64(0)
    fails = 0
    cos_sum = 0.0
    cos_min = math.inf
    rows = 0
    i = 0
    while i < n:
        row_end = i + (row_len - pos)
        stop = min(row_end, n)
        for s in range(i, stop, _CHUNK):
            e = min(s + _CHUNK, stop)
            # slices: numba keeps them contiguous (a loop over a[s:e] by index would keep its negative-index check
            # in the loop, which stops vectorization)
            r = _span(a[s:e], b[s:e], atol, rtol)
            dd += r[0]
            ab += r[1]
            aa += r[2]
            bb += r[3]
            pab += r[1]
            paa += r[2]
            pbb += r[3]
            sad += r[4]
            dmax = max(dmax, r[5])
            amax = max(amax, r[6])
            fails += r[7]
        if stop == row_end:  # the row is complete
            cos = _cosine(pab, paa, pbb)
            cos_sum += cos
            cos_min = min(cos_min, cos)
            rows += 1
            pab = paa = pbb = 0.0
            pos = 0
        else:
            pos += stop - i
        i = stop
    return dd, ab, aa, bb, sad, dmax, amax, fails, cos_sum, cos_min, rows, pab, paa, pbb
