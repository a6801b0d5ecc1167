"""CSV tables of a report: one file per table, named ``<stem><table>.csv`` (REPORT_SCHEMA.md, "CSV")."""
from __future__ import annotations

import csv
import os

from ..report import Report


def table_file(table: str, stem: str | None = None) -> str:
    """A table's file name: ``<table>.csv``, or with a stem ``<stem>.csv`` for the sites table and
    ``<stem>.<table>.csv`` for the others (the shared folder's reports: SPEC.md section 13.3)."""
    if stem is None:
        return f"{table}.csv"
    return f"{stem}.csv" if table == "sites" else f"{stem}.{table}.csv"


def write_csv(report: Report, folder: str | os.PathLike, *, stem: str | None = None) -> list[str]:
    """Write the tables ``sites`` (one row per site: aggregates and the judge's decision), ``records`` (one row
    per record and metric values), ``logits`` (one row per logit record), ``unmatched`` and, with a replay,
    ``local`` (one row per replayed module: its local error against the expected noise) into ``folder``, named by
    ``table_file``.

    Returns:
        The files written.
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    metrics = sorted({m for s in report.sites for m in s.aggregates})
    stats = ("mean", "std", "min", "max", "p50", "p90", "p99")
    written = []
    path = os.path.join(folder, table_file("sites", stem))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "site", "call", "module_type", "kind", "dtype_ref", "dtype_cand", "records",
                    "errors", "tolerance", "over_tolerance", "decided_by"]
                   + [f"{m}_{s}" for m in metrics for s in stats])
        for s in report.sites:
            w.writerow([s.index, s.site, s.call, s.module_type, s.kind, s.dtype_ref, s.dtype_cand,
                        len(s.records), s.errors, s.tolerance, int(s.over_tolerance), s.decided_by or ""]
                       + [_cell((s.aggregates.get(m) or {}).get(st)) for m in metrics for st in stats])
    written.append(path)
    rec_metrics = sorted({m for s in report.sites for r in s.records for m in r.metrics})
    path = os.path.join(folder, table_file("records", stem))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "site", "key", "rank", "sample", "step", "kind", "status", "numel", "excluded",
                    "over_tolerance", "error"] + rec_metrics)
        for s in report.sites:
            for r in s.records:
                w.writerow([s.index, s.name, r.key, r.rank, r.sample, r.step, r.kind, r.status, r.numel,
                            r.excluded, int(r.over_tolerance), r.error or ""]
                           + [_cell(r.metrics.get(m)) for m in rec_metrics])
    written.append(path)
    path = os.path.join(folder, table_file("logits", stem))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        names = sorted({m for ls in report.logits for r in ls.records for m in r.means})
        w.writerow(["site", "key", "rank", "sample", "step", "tokens", "scored"] + [f"{m}_mean" for m in names])
        for ls in report.logits:
            for r in ls.records:
                w.writerow([ls.site, r.key, r.rank, r.sample, r.step, r.tokens, r.scored]
                           + [_cell(r.means.get(m)) for m in names])
    written.append(path)
    path = os.path.join(folder, table_file("unmatched", stem))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["side", "key"])
        for side in ("reference_only", "candidate_only"):
            for key in report.unmatched.get(side, []):
                w.writerow([side.split("_")[0], key])
    written.append(path)
    if report.local is not None:
        path = os.path.join(folder, table_file("local", stem))
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["module", "call", "module_class", "site", "key", "rank", "dtype", "local_rel_l2", "cosine",
                        "max_abs_diff", "expected", "expected_low", "expected_reference", "limit", "ratio",
                        "introduced", "decided_by", "note"])
            for e in report.local.get("modules", []):
                w.writerow([e["module"], e["call"], e["module_class"], e["site"], e["key"], e["rank"], e["dtype"],
                            _cell(e["local"]), _cell(e["cosine"]), _cell(e["max_abs_diff"]), _cell(e["expected"]),
                            _cell(e["expected_low"]), _cell(e["expected_reference"]), _cell(e["limit"]),
                            _cell(e["ratio"]), int(e["introduced"]), e["decided_by"] or "", e["note"] or ""])
        written.append(path)
    return written


def _cell(v):
    return "" if v is None else repr(float(v)) if isinstance(v, float) else v
