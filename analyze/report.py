"""The comparison report: a versioned dataclass tree (REPORT_SCHEMA.md), JSON/CSV writers, terminal summary lines.

Numbers stay Python floats, including ``inf`` and ``nan``: the JSON file writes them as ``Infinity``/``NaN`` (what
Python's json module and most JSON5 readers accept) and ``read_report`` reads them back.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from protocol import atomic_write_json
from protocol.errors import ReportError

SCHEMA_VERSION = "1.2"
REPORT_KIND = "tensorparity.report"


def site_name(site: str, call: int) -> str:
    """A site's name in reports: ``site``, or ``site#call`` for a module called more than once per step."""
    return site if call == 0 else f"{site}#{call}"


@dataclass
class RecordResult:
    """One paired record (one sample, step, rank) of a site.

    ``kind`` is ``full``, ``stats-only``, ``slice`` or ``topk``; ``status`` is ``ok``, ``empty``, ``no-finite`` or
    ``error`` (then ``error`` says why, e.g. a shape or dtype-class mismatch, and ``metrics`` is empty).
    """

    key: str
    sample: int
    step: int
    rank: int
    seq: int
    kind: str
    status: str
    dtype_ref: str
    dtype_cand: str
    shape_ref: list
    shape_cand: list
    metrics: dict = field(default_factory=dict)
    numel: int = 0
    excluded: int = 0
    tolerance: float | None = None
    over_tolerance: bool = False
    decided_by: str | None = None
    error: str | None = None


@dataclass
class SiteResult:
    """All records of one site (module path + in/out + argument, and call index) across samples, steps, ranks.

    ``index`` is the site's position in the reference's execution order (the ``#41`` of the terminal line);
    ``aggregates`` maps metric -> summary.aggregate() of its per-record values; ``worst`` holds the max ``rel_l2``
    (or ``stats_rel_l2``) and min ``cosine`` over records.
    """

    index: int
    site: str
    call: int
    module_type: str
    kind: str
    dtype_ref: str
    dtype_cand: str
    tolerance: float | None
    records: list[RecordResult] = field(default_factory=list)
    aggregates: dict = field(default_factory=dict)
    worst: dict = field(default_factory=dict)
    over_tolerance: bool = False
    decided_by: str | None = None
    errors: int = 0
    judged_by: str = "tolerance"
    limit: float | None = None
    value: float | None = None
    decided_key: str | None = None

    @property
    def name(self) -> str:
        """``site`` or ``site#call`` for a module called more than once per step."""
        return site_name(self.site, self.call)

    def set_decision(self, decision) -> None:
        """Store the judge's decision of the site (judge.judge_site): over or not, how, by which record."""
        self.over_tolerance, self.decided_by, self.judged_by = decision.over, decision.metric, decision.judged_by
        self.limit, self.value, self.decided_key = decision.limit, decision.value, decision.key

    def values(self, metric: str) -> list:
        """Per-record values of one metric, in record order (None where absent)."""
        return [r.metrics.get(metric) for r in self.records]


@dataclass
class LogitRecordResult:
    """Logit metrics of one record (sample, step, rank): token counts, means over scored tokens, per-token arrays.

    ``tokens`` is every row, ``scored`` the rows with a next-token label (the summaries use the scored rows when
    there are any, else every row). ``per_token`` (metric -> float64 array over all rows) and ``scored_mask`` are
    written to JSON only with ``to_dict(tokens=True)``.
    """

    key: str
    sample: int
    step: int
    rank: int
    tokens: int
    scored: int
    means: dict = field(default_factory=dict)
    per_token: dict = field(default_factory=dict)
    scored_mask: object = None


@dataclass
class LogitSiteResult:
    """The logit/perplexity block of one logits site.

    ``statistics`` is the llama.cpp block (summary.llama_kl_statistics) over the scored tokens of every record;
    ``aggregates`` maps metric -> aggregate over those tokens; ``perplexity`` holds ``reference`` and ``candidate``
    PerplexityResult dicts when labels were available.
    """

    site: str
    records: list[LogitRecordResult] = field(default_factory=list)
    statistics: dict = field(default_factory=dict)
    aggregates: dict = field(default_factory=dict)
    perplexity: dict = field(default_factory=dict)
    topk: int = 10
    weighting: str = "token"


@dataclass
class Report:
    """A reference-vs-candidate comparison (the result of ``analyze.compare``). See REPORT_SCHEMA.md.

    Attributes:
        reference, candidate: ``{"paths", "label", "run_id", "model", "device", "dtype", "world_size"}``.
        inputs: ``{"path", "sha256"}`` (path None when no input set was found).
        options: the metrics, site filters, tolerances and chunk size used.
        sites: SiteResults in the reference's execution order.
        unmatched: ``{"reference_only": [keys], "candidate_only": [keys]}`` (keys as text, rank-prefixed
            ``r<rank>:`` for multi-rank dumps).
        errors: ``[{"key", "rank", "site", "error"}]`` for records that could not be compared.
        logits: LogitSiteResults. warnings: text lines. first_divergence: dict or None.
        thresholds: the applied thresholds (threshold_check.apply_thresholds, without ``site_results``), or None.
        localization: the localization block (localize.attach_localization): error curve, gain ranking, worst
            elements of the first divergent site; None in reports of schema 1.0.
    """

    reference: dict
    candidate: dict
    inputs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    sites: list[SiteResult] = field(default_factory=list)
    unmatched: dict = field(default_factory=lambda: {"reference_only": [], "candidate_only": []})
    errors: list = field(default_factory=list)
    logits: list[LogitSiteResult] = field(default_factory=list)
    warnings: list = field(default_factory=list)
    first_divergence: dict | None = None
    totals: dict = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION
    created: str = ""
    duration_s: float = 0.0
    thresholds: dict | None = None
    localization: dict | None = None

    @property
    def verdict(self) -> str:
        """``diverged`` when a site is over tolerance (over its threshold when thresholds were applied), a logit
        failure rate is over its allowed rate, or a record could not be compared; else ``pass``."""
        failed = self.thresholds is not None and not self.thresholds.get("passed", True)
        return "diverged" if self.first_divergence is not None or self.errors or failed else "pass"

    @property
    def exit_code(self) -> int:
        """0 for ``pass``, 1 for ``diverged`` (the CLI's exit code)."""
        return 0 if self.verdict == "pass" else 1

    def site(self, name: str) -> SiteResult:
        """The site called ``name`` (``site`` or ``site#call``); KeyError when absent."""
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self, *, tokens: bool = False) -> dict:
        """A JSON-ready dict (schema REPORT_SCHEMA.md); ``tokens`` adds per-token logit values."""
        doc = {"kind": REPORT_KIND, "schema_version": self.schema_version, "created": self.created,
               "duration_s": self.duration_s, "verdict": self.verdict, "exit_code": self.exit_code,
               "reference": self.reference, "candidate": self.candidate, "inputs": self.inputs,
               "options": self.options, "warnings": list(self.warnings), "totals": self.totals,
               "first_divergence": self.first_divergence,
               "sites": [asdict(s) | {"name": s.name} for s in self.sites],
               "unmatched": self.unmatched, "errors": self.errors,
               "logits": [_logit_site_dict(ls, tokens) for ls in self.logits],
               "thresholds": self.thresholds, "localization": self.localization}
        return _plain(doc)

    def write_json(self, path: str | os.PathLike, *, tokens: bool = False) -> None:
        """Write the report as JSON (atomically: readers see the old file or the new one)."""
        atomic_write_json(path, self.to_dict(tokens=tokens))

    def write_csv(self, folder: str | os.PathLike) -> list[str]:
        """Write ``sites.csv`` (one row per site: aggregates), ``records.csv`` (one row per record and metric
        values), ``logits.csv`` (one row per logit record) and ``unmatched.csv`` into ``folder``.

        Returns:
            The files written.
        """
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        metrics = sorted({m for s in self.sites for m in s.aggregates})
        stats = ("mean", "std", "min", "max", "p50", "p90", "p99")
        written = []
        path = os.path.join(folder, "sites.csv")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "site", "call", "module_type", "kind", "dtype_ref", "dtype_cand", "records",
                        "errors", "tolerance", "over_tolerance", "decided_by"]
                       + [f"{m}_{s}" for m in metrics for s in stats])
            for s in self.sites:
                w.writerow([s.index, s.site, s.call, s.module_type, s.kind, s.dtype_ref, s.dtype_cand,
                            len(s.records), s.errors, s.tolerance, int(s.over_tolerance), s.decided_by or ""]
                           + [_cell((s.aggregates.get(m) or {}).get(st)) for m in metrics for st in stats])
        written.append(path)
        rec_metrics = sorted({m for s in self.sites for r in s.records for m in r.metrics})
        path = os.path.join(folder, "records.csv")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "site", "key", "rank", "sample", "step", "kind", "status", "numel", "excluded",
                        "over_tolerance", "error"] + rec_metrics)
            for s in self.sites:
                for r in s.records:
                    w.writerow([s.index, s.name, r.key, r.rank, r.sample, r.step, r.kind, r.status, r.numel,
                                r.excluded, int(r.over_tolerance), r.error or ""]
                               + [_cell(r.metrics.get(m)) for m in rec_metrics])
        written.append(path)
        path = os.path.join(folder, "logits.csv")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            names = sorted({m for ls in self.logits for r in ls.records for m in r.means})
            w.writerow(["site", "key", "rank", "sample", "step", "tokens", "scored"] + [f"{m}_mean" for m in names])
            for ls in self.logits:
                for r in ls.records:
                    w.writerow([ls.site, r.key, r.rank, r.sample, r.step, r.tokens, r.scored]
                               + [_cell(r.means.get(m)) for m in names])
        written.append(path)
        path = os.path.join(folder, "unmatched.csv")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["side", "key"])
            for side in ("reference_only", "candidate_only"):
                for key in self.unmatched.get(side, []):
                    w.writerow([side.split("_")[0], key])
        written.append(path)
        return written


def _cell(v):
    return "" if v is None else repr(float(v)) if isinstance(v, float) else v


def _logit_site_dict(ls: LogitSiteResult, tokens: bool) -> dict:
    recs = []
    for r in ls.records:
        d = {"key": r.key, "sample": r.sample, "step": r.step, "rank": r.rank, "tokens": r.tokens,
             "scored": r.scored, "means": r.means}
        if tokens:
            d["per_token"] = {k: np.asarray(v).tolist() for k, v in r.per_token.items()}
            d["scored_mask"] = np.asarray(r.scored_mask).astype(bool).tolist() if r.scored_mask is not None else None
        recs.append(d)
    return {"site": ls.site, "topk": ls.topk, "weighting": ls.weighting, "statistics": ls.statistics,
            "aggregates": ls.aggregates, "perplexity": ls.perplexity, "records": recs}


def _plain(obj):
    """numpy scalars and arrays to Python values, recursively."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def read_report(path: str | os.PathLike) -> dict:
    """Read a report written by ``Report.write_json`` and check its schema version.

    Returns:
        The report as a dict (the REPORT_SCHEMA.md layout; ``inf``/``nan`` come back as floats).

    Raises:
        ReportError: missing, not JSON, not a tensorparity report, or a schema MAJOR version this reader does not
            know (a newer MINOR is read; unknown keys are kept).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise ReportError("report not found", path, "check the path") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"report is not valid JSON ({exc})", path, "write it again with 'parity compare -o'") \
            from None
    if not isinstance(doc, dict) or doc.get("kind") != REPORT_KIND:
        raise ReportError("not a tensorparity report (no kind 'tensorparity.report')", path,
                          "pass a report written by 'parity compare -o'")
    version = str(doc.get("schema_version", ""))
    major = version.split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise ReportError(f"report schema version {version or '(none)'} is not supported (this reader knows "
                          f"{SCHEMA_VERSION.split('.')[0]}.x)", path,
                          "upgrade tensorparity, or compare the dumps again with this version")
    return doc


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    return f"{v:.1e}"


def _gain_value(g) -> str:
    return "inf (error from exact inputs)" if g is not None and math.isinf(g) else f"{g:.3g}"


def _gain_text(g) -> str:
    return "" if g is None else "  gain=inf" if math.isinf(g) else f"  gain={g:.3g}"


def summary_lines(report: Report) -> list[str]:
    """The terminal summary: one grep-able line per site over tolerance or in error (execution order), then totals.

    ``FAIL  #41 model.layers.3.mlp:out  rel_l2=3.1e-02 > 1.0e-02  cos=0.9991``
    """
    lines = []
    th = report.thresholds
    gains = {e["site"]: e.get("gain") for e in (report.localization or {}).get("curve", [])}
    for s in report.sites:
        if s.over_tolerance and s.judged_by != "thresholds":  # thresholded sites: check_lines below
            metric = s.decided_by or "rel_l2"
            # by tolerance: the site's worst value; by floor: the deciding record's excess over the floor
            value = s.value if s.judged_by == "floor" else s.worst.get(metric, s.value)
            limit = s.limit if s.limit is not None else s.tolerance
            if metric == "cosine":
                test = f"cos={value:.6g} < {limit:.6g}" if value is not None else "cos=nan"
            else:
                test = f"{metric}={_fmt(value)} > {_fmt(limit)}"
            if s.judged_by == "floor":
                test += " over the floor"
            extra = f"  cos={s.worst['cosine']:.4f}" if metric != "cosine" and s.worst.get("cosine") is not None \
                else ""
            kind = "  (stats-only)" if s.kind == "stats-only" else ""
            lines.append(f"FAIL  #{s.index} {s.name}  {test}{extra}{kind}{_gain_text(gains.get(s.name))}")
        if s.errors:
            err = next(r.error for r in s.records if r.error)
            lines.append(f"ERROR #{s.index} {s.name}  {err}")
    if th is not None:
        from .threshold_check import check_lines
        lines.extend(line + (_gain_text(gains.get(line.split()[2])) if line.startswith("FAIL  #") else "")
                     for line in check_lines(th))
    t = report.totals
    lines.append(f"sites: {t.get('sites', 0)} compared, {t.get('over_tolerance', 0)} over tolerance, "
                 f"{t.get('error_records', 0)} records in error; unmatched: "
                 f"{len(report.unmatched.get('reference_only', []))} only in reference, "
                 f"{len(report.unmatched.get('candidate_only', []))} only in candidate")
    outputs = t.get("module_outputs") or {}
    if outputs.get("paired", 0) < outputs.get("reference", 0):  # across backends: how much of the model pairs
        lines.append(f"module outputs paired: {outputs['paired']} of {outputs['reference']} modules of the "
                     f"reference ({100 * outputs['paired'] / outputs['reference']:.0f}%)")
    for ls in report.logits:
        st = ls.statistics
        if not st:
            continue
        text = f"logits {ls.site}: {st.get('n', 0)} tokens, KL mean {_fmt(st['kl']['mean'])}, " \
               f"top-1 agree {100 * st['same_top_p']['value']:.2f}%"
        ppl = ls.perplexity
        if ppl.get("reference") and ppl.get("candidate"):
            text += f", PPL ref {ppl['reference']['ppl']:.4g} cand {ppl['candidate']['ppl']:.4g}"
        lines.append(text)
    fd = report.first_divergence
    if fd:
        lines.append(f"first divergence: #{fd['index']} {fd['site']} ({fd['metric']}={_fmt(fd['value'])})"
                     f"{_gain_text(fd.get('gain'))}")
    ranking = (report.localization or {}).get("gain_ranking") or []
    if ranking and report.verdict != "pass":
        g = ranking[0]
        lines.append(f"top error gain: {g['module']} (gain {_gain_value(g['gain'])}: input error "
                     f"{_fmt(g['in_error'])}, output error {_fmt(g['out_error'])})")
    lines.append(f"verdict: {report.verdict}")
    return lines
