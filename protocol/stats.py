"""Per-record statistics (SPEC.md section 7), computed in float64 over the finite elements, streamable."""
from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass, fields

import numpy as np

from common.compiled import load
from .dots import dot

_BLOCK = 1 << 17  # elements per float64 block (1 MiB): stays in cache across the passes, memory bounded


@dataclass(frozen=True)
class TensorStats:
    """Summary of a tensor's values.

    ``min``/``max``/``mean``/``std`` (population)/``abs_max``/``l2`` are over the finite elements (NaN when there
    are none); ``nan_count`` and ``inf_count`` count the others; ``numel`` is the element count.
    """

    numel: int
    min: float
    max: float
    mean: float
    std: float
    abs_max: float
    l2: float
    nan_count: int
    inf_count: int

    def to_dict(self) -> dict:
        """A plain dict (JSON-ready; NaN stays NaN)."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the statistics, in storage order."""
        return tuple(f.name for f in fields(cls))


class StatsAccumulator:
    """Accumulates statistics over chunks (Chan et al.'s pairwise combination of mean and M2)."""

    def __init__(self):
        self.numel = 0
        self.n = 0  # finite elements
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.nan = 0
        self.inf = 0

    def update(self, values: np.ndarray) -> None:
        """Add a chunk of (decoded, numeric) values of any shape."""
        flat = np.asarray(values).reshape(-1)
        self.numel += flat.size
        start = 0
        compiled = _compiled_for(flat)
        if compiled is not None:  # every block in one compiled call, up to the first that holds NaN or Inf
            kernel, itype = compiled
            start, self.n, self.mean, self.m2, self.min, self.max = kernel(
                flat, flat.view(itype), _BLOCK, self.n, self.mean, self.m2, self.min, self.max)
            if start == flat.size:
                return
            flat = flat[start:]  # a multiple of _BLOCK: the blocks below are cut where the kernel would cut them
        with np.errstate(invalid="ignore"):  # casting a signalling NaN (any bit pattern can hold one) warns
            moments = _block_moments(flat)
        for m in moments:
            self._fold(*m)

    def _fold(self, n: int, bmean: float, bm2: float, bmin: float, bmax: float, nan: int, inf: int) -> None:
        """Fold in one block's moments (Chan et al.), in block order."""
        self.nan += nan
        self.inf += inf
        if n == 0:
            return
        total = self.n + n
        delta = bmean - self.mean
        self.mean += delta * n / total
        self.m2 += bm2 + delta * delta * self.n * n / total
        self.n = total
        self.min = min(self.min, bmin)
        self.max = max(self.max, bmax)

    def result(self) -> TensorStats:
        """The statistics of everything added so far."""
        if self.n == 0:
            nan = math.nan
            return TensorStats(self.numel, nan, nan, nan, nan, nan, nan, self.nan, self.inf)
        var = max(self.m2 / self.n, 0.0)
        sumsq = self.m2 + self.n * self.mean * self.mean
        return TensorStats(
            numel=self.numel, min=self.min, max=self.max, mean=self.mean, std=math.sqrt(var),
            abs_max=max(abs(self.min), abs(self.max)), l2=math.sqrt(max(sumsq, 0.0)),
            nan_count=self.nan, inf_count=self.inf)


def _compiled_for(flat: np.ndarray) -> tuple | None:
    """``(fold kernel, int view type)`` for a 1-D array the compiled kernels take, else None (numpy's path)."""
    kernels = _kernels_for(flat)
    if kernels is None:
        return None
    return getattr(kernels, _FOLDS[flat.dtype]), _KEYS[flat.dtype][1]


def _kernels_for(flat: np.ndarray):
    """The compiled kernels when they take this 1-D array, else None."""
    # the compiled kernels take the contiguous, writable arrays their probe compiled for (numba compiles anew for
    # read-only or strided ones: seconds, in the middle of a capture); other arrays take the numpy path
    if flat.dtype in _COMPILED_TYPES and flat.size >= _COMPILED_MIN and flat.flags.c_contiguous \
            and flat.flags.writeable:
        return _kernels()
    return None


def _block_moments(flat: np.ndarray) -> list[tuple]:
    """``(n, mean, m2, min, max, nan, inf)`` of each block of ``flat``, over its finite elements."""
    compiled = _kernels_for(flat)
    # one float64 scratch buffer per call, reused by every block: no allocation (and page faults) per block, and
    # the block stays in cache across the few passes below; made on first need (the compiled path has none)
    buf = None
    kind, size = flat.dtype.kind, flat.dtype.itemsize
    native_minmax = kind == "f" and size >= 4 or kind in "iu" and size < 8
    out = []
    for start in range(0, flat.size, _BLOCK):
        block = flat[start:start + _BLOCK]
        if compiled is not None:
            moments = _compiled_moments(compiled, block)
            if moments is not None:
                out.append(moments)
                continue  # else the block holds NaN or Inf: numpy counts them below
        # min/max in the native dtype are exact and read half the bytes (or less) of the float64 copy; 64-bit ints
        # are widened first (rounding beyond 2**53 is monotonic, so the result is the same either way)
        if native_minmax:
            bmin, bmax = float(block.min()), float(block.max())
        if buf is None:
            buf = np.empty(min(flat.size, _BLOCK), dtype=np.float64)
        x = buf[:block.size]
        np.copyto(x, block, casting="unsafe")  # exact, except 64-bit ints beyond 2**53 (rounded)
        if not native_minmax:
            bmin, bmax = float(x.min()), float(x.max())
        nan = inf = 0
        if not (math.isfinite(bmin) and math.isfinite(bmax)):  # min/max propagate NaN: both finite => all finite
            finite = np.isfinite(x)
            nan = int(np.isnan(x).sum())
            inf = int(x.size - np.count_nonzero(finite)) - nan
            x = x[finite]
            if x.size == 0:
                out.append((0, 0.0, 0.0, math.inf, -math.inf, nan, inf))
                continue
            bmin, bmax = float(x.min()), float(x.max())
        out.append((x.size, *_moments(x, bmin, bmax), bmin, bmax, nan, inf))
    return out


def _moments(x: np.ndarray, bmin: float, bmax: float) -> tuple[float, float]:
    """Mean and centred sum of squares of a float64 block of finite values (``x`` may be overwritten)."""
    n = x.size
    if bmin == bmax:  # constant (an attention mask, a padding block): exact
        return bmin, 0.0
    # one pass for sum(x) and one BLAS pass for sum(x*x); m2 = sum(x*x) - n*mean**2 loses about
    # log10(mean**2 / var) digits, so when that exceeds 4 (error > ~1e-12) the centred pass is taken instead
    s1 = float(x.sum())
    s2 = dot(x, x)
    mean = s1 / n
    m2 = s2 - s1 * mean
    if m2 > 1e-4 * s2:
        return mean, m2
    x -= mean
    return mean, dot(x, x)


# per compiled dtype: the block kernel, the int view of its bits, and the map from an order key back to the float
_KEYS = {np.dtype(np.float32): ("sums_minmax32", np.int32, "=i", "=f", 31, 0x7FFFFFFF),
         np.dtype(np.float64): ("sums_minmax64", np.int64, "=q", "=d", 63, 0x7FFFFFFFFFFFFFFF)}
# per compiled dtype: the whole-array kernel (it takes the same int view)
_FOLDS = {np.dtype(np.float32): "fold32", np.dtype(np.float64): "fold64"}


def _compiled_moments(kernels, block: np.ndarray) -> tuple | None:
    """``(n, mean, m2, min, max, 0, 0)`` of a float32/float64 block by the compiled kernels in one pass (no float64
    copy), or None when the block holds NaN or Inf."""
    kernel, itype, ifmt, ffmt, shift, mask = _KEYS[block.dtype]
    s1, s2, kmin, kmax = getattr(kernels, kernel)(block, block.view(itype))
    bmin, bmax = (struct.unpack(ffmt, struct.pack(ifmt, k ^ ((k >> shift) & mask)))[0] for k in (int(kmin), int(kmax)))
    if not (math.isfinite(bmin) and math.isfinite(bmax)):  # the keys of -inf/+inf and NaN lie beyond every finite
        return None
    # zeros: -0.0 sorts below +0.0 here, where numpy's min/max may return either sign (equal values either way)
    n = block.size
    if bmin == bmax:
        return n, bmin, 0.0, bmin, bmax, 0, 0
    mean = s1 / n
    m2 = s2 - s1 * mean
    # the one-pass form loses log10(s2/m2) digits of sums accurate to ~1e-14 (chunked, reassociated): past two
    # digits (|mean| > 10 std), the centred pass, cheap here
    if m2 <= 1e-2 * s2:
        m2 = float(kernels.centred(block, mean))
    return n, mean, m2, bmin, bmax, 0, 0


_COMPILED_TYPES = (np.dtype(np.float32), np.dtype(np.float64))
_COMPILED_MIN = 1 << 16  # elements: smaller arrays never import numba (CLI tools, tests on tiny dumps)


def _probe(kernels) -> None:
    for dtype in _COMPILED_TYPES:
        x = np.arange(3, dtype=dtype)
        _compiled_moments(kernels, x)
        kernels.centred(x, 1.0)
        # the types StatsAccumulator passes: a fresh state (int 0, floats) and a running one (ints, floats)
        getattr(kernels, _FOLDS[x.dtype])(x, x.view(_KEYS[x.dtype][1]), _BLOCK, 0, 0.0, 0.0, math.inf, -math.inf)


def _kernels():
    """``protocol.stats_kernels``, or None without numba (then numpy does the work); imported once."""
    return load("protocol.stats_kernels", _probe)


def compute_stats(values: np.ndarray) -> TensorStats:
    """Statistics of one array of decoded numeric values (bool counts as 0/1).

    Args:
        values: the array.

    Returns:
        The statistics (SPEC.md section 7).
    """
    acc = StatsAccumulator()
    acc.update(values)
    return acc.result()
