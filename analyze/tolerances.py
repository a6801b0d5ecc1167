"""Default tolerances when no thresholds are given (docs/METRICS.md section 6); judge.py applies them.

A site diverges when ``rel_l2 > tol`` or ``cosine < 1 - tol``, where ``tol`` belongs to the lower-precision side's
dtype. Statistics-only records use ``stats_rel_l2 > tol`` (a lower bound of ``rel_l2``, so a flag is never false).

    dtype                                   tol
    float64                                 1e-7
    float32                                 1e-5
    float16, bfloat16                       1e-2
    float8_* (e4m3fn, e5m2, ...fnuz)        1e-1
    integers, bool                          0 (exact)

Override any entry with ``tolerances={"float32": 1e-4}`` (API) or the thresholds that a later step calibrates.
"""
from __future__ import annotations

from protocol.dtypes import FLOAT_TYPES

DEFAULT_TOLERANCES: dict[str, float] = {
    "float64": 1e-7, "float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2,
    "float8_e4m3fn": 1e-1, "float8_e5m2": 1e-1, "float8_e4m3fnuz": 1e-1, "float8_e5m2fnuz": 1e-1,
}
_EXACT = 0.0


def dtype_class(dtype: str) -> str:
    """``float``, ``int`` or ``bool``: records of different classes are not compared."""
    if dtype in FLOAT_TYPES:
        return "float"
    if dtype == "bool":
        return "bool"
    return "int"


def tolerance_for(dtype_ref: str, dtype_cand: str, table: dict | None = None) -> float:
    """The tolerance of a record pair: the larger (lower-precision) of the two dtypes' entries."""
    merged = {**DEFAULT_TOLERANCES, **(table or {})}
    return max(merged.get(dtype_ref, _EXACT if dtype_class(dtype_ref) != "float" else merged["float32"]),
               merged.get(dtype_cand, _EXACT if dtype_class(dtype_cand) != "float" else merged["float32"]))
