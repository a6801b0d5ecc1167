"""The judge: the one place that decides whether a record, and so its site, is over its limit (docs/METRICS.md
section 6).

``compare`` judges every record once, right after measuring it, and stores the decision on the record and its
site; the FAIL lines, the totals, the CSV, the first divergence, the localization curve, the thresholds summary and
the verdict all read that decision, never a rule of their own. A site is judged in one of three ways:

- ``thresholds``: a thresholds file has limits for the site: every limited metric against its limit, in the
  metric's direction (DIRECTIONS); the site's decision is its worst record (the largest ratio to a limit);
- ``floor``: a noise-floor dump was given: the excess of ``rel_l2`` (``stats_rel_l2``) over the floor's error for
  the same key, and of ``1 - cosine`` over the floor's, against the default tolerance;
- ``tolerance`` otherwise: ``rel_l2 > tol`` or ``cosine < 1 - tol`` (``stats_rel_l2 > tol`` for statistics-only
  records), tol from the lower-precision dtype (tolerances.py).

In every way NaN or Inf on one side only is over (``nan_mismatch``, ``inf_mismatch``; for statistics-only
records ``nan_count_diff``, ``inf_count_diff``), a metric that is NaN is over, one that is not a number here (None:
an empty tensor) is not judged, and an exact record
(``rel_l2 == 0``) is never over a limit of another metric. A record that could not be compared (a shape mismatch,
a damaged record) is never over: it is an error, listed as such, and the verdict fails on it, but it is never
taken for a numeric divergence.

A replayed module call (analyze/local_error.py) is judged apart, by ``judge_local``: its **local error** (the
candidate's output against the reference module's replay on the candidate's own inputs) is *introduced here* when
it exceeds ``factor`` times the error the candidate's precision alone explains (docs/METRICS.md section 7), or
when the candidate has NaN/Inf that the replay in its dtype does not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .tensor_metrics import STATS_FIELDS

#: Each judged metric's direction: ``max`` when larger is worse, ``min`` when smaller is worse.
DIRECTIONS = {"rel_l2": "max", "cosine": "min", "cos_rows_mean": "min", "cos_rows_min": "min",
              "max_abs_diff": "max", "mean_abs_diff": "max", "rmse": "max", "mse": "max", "allclose_frac": "min",
              **{f"stats_rel_{f}": "max" for f in STATS_FIELDS}}
JUDGED_BY = ("tolerance", "floor", "thresholds")


@dataclass(frozen=True)
class Decision:
    """Whether one record (or site) is over its limit, and what decided it.

    Attributes:
        over: over the limit.
        judged_by: ``tolerance``, ``floor`` or ``thresholds``.
        metric: the metric that decided (``error`` for a record that could not be compared), or None.
        value: its value (the excess over the floor when judged by the floor). limit: the limit it met.
        ratio: badness relative to the limit's (1 = at the limit; inf for an error or a one-sided NaN).
        key: the record's key (a site's decision: the record that decided it).
    """

    over: bool
    judged_by: str
    metric: str | None = None
    value: float | None = None
    limit: float | None = None
    ratio: float | None = None
    key: str | None = None


def badness(metric: str, value: float) -> float:
    """A value on the scale where larger is worse (``1 - value`` for a ``min`` metric such as cosine)."""
    return 1.0 - value if DIRECTIONS.get(metric) == "min" else value


def limit_ratio(metric: str, value: float | None, limit: float) -> tuple[float, bool]:
    """How far ``value`` is from ``limit`` on the badness scale (1 = at the limit), and whether it is over.

    Over-or-not compares on the metric's own scale (exact: a limit built with margin 1 from this very value is
    not over); NaN is always over.
    """
    if value is None or math.isnan(value):
        return math.inf, True
    if DIRECTIONS.get(metric) == "min":
        over = value < limit
    else:
        over = value > limit
    bad, lim = badness(metric, value), badness(metric, limit)
    if lim <= 0.0:
        return (math.inf if bad > 0.0 else 0.0), over
    return bad / lim, over


def judge_record(metrics: dict, *, status: str = "ok", stats_only: bool = False, tolerance: float = 0.0,
                 limits: dict | None = None, floor: tuple | None = None, key: str | None = None) -> Decision:
    """Judge one record's metrics.

    Args:
        metrics: the record's metric values (all of them: judge before any display filter).
        status: the record's status (``error``: it could not be compared).
        stats_only: a statistics-only record (judged on ``stats_rel_l2``).
        tolerance: the default tolerance of the record's dtypes.
        limits: the thresholds of the record's site, ``{metric: {"limit": x, ...}}``: judged by thresholds.
        floor: ``(error, cosine)`` of the floor report for the same key: judged by the excess over it.
        key: recorded in the decision.
    """
    how = "thresholds" if limits is not None else ("floor" if floor is not None else "tolerance")
    if status == "error":  # not a numeric divergence: the report lists it as an error (and the verdict fails)
        return Decision(False, how, "error", None, None, None, key)
    # NaN/Inf on one side only: never the same function (statistics-only records: the counts differ)
    for name in ("nan_mismatch", "inf_mismatch", "nan_count_diff", "inf_count_diff"):
        if metrics.get(name):
            return Decision(True, how, name, float(metrics[name]), 0.0, math.inf, key)
    if limits is not None:
        return _against_thresholds(metrics, limits, key)
    if floor is not None:
        metrics = _excess_over_floor(metrics, floor, stats_only)
    return _against_tolerance(metrics, tolerance, stats_only, how, key)


def _against_tolerance(m: dict, tol: float, stats_only: bool, how: str, key) -> Decision:
    names = ("stats_rel_l2",) if stats_only else ("rel_l2", "cosine")
    rel = m.get("rel_l2")
    for name in names:
        v = m.get(name)
        if v is None:
            continue
        limit = 1.0 - tol if name == "cosine" else tol
        ratio, over = limit_ratio(name, v, limit)
        # rel_l2 == 0 means a == b exactly; the computed cosine can still round to 1 - 1 ulp (exact dtypes, tol 0)
        if over and not (name == "cosine" and rel == 0.0):
            return Decision(True, how, name, v, limit, ratio, key)
    return Decision(False, how, None, None, None, None, key)


def _against_thresholds(m: dict, limits: dict, key) -> Decision:
    if m.get("rel_l2") == 0.0:  # a == b: no threshold can fail (cosine may still round to 1 - ulp)
        return Decision(False, "thresholds", None, None, None, None, key)
    worst = None
    for metric, entry in limits.items():
        if m.get(metric) is None:  # not computed, or not a number here (an empty tensor): nothing to judge
            continue
        ratio, over = limit_ratio(metric, m[metric], entry["limit"])
        rank = (over, -1.0 if math.isnan(ratio) else ratio)
        if worst is None or rank > worst[0]:
            worst = (rank, Decision(over, "thresholds", metric, m[metric], entry["limit"], ratio, key))
    return worst[1] if worst is not None else Decision(False, "thresholds", None, None, None, None, key)


def _excess_over_floor(m: dict, floor: tuple, stats_only: bool) -> dict:
    """The metrics with error and ``1 - cosine`` reduced by the floor's for the same key."""
    err, cos = floor
    m = dict(m)
    name = "stats_rel_l2" if stats_only else "rel_l2"
    if m.get(name) is not None and err is not None and not math.isnan(err):
        m[name] = m[name] - err
    if m.get("cosine") is not None and cos is not None and not math.isnan(cos):
        m["cosine"] = 1.0 - ((1.0 - m["cosine"]) - (1.0 - cos))
    return m


#: A module call introduces error when its local error exceeds this many times the expected noise (measured on
#: clean bfloat16 captures of two decoder families: at most 1.4 on the same host; int8-rounded weights give 3.3-4.5).
DEFAULT_REPLAY_FACTOR = 2.0


def judge_local(local: float | None, expected: float | None, *, factor: float = DEFAULT_REPLAY_FACTOR,
                non_finite: int = 0, key: str | None = None) -> Decision:
    """Judge one replayed output: ``local`` (``rel_l2`` of the candidate against the reference replay) against
    ``factor * expected`` (``expected``: the noise its precision explains).

    Returns:
        A Decision judged by ``replay``: metric ``non_finite`` (NaN/Inf the candidate has and its dtype's replay has
        not) or ``local_rel_l2``; ratio = local / (factor * expected) (inf when that limit is 0 and local is not).
    """
    if non_finite:
        return Decision(True, "replay", "non_finite", float(non_finite), 0.0, math.inf, key)
    if local is None or expected is None:
        return Decision(False, "replay", None, None, None, None, key)
    limit = factor * expected
    if math.isnan(local):
        return Decision(True, "replay", "local_rel_l2", local, limit, math.inf, key)
    ratio = local / limit if limit > 0.0 else (math.inf if local > 0.0 else 0.0)
    return Decision(local > limit, "replay", "local_rel_l2", local, limit, ratio, key)


def judge_site(decisions: list[Decision], judged_by: str) -> Decision:
    """A site's decision from its records' (in record order): over when any record is. By tolerance or floor the
    deciding record is the first one over; by thresholds it is the worst one (over first, then the largest ratio to
    a limit), kept even when nothing is over, so that a thresholds summary can rank sites by how close they are."""
    if judged_by == "thresholds":
        ranked = [d for d in decisions if d.metric is not None and d.metric != "error"]
        if not ranked:
            return Decision(False, judged_by)
        return max(ranked, key=lambda d: (d.over, -1.0 if d.ratio is None or math.isnan(d.ratio) else d.ratio))
    return next((d for d in decisions if d.over), Decision(False, judged_by))
