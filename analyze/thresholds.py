"""Thresholds calibrated from baseline reports, and their application (docs/ARCHITECTURE.md section 6,
docs/METRICS.md sections 6.4-6.5).

**Build** (``build_thresholds``): from one or more baseline reports (e.g. CPU fp32 vs GPU fp16 at several batch sizes
and sequence lengths), per site and metric: a statistic (``mean``, ``max``, ``p99``, ``p99.9``) over every baseline
record's value, times a margin. Sites are matched by name (``site`` or ``site#call``) across reports, never by key
or shape, and only size-independent metrics qualify (relative errors, cosines, element-wise maxima and means; never
an unnormalised norm or a count). Per logits site, per logit metric: the percentile over tokens (99 by default,
the way aiu-fms-testing-utils derives its ``ce`` and ``diff_mean`` thresholds), times the margin.

Values are handled on a *badness* scale where larger is worse: ``1 - x`` for the cosine-like metrics (``cosine``,
``cos_rows_*``, ``allclose_frac``), the value itself otherwise; the statistic and the margin apply to the badness,
so a cosine baseline of 0.9990 with margin 2 gives the limit 0.9980. The file stores limits on the metric's scale.

**Apply** (``threshold_check.apply_thresholds``): every record of a thresholded site against each of its limits
(a record fails when over a ``max`` limit or under a ``min`` limit; NaN, a one-sided NaN/Inf, or a record that
could not be compared fails too; a record equal to its reference passes); per logit metric, the **failure rate** = the share of tokens over the limit (the scored tokens when the
report has labels, else every row; NaN counts as over), failed when above ``max_failure_rate``.

File schema (``kind`` ``tensorparity.thresholds``, ``schema_version`` 1.0)::

    {"kind", "schema_version", "created", "producer",
     "provenance": {"reports": [{"path", "sha256", "reference", "candidate", "created"}], "statistic", "margin",
                    "logit_percentile", "metrics", "logit_metrics"},
     "sites": {"<site name>": {"module_type", "metrics": {"<metric>": {"limit", "direction", "baseline", "n"}}}},
     "logits": {"<logits site>": {"<metric>": {"limit", "direction", "baseline", "n", "source"}}}}
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np

from protocol import atomic_write_json, read_json

from .errors import ReportError, ThresholdFileError
from .judge import DIRECTIONS
from .localize import report_sites
from .report import read_report

THRESHOLDS_KIND = "tensorparity.thresholds"
THRESHOLDS_VERSION = "1.0"
STATISTICS = ("mean", "max", "p99", "p99.9")
#: Site metrics that may carry a threshold -> the side that is bad (``max``: larger is worse; ``min``: smaller).
SITE_METRICS = DIRECTIONS  # the metrics a site threshold may limit, with their direction (judge.py)
DEFAULT_SITE_METRICS = ("rel_l2", "cosine", "stats_rel_l2")
#: Per-token logit metrics that may carry a threshold (all: larger is worse).
LOGIT_THRESHOLD_METRICS = ("kl", "kl_reverse", "js", "kl_abs_variant", "fms_ce", "fms_diff_mean")
DEFAULT_LOGIT_METRICS = ("kl", "js", "fms_ce", "fms_diff_mean")
DEFAULT_STATISTIC, DEFAULT_MARGIN, DEFAULT_LOGIT_PERCENTILE = "max", 1.5, 99.0
DEFAULT_MAX_FAILURE_RATE = 0.01
MAX_LISTED_TOKENS = 50
MAX_WORST_SITES = 10


def _badness(metric: str, value: float) -> float:
    return 1.0 - value if SITE_METRICS.get(metric) == "min" else value


def _from_badness(metric: str, bad: float) -> float:
    return 1.0 - bad if SITE_METRICS.get(metric) == "min" else bad


def statistic(values, stat: str) -> float:
    """``mean`` / ``max`` / ``p99`` / ``p99.9`` of values (NaN left out; percentiles by linear interpolation)."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan
    if stat == "mean":
        return float(arr.mean()) if np.isfinite(arr).all() else float(arr.max())
    if stat == "max":
        return float(arr.max())
    if stat.startswith("p"):
        with np.errstate(invalid="ignore"):
            return float(np.percentile(arr, float(stat[1:])))
    raise ValueError(f"unknown statistic {stat!r}; choose from {', '.join(STATISTICS)}")


# -- build -----------------------------------------------------------------------------------------------------------


def build_thresholds(reports, *, stat: str = DEFAULT_STATISTIC, margin: float = DEFAULT_MARGIN,
                     logit_percentile: float = DEFAULT_LOGIT_PERCENTILE, metrics=None, logit_metrics=None) -> dict:
    """Build a thresholds document from baseline reports.

    Args:
        reports: report paths (JSON written by ``parity compare -o``), report dicts or Reports.
        stat: statistic over the baseline records of a site (``mean``, ``max``, ``p99``, ``p99.9``).
        margin: multiplies the statistic (on the badness scale); >= 1 for a tolerance above the baseline.
        logit_percentile: percentile over tokens for the logit metrics.
        metrics: site metrics to threshold (default DEFAULT_SITE_METRICS; see SITE_METRICS).
        logit_metrics: logit metrics to threshold (default DEFAULT_LOGIT_METRICS).

    Returns:
        The thresholds document (see the module docstring); write it with ``write_thresholds``.

    Raises:
        ValueError: an unknown statistic or metric, a negative margin, no report.
        ReportError: an unreadable report, or one whose logits carry neither per-token values nor the aggregate
            of the percentile asked for.
    """
    if stat not in STATISTICS:
        raise ValueError(f"unknown statistic {stat!r}; choose from {', '.join(STATISTICS)}")
    if not margin >= 0 or not 0 < logit_percentile <= 100:
        raise ValueError("the margin must be >= 0 and the logit percentile in (0, 100]")
    metrics = tuple(metrics or DEFAULT_SITE_METRICS)
    logit_metrics = tuple(logit_metrics or DEFAULT_LOGIT_METRICS)
    bad = [m for m in metrics if m not in SITE_METRICS] + [m for m in logit_metrics
                                                          if m not in LOGIT_THRESHOLD_METRICS]
    if bad:
        raise ValueError(f"metric(s) {', '.join(bad)} cannot carry a threshold (size-dependent or not per record); "
                         f"site metrics: {', '.join(SITE_METRICS)}; logit metrics: "
                         f"{', '.join(LOGIT_THRESHOLD_METRICS)}")
    if not reports:
        raise ValueError("no baseline report given")
    docs, sources = [], []
    for r in reports:
        doc, source = _load(r)
        docs.append(doc)
        sources.append(source)
    site_values: dict = {}
    site_types: dict = {}
    for doc in docs:
        for v in report_sites(doc):
            site_types.setdefault(v.name, v.module_type)
            per = site_values.setdefault(v.name, {m: [] for m in metrics})
            for r in v.records:
                if r["status"] == "error":
                    continue
                for m in metrics:
                    val = r["metrics"].get(m)
                    if val is not None:
                        per[m].append(_badness(m, float(val)))
    sites = {}
    for name, per in site_values.items():
        entry = {}
        for m, vals in per.items():
            if not vals:
                continue
            base = statistic(vals, stat)
            if math.isnan(base):
                continue
            entry[m] = {"limit": _from_badness(m, base * margin), "direction": SITE_METRICS[m],
                        "baseline": _from_badness(m, base), "n": len(vals)}
        if entry:
            sites[name] = {"module_type": site_types[name], "metrics": entry}
    logits = _logit_thresholds(docs, sources, logit_metrics, logit_percentile, margin)
    from importlib.metadata import PackageNotFoundError, version
    try:
        producer = f"tensorparity {version('tensorparity')}"
    except PackageNotFoundError:  # running from a source tree
        producer = "tensorparity"
    return {"kind": THRESHOLDS_KIND, "schema_version": THRESHOLDS_VERSION, "producer": producer,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "provenance": {"reports": [s for s in sources], "statistic": stat, "margin": margin,
                           "logit_percentile": logit_percentile, "metrics": list(metrics),
                           "logit_metrics": list(logit_metrics)},
            "sites": sites, "logits": logits}


def _load(report) -> tuple:
    if isinstance(report, (str, os.PathLike)):
        path = os.fspath(report)
        doc = read_report(path)
        with open(path, "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()
        source_path = os.path.abspath(path)
    else:
        doc, sha, source_path = report, None, None
    side = lambda d: {k: (d or {}).get(k) for k in ("label", "device", "dtype", "run_id")}  # noqa: E731
    return doc, {"path": source_path, "sha256": sha, "reference": side(doc.reference),
                 "candidate": side(doc.candidate), "created": doc.created}


def _selected_tokens(rec, metric: str):
    """A logit record's per-token values of ``metric`` over its scored rows (every row when none is scored), or
    None when the record does not carry per-token values."""
    per = rec.per_token or {}
    if metric not in per:
        return None
    vals = np.asarray(per[metric], dtype=np.float64)
    mask = rec.scored_mask
    return vals, (np.asarray(mask, dtype=bool) if mask is not None else np.zeros(vals.size, bool))


def logit_token_values(ls, metric: str):
    """Per-token values of one logits site and metric, with (sample, step, rank, position) of each; None when a
    record lacks per-token values."""
    recs = ls.records
    got = [(r, _selected_tokens(r, metric)) for r in recs]
    if not got or any(g is None for _, g in got):
        return None
    any_scored = any(mask.any() for _, (_, mask) in got)
    vals, where = [], []
    for r, (v, mask) in got:
        use = mask if any_scored else np.ones(v.size, bool)
        pos = np.nonzero(use)[0]
        vals.append(v[pos])
        where.extend((r.sample, r.step, r.rank, int(p)) for p in pos)
    return np.concatenate(vals) if vals else np.empty(0), where


def _logit_thresholds(docs, sources, metrics, percentile, margin) -> dict:
    pooled: dict = {}
    for doc, src in zip(docs, sources):
        for ls in doc.logits:
            site = ls.site
            for m in metrics:
                got = logit_token_values(ls, m)
                slot = pooled.setdefault(site, {}).setdefault(m, {"tokens": [], "aggregates": []})
                if got is not None:
                    vals = got[0]
                    slot["tokens"].append(vals[~np.isnan(vals)])
                    continue
                key = {50.0: "p50", 90.0: "p90", 99.0: "p99"}.get(float(percentile))
                agg = (ls.aggregates or {}).get(m) or {}
                if key is None or agg.get(key) is None:
                    raise ReportError(f"the logits of site {site} carry no per-token {m} values and no p"
                                      f"{percentile:g} aggregate", src.get("path"),
                                      "write the baseline reports with 'parity compare --tokens'")
                slot["aggregates"].append((float(agg[key]), int(agg.get("n") or 0)))
    out: dict = {}
    for site, per in pooled.items():
        for m, slot in per.items():
            if slot["aggregates"]:  # some reports without tokens: the largest per-report percentile (conservative)
                vals = [v for v, _ in slot["aggregates"]]
                vals += [float(np.percentile(t, percentile)) for t in slot["tokens"] if t.size]
                base, n, source = max(vals), sum(n for _, n in slot["aggregates"]) + sum(
                    t.size for t in slot["tokens"]), "max of per-report percentiles"
            else:
                tokens = np.concatenate(slot["tokens"]) if slot["tokens"] else np.empty(0)
                if tokens.size == 0:
                    continue
                base, n, source = float(np.percentile(tokens, percentile)), int(tokens.size), "pooled tokens"
            out.setdefault(site, {})[m] = {"limit": base * margin, "direction": "max", "baseline": base, "n": n,
                                           "source": source}
    return out


def write_thresholds(doc: dict, path: str | os.PathLike) -> None:
    """Write a thresholds document as JSON (atomically)."""
    atomic_write_json(path, doc)


# -- read ------------------------------------------------------------------------------------------------------------


@dataclass
class Thresholds:
    """A thresholds file, read and checked: ``sites`` (name -> metric -> entry), ``logits`` (site -> metric ->
    entry), ``provenance``, and the ``path`` it came from (None when built in memory)."""

    sites: dict
    logits: dict
    provenance: dict = field(default_factory=dict)
    path: str | None = None
    schema_version: str = THRESHOLDS_VERSION

    @classmethod
    def from_dict(cls, doc: dict, path: str | None = None) -> "Thresholds":
        """Check a thresholds document (see ``read_thresholds``) and wrap it."""
        where = path or "<thresholds>"
        if not isinstance(doc, dict) or doc.get("kind") != THRESHOLDS_KIND:
            raise ThresholdFileError(f"not a thresholds file (no kind {THRESHOLDS_KIND!r})", where,
                                     "build one with 'parity thresholds build REPORT.json... -o th.json'")
        version = str(doc.get("schema_version", ""))
        if version.split(".")[0] != THRESHOLDS_VERSION.split(".")[0]:
            raise ThresholdFileError(f"thresholds schema version {version or '(none)'} is not supported (this "
                                     f"reader knows {THRESHOLDS_VERSION.split('.')[0]}.x)", where,
                                     "rebuild the thresholds with this version of 'parity thresholds build'")
        sites, logits = doc.get("sites"), doc.get("logits", {})
        if not isinstance(sites, dict) or not isinstance(logits, dict):
            raise ThresholdFileError("'sites' and 'logits' must be objects", where, "rebuild the thresholds file")
        parsed_sites = {}
        for name, entry in sites.items():
            mets = entry.get("metrics") if isinstance(entry, dict) else None
            if not isinstance(mets, dict):
                raise ThresholdFileError(f"site {name!r} has no 'metrics' object", where, "rebuild the thresholds")
            parsed_sites[name] = {m: _check_entry(m, e, SITE_METRICS, where, name) for m, e in mets.items()}
        parsed_logits = {}
        for site, mets in logits.items():
            if not isinstance(mets, dict):
                raise ThresholdFileError(f"logits site {site!r} is not an object", where, "rebuild the thresholds")
            parsed_logits[site] = {m: _check_entry(m, e, dict.fromkeys(LOGIT_THRESHOLD_METRICS, "max"), where,
                                                   site) for m, e in mets.items()}
        return cls(parsed_sites, parsed_logits, doc.get("provenance") or {}, path, version)


def _check_entry(metric: str, entry, known: dict, where: str, site: str) -> dict:
    if metric not in known:
        raise ThresholdFileError(f"site {site!r}: unknown metric {metric!r}", where,
                                 f"use one of {', '.join(known)}")
    limit = entry.get("limit") if isinstance(entry, dict) else None
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or math.isnan(limit):
        raise ThresholdFileError(f"site {site!r}, metric {metric}: 'limit' must be a number", where,
                                 "rebuild the thresholds file")
    return {**entry, "limit": float(limit), "direction": known[metric]}


def read_thresholds(path: str | os.PathLike) -> Thresholds:
    """Read and check a thresholds file.

    Raises:
        ThresholdFileError: missing, not JSON, not a thresholds file, another MAJOR schema version, or malformed
            entries (the message names the file, the problem and what to do).
    """
    path = os.fspath(path)
    doc = read_json(path, "thresholds file", error=ThresholdFileError, hint="rebuild it with 'parity thresholds build'",
                    missing_hint="build one with 'parity thresholds build REPORT.json... -o th.json'")
    return Thresholds.from_dict(doc, path)


def as_thresholds(thresholds) -> Thresholds:
    """A Thresholds from a Thresholds, a document dict or a path."""
    if isinstance(thresholds, Thresholds):
        return thresholds
    if isinstance(thresholds, dict):
        return Thresholds.from_dict(thresholds)
    return read_thresholds(thresholds)

