"""Per-record statistics (SPEC.md section 7), computed in float64 over the finite elements, streamable."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

_BLOCK = 1 << 18  # elements per float64 block (2 MB): stays in cache across the passes, memory bounded


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
        if flat.size == 0:
            return
        # one float64 scratch buffer per chunk, reused by every block: no allocation (and page faults) per block,
        # and the block stays in cache across the few passes below
        buf = np.empty(min(flat.size, _BLOCK), dtype=np.float64)
        native_minmax = flat.dtype.kind == "f" and flat.dtype.itemsize >= 4 or flat.dtype.kind in "iu" and flat.dtype.itemsize < 8
        for start in range(0, flat.size, _BLOCK):
            block = flat[start:start + _BLOCK]
            x = buf[:block.size]
            # min/max in the native dtype are exact and read half the bytes (or less) of the float64 copy; 64-bit
            # ints are widened first (rounding beyond 2**53, monotonic, so the same result either way)
            minmax = (float(block.min()), float(block.max())) if native_minmax and block.size else None
            np.copyto(x, block, casting="unsafe")  # exact, except 64-bit ints beyond 2**53 (rounded)
            self._update_block(x, minmax)

    def _update_block(self, x: np.ndarray, minmax: tuple[float, float] | None = None) -> None:
        """Fold in one float64 block (the scratch buffer: modified in place); ``minmax`` when already known."""
        bmin, bmax = minmax if minmax is not None else (x.min(), x.max())
        if not (math.isfinite(bmin) and math.isfinite(bmax)):  # min/max propagate NaN, so both finite => all finite
            finite = np.isfinite(x)
            nan = int(np.isnan(x).sum())
            self.nan += nan
            self.inf += int(x.size - np.count_nonzero(finite)) - nan
            x = x[finite]
            if x.size == 0:
                return
            bmin, bmax = x.min(), x.max()
        n = x.size
        bmean = float(x.sum()) / n
        x -= bmean
        # einsum rather than np.dot: a multi-threaded BLAS dot on a busy machine spins and runs ~50x slower
        bm2 = float(np.einsum("i,i->", x, x))
        total = self.n + n
        delta = bmean - self.mean
        self.mean += delta * n / total
        self.m2 += bm2 + delta * delta * self.n * n / total
        self.n = total
        self.min = min(self.min, float(bmin))
        self.max = max(self.max, float(bmax))

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


def compute_stats(values: np.ndarray) -> TensorStats:
    """Statistics of one array of decoded numeric values (bool counts as 0/1)."""
    acc = StatsAccumulator()
    acc.update(values)
    return acc.result()
