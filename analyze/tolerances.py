"""Default tolerances when no thresholds are given (METRICS.md section 6).

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

import math

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


def over_tolerance(values: dict, tol: float, stats_only: bool = False) -> tuple[bool, str | None]:
    """Whether one record's metrics exceed the default tolerance, and the metric that decided it.

    NaN metrics count as over tolerance (nothing shows the record agrees), and so does any position where only one
    side is NaN or Inf.
    """
    if stats_only:
        v = values.get("stats_rel_l2")
        if v is not None and (math.isnan(v) or v > tol):
            return True, "stats_rel_l2"
        return False, None
    for name in ("nan_mismatch", "inf_mismatch"):  # NaN/Inf on one side only: never the same function
        if values.get(name):
            return True, name
    rel, cos = values.get("rel_l2"), values.get("cosine")
    if rel is None and cos is None:
        return False, None
    if rel is not None and (math.isnan(rel) or rel > tol):
        return True, "rel_l2"
    # rel_l2 == 0 means a == b exactly; the computed cosine can still round to 1 - 1 ulp (exact dtypes, tol 0)
    if cos is not None and (math.isnan(cos) or (cos < 1.0 - tol and rel != 0.0)):
        return True, "cosine"
    return False, None
