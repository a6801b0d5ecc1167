"""Compiled float64 sums of the logit metrics (numba, from the ``fast`` extra; ``all`` includes it).

``analyze.logit_metrics`` reduces every per-token divergence to eight sums over the vocabulary (see its docstring).
numpy spends most of that time in ``exp`` and ``log``, which it calls one value at a time on this machine's CPU (no
vector libm for float64: ~7-8 ns a value). Here ``exp`` and ``log`` are written out (Cody-Waite range reduction and
a polynomial, as fdlibm does) so the compiler turns them into vector code: 2-2.5 ns a value, each within 1 ulp of
libm (``m log m`` within ~2).

Two kinds of loop, because of what ``fastmath`` may do:

- element loops (``exp``/``log`` into a buffer) are compiled without reassociation, which would fold the two-part
  ``ln 2`` of the range reduction into one constant (100 ulp errors near exp(-700));
- sum loops are compiled with it, so they run in vector lanes, and add 1,024-element partials into the total to keep
  the rounding error near numpy's.

NaN and infinities pass through as they do in numpy's formulation (a NaN, +inf or -inf logit makes a sum NaN), so
the caller's check of the results and its slow path for such rows stay the same.

Importing this module imports numba, so ``analyze.logit_metrics`` imports it on first use only (``_kernels()``).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from common.jit import jit

#: every kernel: no GIL; numpy's error model (a float division by zero gives inf/NaN instead of raising, which also
#: lets the loops vectorize)
_KERNEL = {"nogil": True, "error_model": "numpy"}
_SUMS = {"reassoc", "contract", "nsz"}  # fastmath of the sum loops (reassociation into vector lanes)

_CHUNK = 1024  # elements per pass: the buffers stay in L1; partial sums of this length join the totals
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact for |k| < 2**11 (fdlibm)
_LN2_LO = 1.90821492927058770002e-10
_EXP_MAGIC = 4503599627371519.0  # 2**52 + 1023: k + this holds the biased exponent k + 1023 in its low bits
_TWO52 = 4503599627370496.0
_EXP_MIN = -708.0  # exp below this is under 3.3e-308 (subnormal): taken as 0, which no sum here can notice
_SQRT2 = 1.4142135623730951
_TINY = 1e-300  # m log m below this is taken as 0 (its limit; |m log m| < 7e-298)


@intrinsic
def float_to_bits(typingctx, x):
    """The bits of a float64 as a uint64 (a bit cast, free in a vector register)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.uint64(types.float64), codegen


@intrinsic
def bits_to_float(typingctx, x):
    """The float64 whose bits are the given uint64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.uint64), codegen


@jit(**_KERNEL, inline="always")
def _exp_nonpositive(x):
    """exp(x) for x <= 0 within 1 ulp; 0 below -708 and for -inf; NaN gives 0 (the caller's sums see the NaN)."""
    xc = max(x, _EXP_MIN)
    k = np.floor(xc * _LOG2E + 0.5)
    r = (xc - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln2/2
    p = 1.0 / 6227020800.0  # Taylor to r**13: the first term left out is < 2e-17 relative
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    scale = bits_to_float(float_to_bits(k + _EXP_MAGIC) << np.uint64(52))  # 2**k, no int conversion (AVX2 has none)
    return p * scale if x >= _EXP_MIN else 0.0


@jit(**_KERNEL, inline="always")
def _log_positive(x):
    """log(x) for normal positive x within 1 ulp (fdlibm's reduction to [sqrt(2)/2, sqrt(2)) and atanh series)."""
    bits = float_to_bits(x)
    biased = bits_to_float((bits >> np.uint64(52)) | np.uint64(0x4330000000000000)) - _TWO52  # e + 1023
    m = bits_to_float((bits & np.uint64(0x000FFFFFFFFFFFFF)) | np.uint64(0x3FF0000000000000))  # in [1, 2)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = biased - 1022.0 if big else biased - 1023.0
    f = m - 1.0
    s = f / (2.0 + f)  # log(1+f) = 2 atanh(s) = 2s + 2s^3/3 + 2s^5/5 + ...
    z = s * s
    p = 1.0 / 23.0
    p = p * z + 1.0 / 21.0
    p = p * z + 1.0 / 19.0
    p = p * z + 1.0 / 17.0
    p = p * z + 1.0 / 15.0
    p = p * z + 1.0 / 13.0
    p = p * z + 1.0 / 11.0
    p = p * z + 1.0 / 9.0
    p = p * z + 1.0 / 7.0
    p = p * z + 1.0 / 5.0
    p = p * z + 1.0 / 3.0
    log1pf = f - (s * f - 2.0 * s * z * p)  # 2s = f - s*f, written so the small terms are added last
    return e * _LN2_HI + (log1pf + e * _LN2_LO)


@jit(**_KERNEL, fastmath={"contract"})
def _exp_shifted(src, shift, out):
    """out[i] = exp(src[i] - shift), the shifted logits being <= 0."""
    for i in range(src.size):
        out[i] = _exp_nonpositive(np.float64(src[i]) - shift)


@jit(**_KERNEL, fastmath={"contract"})
def _mlogm(ea, ra, eb, rb, out):
    """out[i] = m log m with m = ea[i]*ra + eb[i]*rb (p + q), 0 where m is below _TINY."""
    for i in range(ea.size):
        m = ea[i] * ra + eb[i] * rb
        out[i] = m * _log_positive(max(m, _TINY)) if m >= _TINY else 0.0


@jit(**_KERNEL, fastmath=_SUMS)
def _first_sums(a, b, ma, mb, ea, eb):
    """Sums of ea, eb, ea*x, ea*y, eb*x, eb*y over one chunk, x = a - ma and y = b - mb."""
    s0 = s1 = s2 = s3 = s4 = s5 = 0.0
    for i in range(a.size):
        x = np.float64(a[i]) - ma
        y = np.float64(b[i]) - mb
        s0 += ea[i]
        s1 += eb[i]
        s2 += ea[i] * x
        s3 += ea[i] * y
        s4 += eb[i] * x
        s5 += eb[i] * y
    return s0, s1, s2, s3, s4, s5


@jit(**_KERNEL, fastmath=_SUMS)
def _second_sums(a, b, ma, mb, c, ea, t):
    """Sums of ea * |x - y - c| and of t over one chunk."""
    s0 = s1 = 0.0
    for i in range(a.size):
        d = (np.float64(a[i]) - ma) - (np.float64(b[i]) - mb) - c
        s0 += ea[i] * abs(d)
        s1 += t[i]
    return s0, s1


@jit(**_KERNEL, fastmath=_SUMS)
def _total(x):
    s = 0.0
    for i in range(x.size):
        s += x[i]
    return s


@jit(**_KERNEL)
def exp_sums(a, ma, out, ea):
    """``out[r] = sum exp(a[r] - ma[r])`` for each row of an ``(n, V)`` array (perplexity's log-sum-exp); ``ea`` is
    float64 scratch of at least V elements."""
    n, v = a.shape
    for r in range(n):
        total = 0.0
        for s in range(0, v, _CHUNK):
            e = min(s + _CHUNK, v)
            _exp_shifted(a[r, s:e], ma[r], ea[s:e])
            total += _total(ea[s:e])
        out[r] = total


@jit(**_KERNEL)
def row_sums(a, b, ma, mb, out, ea, eb, t):
    """The sums of every row of two ``(n, V)`` logit arrays into ``out`` ``(n, 8)``.

    Columns: sum ea, sum eb, sum ea*x, sum ea*y, sum eb*x, sum eb*y, sum ea*|x - y - c|, sum m' log m'; with
    ``x = a - ma``, ``y = b - mb`` (float64), ``ea = exp(x)``, ``eb = exp(y)``, ``c = log(sum ea) - log(sum eb)``,
    ``m' = ea/sum ea + eb/sum eb``. ``ea``, ``eb`` and ``t`` are float64 scratch buffers of at least V elements.
    """
    n, v = a.shape
    for r in range(n):
        ar, br = a[r], b[r]
        acc = np.zeros(6)
        for s in range(0, v, _CHUNK):
            e = min(s + _CHUNK, v)
            _exp_shifted(ar[s:e], ma[r], ea[s:e])
            _exp_shifted(br[s:e], mb[r], eb[s:e])
            part = _first_sums(ar[s:e], br[s:e], ma[r], mb[r], ea[s:e], eb[s:e])
            for j in range(6):
                acc[j] += part[j]
        c = np.log(acc[0]) - np.log(acc[1])
        ra, rb = 1.0 / acc[0], 1.0 / acc[1]
        s_abs = s_m = 0.0
        for s in range(0, v, _CHUNK):
            e = min(s + _CHUNK, v)
            _mlogm(ea[s:e], ra, eb[s:e], rb, t[s:e])
            part2 = _second_sums(ar[s:e], br[s:e], ma[r], mb[r], c, ea[s:e], t[s:e])
            s_abs += part2[0]
            s_m += part2[1]
        for j in range(6):
            out[r, j] = acc[j]
        out[r, 6] = s_abs
        out[r, 7] = s_m
