"""Applying a thresholds file to a report: pass/fail per site, failure rates per logit metric (thresholds.py builds
and reads the files; this module judges a report against one)."""
from __future__ import annotations

import math

import numpy as np

from .errors import ReportError
from .judge import DIRECTIONS, Decision, judge_record, judge_site, limit_ratio
from .localize import report_sites
from .thresholds import (DEFAULT_MAX_FAILURE_RATE, MAX_LISTED_TOKENS, MAX_WORST_SITES, as_thresholds,
                         logit_token_values)


def _check_site(v, limits: dict) -> dict:
    """A thresholded site's entry of the summary, from the judge's decision (judge.py): the one compare stored,
    or, for a report judged otherwise (read from a file, judged by its tolerance), the judge's decision now."""
    if v.judged_by == "thresholds":  # compare judged these very records (before any --metrics filter): its word
        site = Decision(v.over_tolerance, "thresholds", v.decided_by, v.value, v.limit, key=v.decided_key)
        failed = sum(bool(r.get("over")) for r in v.records)
    else:
        decisions = [judge_record(r["metrics"], status=r["status"] or "ok", limits=limits, key=r["key"])
                     for r in v.records]
        site, failed = judge_site(decisions, "thresholds"), sum(d.over for d in decisions)
    out = {"index": v.index, "site": v.name, "failed": site.over, "records": len(v.records),
           "records_failed": failed, "metric": None, "value": None, "limit": None, "direction": None,
           "ratio": None, "key": None}
    if site.metric is not None:
        ratio = limit_ratio(site.metric, site.value, site.limit)[0] if site.limit is not None else math.inf
        out.update(metric=site.metric, value=site.value, limit=site.limit, key=site.key, ratio=ratio,
                   direction=DIRECTIONS.get(site.metric, "max"))
    return out


def _token_ids(inputs, sample: int, step: int, position: int) -> tuple:
    if inputs is None or step != 0 or sample >= len(inputs.samples):
        return None, None
    ids = inputs.samples[sample].arrays.get("input_ids")
    if ids is None:
        return None, None
    flat = np.asarray(ids).reshape(-1)
    token = int(flat[position]) if position < flat.size else None
    nxt = int(flat[position + 1]) if position + 1 < flat.size else None
    return token, nxt


def _check_logits(ls, limits: dict, max_failure_rate: float, inputs, report_path) -> list:
    out = []
    site = ls.site
    for metric, entry in limits.items():
        got = logit_token_values(ls, metric)
        if got is None:
            raise ReportError(f"the logits of site {site} carry no per-token {metric} values, so its failure rate "
                              "cannot be counted", report_path,
                              "write the report with 'parity compare --tokens', or pass --thresholds to "
                              "'parity compare' directly")
        vals, where = got
        limit = entry["limit"]
        with np.errstate(invalid="ignore"):
            over = np.isnan(vals) | (vals > limit)
        n, failed = int(vals.size), int(over.sum())
        rate = failed / n if n else 0.0
        idx = np.nonzero(over)[0]
        order = idx[np.argsort(-np.nan_to_num(vals[idx], nan=np.inf), kind="stable")][:MAX_LISTED_TOKENS]
        tokens = []
        for i in order:
            sample, step, rank, pos = where[i]
            token, nxt = _token_ids(inputs, sample, step, pos)
            tokens.append({"sample": sample, "step": step, "rank": rank, "position": pos, "token": token,
                           "next_token": nxt, "value": float(vals[i])})
        out.append({"site": site, "metric": metric, "limit": limit, "tokens": n, "failed_tokens": failed,
                    "failure_rate": rate, "max_failure_rate": max_failure_rate, "passed": rate <= max_failure_rate,
                    "failing_tokens": tokens, "listed": len(tokens)})
    return out


def apply_thresholds(report, thresholds, *, max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE, inputs=None,
                     report_path: str | None = None) -> dict:
    """Judge a report against thresholds.

    Args:
        report: a Report (from compare, or ``read_report``: then its logit records need ``per_token`` values,
            i.e. written with ``--tokens``, when a logits site is thresholded).
        thresholds: a Thresholds, a thresholds document, or a path.
        max_failure_rate: the allowed share of tokens over a logit limit (0.01 = 1%).
        inputs: the InputSet, to name the token ids of failing tokens (optional).
        report_path: named in error messages.

    Returns:
        ``{"file", "statistic", "margin", "max_failure_rate", "passed", "sites_checked", "sites_failed",
        "failures": [site results that failed, execution order], "worst_sites": [the highest ratios],
        "unthresholded": [sites of the report without thresholds], "missing": [thresholded sites absent from the
        report], "logits": [per logits site and metric: limit, tokens, failed_tokens, failure_rate, passed,
        failing_tokens: [{"sample", "step", "rank", "position", "token", "next_token", "value"}]],
        "site_results": {name: site result}}``. A site result is ``{"index", "site", "failed", "records",
        "records_failed", "metric", "value", "limit", "direction", "ratio", "key"}`` (the worst record's values;
        ratio = badness / limit badness).

    Raises:
        ThresholdFileError: a bad thresholds file. ReportError: a thresholded logits site without per-token values.
        ValueError: max_failure_rate outside [0, 1].
    """
    if not 0.0 <= max_failure_rate <= 1.0:
        raise ValueError("max_failure_rate must be within [0, 1]")
    th = as_thresholds(thresholds)
    site_results, unthresholded = {}, []
    for v in report_sites(report):
        limits = th.sites.get(v.name)
        if limits is None:
            unthresholded.append(v.name)
            continue
        site_results[v.name] = _check_site(v, limits)
    failures = [r for r in site_results.values() if r["failed"]]
    ranked = [r for r in site_results.values() if r["ratio"] is not None]
    worst = sorted(ranked, key=lambda r: (-(-1.0 if math.isnan(r["ratio"]) else r["ratio"]), r["index"]))
    logits = []
    seen_logits = set()
    for ls in report.logits:
        site = ls.site
        seen_logits.add(site)
        if site in th.logits:
            logits.extend(_check_logits(ls, th.logits[site], max_failure_rate, inputs, report_path))
    missing = [n for n in th.sites if n not in site_results] + [s for s in th.logits if s not in seen_logits]
    prov = th.provenance
    return {"file": th.path, "statistic": prov.get("statistic"), "margin": prov.get("margin"),
            "max_failure_rate": max_failure_rate, "passed": not failures and all(x["passed"] for x in logits),
            "sites_checked": len(site_results), "sites_failed": len(failures), "failures": failures,
            "worst_sites": worst[:MAX_WORST_SITES], "unthresholded": unthresholded, "missing": missing,
            "logits": logits, "site_results": site_results}


def check_report_file(report_path, thresholds, *, max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE) -> dict:
    """``parity thresholds check``: read a report (and, when it can be found, its input set for token ids) and
    judge it against thresholds (see ``apply_thresholds``).

    Raises:
        ReportError: an unreadable report. ThresholdFileError: a bad thresholds file.
    """
    import os

    from protocol import read_input_set
    from protocol.errors import ParityError

    from .report import read_report
    th = as_thresholds(thresholds)  # a bad thresholds file fails first, before the report is read
    report = read_report(report_path)
    inputs = None
    path = (report.inputs or {}).get("path")
    if path and os.path.isfile(path):
        try:
            inputs = read_input_set(path)
        except ParityError:  # token ids are a convenience: the check does not need them
            inputs = None
    result = apply_thresholds(report, th, max_failure_rate=max_failure_rate, inputs=inputs,
                              report_path=os.fspath(report_path))
    if report.errors:
        result["passed"] = False
    return result
