"""Tensor metrics of docs/METRICS.md section 1, computed in one streaming pass over paired blocks.

Every metric of a record comes out of a single pass: each paired block is upcast to float64 once, ``d = a - b`` is
formed once, and the per-row dot products (a·b, a·a, b·b) give both ``cos_rows`` and the global sums. Memory is
bounded by the tile size (float64 scratch buffers reused across tiles), never by the tensor size.

Non-finite values: a tile whose sums are finite has no NaN/Inf (float32/16 squares cannot overflow float64), so
the common case never pays for ``isfinite``. Otherwise the positions not finite on both sides are counted, set to
0 on both sides (they then add nothing to any sum) and excluded from the element counts.

With numba (the ``fast`` extra), paired float32 or float64 blocks of at least 64K elements take one compiled pass
instead (``analyze/tensor_kernels.py``: the same sums, in another order, straight from the blocks); a block whose
d² sum comes out non-finite is measured again by the numpy path above, which counts and excludes NaN and Inf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from common.compiled import load
from protocol import TensorStats, dot, row_dots

#: Names of the tensor metrics, in report order.
TENSOR_METRICS = ("max_abs_diff", "mean_abs_diff", "mse", "rmse", "rel_l2", "cosine", "sqnr_db", "psnr_db",
                  "allclose_frac", "nan_mismatch", "inf_mismatch", "cos_rows_mean", "cos_rows_min")
#: Statistics compared for statistics-only records (relative difference |b-a|/|a|).
STATS_FIELDS = ("min", "max", "mean", "std", "abs_max", "l2")
STATS_METRICS = tuple(f"stats_rel_{f}" for f in STATS_FIELDS) + ("nan_count_diff", "inf_count_diff")
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-5
_TILE = 1 << 17  # elements per float64 tile: 1 MiB buffers stay in cache across the ~15 passes (measured: 1.48 GB/s
# of paired float32 at 1 << 17, 1.22 at 1 << 20 whose 8 MiB buffers spill to memory; 1.27 at 1 << 15, per-call overhead)


@dataclass
class MetricValues:
    """The metrics of one paired record.

    Attributes:
        status: ``ok``; ``empty`` (no elements: no numbers); ``no-finite`` (every position excluded).
        values: metric name -> float (``None`` for all when the status is not ``ok``).
        numel: elements compared; excluded: positions not finite on both sides (left out of the other metrics).
    """

    status: str
    values: dict = field(default_factory=dict)
    numel: int = 0
    excluded: int = 0


def _ratio_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _cosine(ab: float, aa: float, bb: float) -> float:
    if aa == 0.0 and bb == 0.0:
        return 1.0
    if aa == 0.0 or bb == 0.0:
        return 0.0
    return ab / (math.sqrt(aa) * math.sqrt(bb))


class TensorMetricAccumulator:
    """Accumulates every tensor metric over consecutive flat C-order blocks of a reference and a candidate.

    Args:
        shape: the records' common shape (rows for ``cos_rows`` are along the last dimension; a 0-d or 1-d tensor
            is one row).
        atol, rtol: ``allclose_frac`` tolerances (Polygraphy's rule: an element fails only when both are exceeded).
        peak: ``max|a|`` when already known (the reference's index statistics of a full record without NaN/Inf);
            computed otherwise.
        tile: float64 working-set size in elements.
    """

    def __init__(self, shape: tuple, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                 peak: float | None = None, tile: int = _TILE):
        self.numel = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        self.row_len = max(int(shape[-1]), 1) if len(shape) else 1
        self.atol, self.rtol = float(atol), float(rtol)
        self._peak_known = peak is not None
        self.peak = float(peak) if peak is not None else 0.0
        self.tile = max(tile // self.row_len, 1) * self.row_len if self.row_len <= tile else tile
        size = min(self.tile, max(self.numel, 1))
        self._a = np.empty(size)
        self._b = np.empty(size)
        self._d = np.empty(size)
        self._t = np.empty(size)
        self._mask = np.empty(size, dtype=bool)
        self._mask2 = np.empty(size, dtype=bool)
        self.offset = 0
        self.aa = self.bb = self.ab = self.dd = self.sad = 0.0
        self.mad = 0.0
        self.fails = 0
        self.excluded = self.nan_mismatch = self.inf_mismatch = 0
        self.rows = 0
        self.rows_cos_sum = 0.0
        self.rows_cos_min = math.inf
        self._part = [0.0, 0.0, 0.0]  # ab, aa, bb of a row split across blocks

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add the next paired flat blocks (same length; decoded numeric values of any dtype)."""
        a = np.asarray(a).reshape(-1)
        b = np.asarray(b).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(f"paired blocks differ in length: {a.shape} vs {b.shape}")
        kernels = _compiled_for(a, b)
        if kernels is not None and self._compiled_block(kernels, a, b):
            return
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf inputs are handled, not warned about
            for start in range(0, a.size, self.tile):
                self._tile(a[start:start + self.tile], b[start:start + self.tile])

    def _compiled_block(self, kernels, a: np.ndarray, b: np.ndarray) -> bool:
        """Add a paired block by the compiled pass; False (nothing added) when it holds NaN or Inf."""
        dd, ab, aa, bb, sad, dmax, amax, fails, cos_sum, cos_min, rows, pab, paa, pbb = kernels.block_metrics(
            a, b, self.row_len, self.offset % self.row_len, self.atol, self.rtol, *self._part)
        if not math.isfinite(dd):
            return False  # the numpy path counts and excludes the non-finite positions
        self.dd += dd
        self.ab += ab
        self.aa += aa
        self.bb += bb
        self.sad += sad
        self.mad = max(self.mad, _from_bits(dmax))
        if not self._peak_known:
            self.peak = max(self.peak, _from_bits(amax))
        self.fails += int(fails)
        if rows:
            self.rows += int(rows)
            self.rows_cos_sum += cos_sum
            self.rows_cos_min = min(self.rows_cos_min, cos_min)
        self._part = [pab, paa, pbb]
        self._advance(a.size)
        return True

    def _tile(self, a_in: np.ndarray, b_in: np.ndarray) -> None:
        n = a_in.size
        a, b, d = self._a[:n], self._b[:n], self._d[:n]
        np.copyto(a, a_in, casting="unsafe")
        np.copyto(b, b_in, casting="unsafe")
        np.subtract(a, b, out=d)
        dd = dot(d, d)
        # Any NaN/Inf on either side makes d, hence dd, non-finite (float32/16 squares cannot overflow float64),
        # so the common case never pays for isfinite.
        if not math.isfinite(dd):
            self._exclude_non_finite(a, b)
            np.subtract(a, b, out=d)
            dd = dot(d, d)
        self.dd += dd
        ab, aa, bb = self._row_dots(a, b)
        self.ab += ab
        self.aa += aa
        self.bb += bb
        np.abs(d, out=d)
        self.sad += float(d.sum())
        tile_max = float(d.max()) if n else 0.0
        self.mad = max(self.mad, tile_max)
        if self._peak_known and tile_max <= self.atol:
            return self._advance(n)  # no element can fail allclose
        t = self._t[:n]
        np.abs(a, out=t)
        peak = self.peak
        if not self._peak_known:
            peak = float(t.max()) if n else 0.0
            self.peak = max(self.peak, peak)
        if tile_max > self.atol:
            # an element fails when |d| > atol and |d| > rtol*|a|: two comparisons and an and cost less than
            # np.maximum (NaN-aware, slow) of the two thresholds
            mask = self._mask[:n]
            np.greater(d, self.atol, out=mask)
            if peak * self.rtol > self.atol:  # else rtol*|a| <= atol everywhere here: atol decides alone
                t *= self.rtol
                other = self._mask2[:n]
                np.greater(d, t, out=other)
                mask &= other
            self.fails += int(np.count_nonzero(mask))
        self._advance(n)

    def _advance(self, n: int) -> None:
        self.offset += n

    def _exclude_non_finite(self, a: np.ndarray, b: np.ndarray) -> None:
        a_nan, b_nan = np.isnan(a), np.isnan(b)
        a_inf, b_inf = np.isinf(a), np.isinf(b)
        self.nan_mismatch += int(np.count_nonzero(a_nan ^ b_nan))
        self.inf_mismatch += int(np.count_nonzero((a_inf ^ b_inf) | (a_inf & b_inf & (a != b))))
        bad = ~(np.isfinite(a) & np.isfinite(b))
        self.excluded += int(np.count_nonzero(bad))
        a[bad] = 0.0
        b[bad] = 0.0

    def _row_dots(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
        """Per-row a·b, a·a, b·b (rows along the last dimension, possibly split across blocks); returns sums."""
        r, n, o = self.row_len, a.size, self.offset
        i = 0
        tot = [0.0, 0.0, 0.0]
        if o % r:
            take = min(r - o % r, n)
            self._add_part(a[:take], b[:take], tot)
            i = take
            if (o + take) % r == 0:
                self._finish_part()
        full = (n - i) // r
        if full:
            A = a[i:i + full * r].reshape(full, r)
            B = b[i:i + full * r].reshape(full, r)
            ab, aa, bb = row_dots(A, B), row_dots(A, A), row_dots(B, B)
            tot[0] += float(ab.sum())
            tot[1] += float(aa.sum())
            tot[2] += float(bb.sum())
            self._add_rows(ab, aa, bb)
            i += full * r
        if i < n:
            self._add_part(a[i:], b[i:], tot)
        return tot[0], tot[1], tot[2]

    def _add_part(self, a, b, tot) -> None:
        ab, aa, bb = dot(a, b), dot(a, a), dot(b, b)
        self._part[0] += ab
        self._part[1] += aa
        self._part[2] += bb
        tot[0] += ab
        tot[1] += aa
        tot[2] += bb

    def _finish_part(self) -> None:
        ab, aa, bb = self._part
        self._add_rows(np.array([ab]), np.array([aa]), np.array([bb]))
        self._part = [0.0, 0.0, 0.0]

    def _add_rows(self, ab: np.ndarray, aa: np.ndarray, bb: np.ndarray) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = ab / (np.sqrt(aa) * np.sqrt(bb))
        a_zero, b_zero = aa == 0.0, bb == 0.0
        if a_zero.any() or b_zero.any():
            cos = np.where(a_zero & b_zero, 1.0, np.where(a_zero | b_zero, 0.0, cos))
        self.rows += cos.size
        self.rows_cos_sum += float(cos.sum())
        self.rows_cos_min = min(self.rows_cos_min, float(cos.min()))

    def result(self) -> MetricValues:
        """The metrics of everything added so far (docs/METRICS.md section 1, with its edge cases). Changes nothing: it
        may be called again, and more blocks may follow."""
        if self.numel == 0:
            return MetricValues("empty", {m: None for m in TENSOR_METRICS}, 0, 0)
        rows, cos_sum, cos_min = self.rows, self.rows_cos_sum, self.rows_cos_min
        if self.offset % self.row_len:  # the row still open counts as it stands
            cos = _cosine(*self._part)
            rows, cos_sum, cos_min = rows + 1, cos_sum + cos, min(cos_min, cos)
        n = self.numel - self.excluded
        counts = {"nan_mismatch": float(self.nan_mismatch), "inf_mismatch": float(self.inf_mismatch)}
        if n <= 0:
            values = {m: None for m in TENSOR_METRICS}
            values.update(counts)
            return MetricValues("no-finite", values, self.numel, self.excluded)
        mse = self.dd / n
        if self.aa == 0.0:
            rel_l2 = 0.0 if self.dd == 0.0 else math.inf
        else:
            rel_l2 = math.sqrt(self.dd) / math.sqrt(self.aa)
        values = {
            "max_abs_diff": self.mad,
            "mean_abs_diff": self.sad / n,
            "mse": mse,
            "rmse": math.sqrt(mse),
            "rel_l2": rel_l2,
            "cosine": _cosine(self.ab, self.aa, self.bb),
            "sqnr_db": _ratio_db(self.aa, self.dd),
            "psnr_db": _ratio_db(self.peak * self.peak, mse),
            "allclose_frac": (n - self.fails) / n,
            **counts,
            "cos_rows_mean": cos_sum / rows if rows else None,
            "cos_rows_min": cos_min if rows else None,
        }
        return MetricValues("ok", values, self.numel, self.excluded)


_COMPILED_TYPES = (np.dtype(np.float32), np.dtype(np.float64))
_COMPILED_MIN = 1 << 16  # elements: smaller blocks never import numba (CLI tools, tests on tiny dumps)


def _compiled_for(a: np.ndarray, b: np.ndarray):
    """``analyze.tensor_kernels`` when it takes this pair of flat blocks, else None (the numpy path)."""
    # the same dtype on both sides, contiguous and writable: the layouts the probe compiled for (numba compiles anew
    # for any other: seconds, in the middle of a comparison)
    if a.dtype == b.dtype and a.dtype in _COMPILED_TYPES and a.size >= _COMPILED_MIN and a.flags.c_contiguous \
            and b.flags.c_contiguous and a.flags.writeable and b.flags.writeable:
        return _kernels()
    return None


def _from_bits(bits: int) -> float:
    """The float64 whose bits are the int64 ``bits``."""
    return float(np.int64(bits).view(np.float64))


def _probe(kernels) -> None:
    for dtype in _COMPILED_TYPES:
        x = np.arange(3, dtype=dtype)
        kernels.block_metrics(x, x.copy(), 2, 0, DEFAULT_ATOL, DEFAULT_RTOL, 0.0, 0.0, 0.0)


def _kernels():
    """``analyze.tensor_kernels``, or None without numba (then numpy does the work); imported once."""
    return load("analyze.tensor_kernels", _probe)


def tensor_metrics(a: np.ndarray, b: np.ndarray, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                   tile: int = _TILE) -> MetricValues:
    """Every tensor metric of two same-shape in-memory arrays (convenience wrapper of the accumulator).

    Raises:
        ValueError: the shapes differ.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    acc = TensorMetricAccumulator(a.shape, atol=atol, rtol=rtol, tile=tile)
    if a.size:
        acc.update(a, b)
    return acc.result()


def _rel(ref: float, cand: float) -> float | None:
    if math.isnan(ref) or math.isnan(cand):
        return None if math.isnan(ref) and math.isnan(cand) else math.inf
    if ref == cand:
        return 0.0
    if ref == 0.0:
        return math.inf
    return abs(cand - ref) / abs(ref)


def stats_metrics(ref: TensorStats, cand: TensorStats) -> MetricValues:
    """Compare two statistics-only records on their statistics: ``stats_rel_<f>`` = |cand-ref|/|ref|.

    ``stats_rel_l2`` is a lower bound of ``rel_l2`` (triangle inequality), which is why it alone decides the
    default tolerance for statistics-only records.
    """
    values = {f"stats_rel_{f}": _rel(getattr(ref, f), getattr(cand, f)) for f in STATS_FIELDS}
    values["nan_count_diff"] = float(cand.nan_count - ref.nan_count)
    values["inf_count_diff"] = float(cand.inf_count - ref.inf_count)
    return MetricValues("ok", values, int(ref.numel), 0)

