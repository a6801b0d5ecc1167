"""Per-record statistics (SPEC.md section 7), computed in float64 over the finite elements, streamable."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

_BLOCK = 1 << 20  # elements per float64 block: keeps temporaries in cache and memory bounded


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
        for start in range(0, flat.size, _BLOCK):
            self._update_block(flat[start:start + _BLOCK])

    def _update_block(self, block: np.ndarray) -> None:
        if block.dtype.kind == "f":
            finite = np.isfinite(block)
            if not finite.all():
                nan = int(np.isnan(block).sum())
                self.nan += nan
                self.inf += int(block.size - finite.sum()) - nan
                block = block[finite]
        if block.size == 0:
            return
        x = block.astype(np.float64, copy=False)
        n = x.size
        bmin, bmax = float(x.min()), float(x.max())
        bmean = float(x.sum()) / n
        d = x - bmean
        bm2 = float(np.dot(d, d))
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


def compute_stats(values: np.ndarray) -> TensorStats:
    """Statistics of one array of decoded numeric values (bool counts as 0/1)."""
    acc = StatsAccumulator()
    acc.update(values)
    return acc.result()
