"""The logit/perplexity block shared by ``compare`` and ``pairwise_kl``: per-record token metrics streamed over row
blocks, then the per-site summary (llama.cpp statistics, aggregates, perplexity of both sides)."""
from __future__ import annotations

import numpy as np

from protocol import DumpReader, InputSet, RecordInfo

from .logit_metrics import DEFAULT_TOPK, LOGIT_METRICS, token_metrics
from .perplexity import iter_logit_rows, labels_for, perplexity_from_nll
from .report import LogitRecordResult, LogitSiteResult
from .summary import aggregate, llama_kl_statistics

#: Metrics that need a next-token label.
LABELLED = ("delta_p", "nll_ref", "nll_cand")


def logit_pair_usable(ri: RecordInfo, ci: RecordInfo) -> bool:
    """Both records hold the same-shape logits data (full or the same slice)."""
    return (ri.has_data and ci.has_data and ri.storage == ci.storage and ri.storage in ("full", "slice")
            and ri.reduction == ci.reduction and tuple(ri.shape) == tuple(ci.shape) and len(ri.shape) >= 1
            and int(ri.shape[-1]) > 0)


def compare_logit_records(ref: DumpReader, cand: DumpReader, ri: RecordInfo, ci: RecordInfo,
                          inputs: InputSet | None, *, rank: int = 0, topk: int = DEFAULT_TOPK,
                          chunk_elements: int = 1 << 22) -> LogitRecordResult:
    """Token metrics of one pair of logits records, streamed over blocks of whole rows.

    Labels come from the input set's sample ``ri.key.sample`` (see perplexity.labels_for); without an input set
    the labelled metrics are NaN and no row is scored.
    """
    v = int(ri.shape[-1])
    rows = ri.numel // v
    sample = inputs.samples[ri.key.sample] if inputs is not None and ri.key.sample < len(inputs.samples) else None
    labels = labels_for(sample, rows, ri.key.step) if ri.storage == "full" else np.full(rows, -1, np.int64)
    parts: list[dict] = []
    start = 0
    for a, b in zip(iter_logit_rows(ref, ri, chunk_elements), iter_logit_rows(cand, ci, chunk_elements)):
        parts.append(token_metrics(a, b, labels[start:start + a.shape[0]], k=topk))
        start += a.shape[0]
    per_token = {m: np.concatenate([p[m] for p in parts]) if parts else np.empty(0) for m in LOGIT_METRICS}
    scored = labels >= 0
    use = scored if scored.any() else np.ones(rows, dtype=bool)
    means = {}
    for m, vals in per_token.items():
        sel = vals[use] if vals.size else vals
        sel = sel[~np.isnan(sel)]
        means[m] = float(sel.mean()) if sel.size else None
    return LogitRecordResult(str(ri.key), ri.key.sample, ri.key.step, rank, rows, int(scored.sum()), means,
                             per_token, scored)


def build_logit_site(site: str, records: list[LogitRecordResult], inputs: InputSet | None, *,
                     topk: int = DEFAULT_TOPK) -> LogitSiteResult:
    """Summaries of one logits site over every record: the statistics use the scored tokens when any record has
    labels (each token once, token-weighted), else every row."""
    any_scored = any(r.scored for r in records)
    sel = {m: [] for m in LOGIT_METRICS}
    for r in records:
        mask = r.scored_mask if any_scored else np.ones(r.tokens, dtype=bool)
        for m in LOGIT_METRICS:
            sel[m].append(r.per_token[m][mask])
    vals = {m: np.concatenate(v) if v else np.empty(0) for m, v in sel.items()}
    finite = np.isfinite(vals["kl"])  # rows with NaN/Inf logits are left out of the statistics
    if any_scored:
        finite &= np.isfinite(vals["nll_ref"]) & np.isfinite(vals["nll_cand"])
    stats = llama_kl_statistics(vals["nll_ref"][finite] if any_scored else None,
                                vals["nll_cand"][finite] if any_scored else None,
                                vals["kl"][finite], vals["delta_p"][finite] if any_scored else None,
                                vals["top1_agree"][finite])
    stats["excluded_non_finite"] = int((~finite).sum())
    result = LogitSiteResult(site, records, stats, {m: aggregate(v) for m, v in vals.items()}, {}, topk)
    if any_scored:
        ref_nll, cand_nll = [], []
        for r in records:
            if r.step != 0 or not r.scored:
                continue
            text = None
            if inputs is not None and r.sample < len(inputs.samples):
                text = inputs.samples[r.sample].meta.get("text")
            ref_nll.append((r.sample, r.per_token["nll_ref"][r.scored_mask], text))
            cand_nll.append((r.sample, r.per_token["nll_cand"][r.scored_mask], text))
        if ref_nll:
            result.perplexity = {"reference": perplexity_from_nll(ref_nll).to_dict(),
                                 "candidate": perplexity_from_nll(cand_nll).to_dict()}
    return result
