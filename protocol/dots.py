"""Float64 dot products through BLAS, in calls small enough to stay on one thread.

A BLAS ``ddot`` runs at cache speed (about 2x ``np.einsum``), but OpenBLAS splits a dot of more than 10,000
elements over its own threads, and on a busy machine (or beside torch's OpenMP team) those threads spin and the call
runs ~50x slower. Every call here covers at most ``ROW`` elements; ``np.vecdot`` loops over many such rows in C.
Overflow and NaN give IEEE results without a warning, as ``np.einsum`` does: callers check the result.
"""
from __future__ import annotations

import numpy as np

ROW = 8192  # elements per BLAS call: below OpenBLAS's 10,000-element threading threshold
_SHORT_ROW = 64  # below, a BLAS call per row costs more than einsum's loop (measured: 16 -> einsum 1.4x faster)


def dot(x: np.ndarray, y: np.ndarray) -> float:
    """``sum(x * y)`` of two 1-D contiguous float64 arrays of the same length."""
    m = x.size - x.size % ROW
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.vecdot(x[:m].reshape(-1, ROW), y[:m].reshape(-1, ROW)).sum()) if m else 0.0
        if m < x.size:
            total += float(np.dot(x[m:], y[m:]))
    return total


def row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row ``sum(a * b, axis=-1)`` of two 2-D float64 arrays with contiguous rows (a float64 vector)."""
    width = a.shape[-1]
    with np.errstate(over="ignore", invalid="ignore"):
        if width < _SHORT_ROW:
            return np.einsum("ij,ij->i", a, b)
        if width <= ROW:
            return np.vecdot(a, b)
        out = np.vecdot(a[:, :ROW], b[:, :ROW])
        for start in range(ROW, width, ROW):
            out += np.vecdot(a[:, start:start + ROW], b[:, start:start + ROW])
    return out
