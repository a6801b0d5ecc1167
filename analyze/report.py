"""The comparison report: a versioned dataclass tree (REPORT_SCHEMA.md), its JSON form both ways (``to_dict`` /
``write_json``, ``Report.from_dict`` / ``read_report``). The report is only a model: its renderers (terminal text,
CSV tables, the HTML page) live in analyze/render/.

Numbers stay Python floats, including ``inf`` and ``nan``: the JSON file writes them as ``Infinity``/``NaN`` (what
Python's json module and most JSON5 readers accept) and ``read_report`` reads them back.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from protocol import atomic_write_json, read_json

from .errors import ReportError

SCHEMA_VERSION = "1.4"
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
        local: the local-error block of a replay (analyze/local_error.py): each replayed module's own error and
            whether it introduces error beyond the candidate's precision; None without replay (and before 1.3).
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
    local: dict | None = None

    @property
    def verdict(self) -> str:
        """``diverged`` when a site is over tolerance (over its threshold when thresholds were applied), a logit
        failure rate is over its allowed rate, or a replayed module introduces error; else ``error`` when a record
        could not be compared (a damaged record, a shape mismatch: never taken for a numeric divergence); else
        ``pass``."""
        failed = self.thresholds is not None and not self.thresholds.get("passed", True)
        introduced = self.local is not None and self.local.get("first_introduced") is not None
        if self.first_divergence is not None or failed or introduced:
            return "diverged"
        return "error" if self.errors else "pass"

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 0 for ``pass``, 1 for ``diverged``, 3 for ``error`` (as for an unusable file)."""
        return {"pass": 0, "diverged": 1}.get(self.verdict, 3)

    @classmethod
    def from_dict(cls, doc: dict) -> "Report":
        """See ``report_from_dict``."""
        return report_from_dict(doc)

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
               "thresholds": self.thresholds, "localization": self.localization, "local": self.local}
        return _plain(doc)

    def write_json(self, path: str | os.PathLike, *, tokens: bool = False) -> None:
        """Write the report as JSON (atomically: readers see the old file or the new one)."""
        atomic_write_json(path, self.to_dict(tokens=tokens))


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


def _known(cls, values: dict) -> dict:
    """The entries of ``values`` that are fields of dataclass ``cls`` (a newer MINOR's extra keys are ignored)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


#: what a record of a hand-written or older report may leave out
_RECORD_DEFAULTS = {"sample": 0, "step": 0, "rank": 0, "seq": 0, "kind": "full", "status": "ok", "dtype_ref": "",
                    "dtype_cand": "", "shape_ref": [], "shape_cand": []}
_SITE_DEFAULTS = {"call": 0, "module_type": "", "kind": "full", "dtype_ref": "", "dtype_cand": "", "tolerance": None}


def _site_from_dict(s: dict, index: int) -> SiteResult:
    records = [RecordResult(**_known(RecordResult, {**_RECORD_DEFAULTS, **r, "metrics": dict(r.get("metrics") or {})}))
               for r in s.get("records") or []]
    site = SiteResult(**_known(SiteResult, {**_SITE_DEFAULTS, "index": index, **s, "records": records}))
    if "judged_by" not in s:  # before schema 1.2 the decision was not stored: judged now, by tolerance as then
        from .judge import judge_record, judge_site
        decisions = [judge_record(r.metrics, status=r.status, key=r.key, tolerance=site.tolerance or 0.0,
                                  stats_only=r.kind == "stats-only" or ("rel_l2" not in r.metrics
                                                                      and "stats_rel_l2" in r.metrics))
                     for r in records]
        decision = judge_site(decisions, "tolerance")
        if decision.over or not s.get("over_tolerance"):  # else: records filtered to other metrics, keep the flag
            site.set_decision(decision)
            for r, d in zip(records, decisions):
                r.over_tolerance, r.decided_by = d.over, d.metric
    return site


def _logit_site_from_dict(ls: dict) -> LogitSiteResult:
    records = []
    for r in ls.get("records") or []:
        per = {k: np.asarray(v, dtype=np.float64) for k, v in (r.get("per_token") or {}).items()}
        mask = r.get("scored_mask")
        records.append(LogitRecordResult(**_known(LogitRecordResult, {
            **_RECORD_DEFAULTS, "tokens": 0, "scored": 0, **r, "per_token": per,
            "scored_mask": np.asarray(mask, dtype=bool) if mask is not None else None})))
    return LogitSiteResult(**_known(LogitSiteResult, {**ls, "records": records}))


def report_from_dict(doc: dict) -> Report:
    """The Report of a JSON document (REPORT_SCHEMA.md), of this schema or an older MINOR: sites judged before
    schema 1.2 get the judge's decision, and a report without localization (1.0) is localized from its records
    (without worst elements, which need the dumps)."""
    report = Report(**_known(Report, {
        "reference": {}, "candidate": {}, **doc,
        "sites": [_site_from_dict(s, i) for i, s in enumerate(doc.get("sites") or [])],
        "logits": [_logit_site_from_dict(ls) for ls in doc.get("logits") or []]}))
    if report.localization is None:
        from .localize import first_divergence_summary, localize
        report.localization = localize(report)
        report.first_divergence = first_divergence_summary(report.localization["first_divergence"])
    return report


def read_report(path: str | os.PathLike) -> Report:
    """Read a report written by ``Report.write_json`` and check its schema version.

    Returns:
        The Report (``report_from_dict``; ``inf``/``nan`` come back as floats).

    Raises:
        ReportError: missing, not JSON, not a tensorparity report, or a schema MAJOR version this reader does not
            know (a newer MINOR is read; unknown keys are kept).
    """
    path = os.fspath(path)
    doc = read_json(path, "report", error=ReportError, hint="write it again with 'parity compare -o'",
                    missing_hint="check the path")
    if not isinstance(doc, dict) or doc.get("kind") != REPORT_KIND:
        raise ReportError("not a tensorparity report (no kind 'tensorparity.report')", path,
                          "pass a report written by 'parity compare -o'")
    version = str(doc.get("schema_version", ""))
    major = version.split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise ReportError(f"report schema version {version or '(none)'} is not supported (this reader knows "
                          f"{SCHEMA_VERSION.split('.')[0]}.x)", path,
                          "upgrade tensorparity, or compare the dumps again with this version")
    return report_from_dict(doc)
