"""The terminal text of a report: one grep-able line per failing site, the totals, the logits, the verdict; and
the lines of a threshold check."""
from __future__ import annotations

import math

from ..report import Report


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    return f"{v:.1e}"


def _gain_value(g) -> str:
    return "inf (error from exact inputs)" if g is not None and math.isinf(g) else f"{g:.3g}"


def _ranks_text(records) -> str:
    """``  rank=1`` or ``  ranks=0,1``: the ranks of the given records (a multi-rank report's FAIL and ERROR lines)."""
    ranks = sorted({r.rank for r in records})
    if not ranks:
        return ""
    return f"  rank={ranks[0]}" if len(ranks) == 1 else "  ranks=" + ",".join(map(str, ranks))


def _gain_text(g) -> str:
    return "" if g is None else "  gain=inf" if math.isinf(g) else f"  gain={g:.3g}"


def summary_lines(report: Report) -> list[str]:
    """The terminal summary: one grep-able line per site over tolerance or in error (execution order), then totals.

    ``FAIL  #41 model.layers.3.mlp:out  rel_l2=3.1e-02 > 1.0e-02  cos=0.9991`` (``  rank=1`` after the test when
    the dumps hold several ranks: the ranks whose records are over)
    """
    lines = []
    th = report.thresholds
    gains = {e["site"]: e.get("gain") for e in (report.localization or {}).get("curve", [])}
    # a multi-rank capture: say on which ranks a site failed (a tensor-parallel fault is often on one rank only)
    multi_rank = len({r.rank for s in report.sites for r in s.records}) > 1
    for s in report.sites:
        if s.over_tolerance and s.judged_by != "thresholds":  # thresholded sites: threshold_lines below
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
            where = _ranks_text([r for r in s.records if r.over_tolerance]) if multi_rank else ""
            lines.append(f"FAIL  #{s.index} {s.name}  {test}{extra}{kind}{where}{_gain_text(gains.get(s.name))}")
        if s.errors:
            failed = [r for r in s.records if r.error]
            lines.append(f"ERROR #{s.index} {s.name}  {failed[0].error}{_ranks_text(failed) if multi_rank else ''}")
    if th is not None:
        lines.extend(line + (_gain_text(gains.get(line.split()[2])) if line.startswith("FAIL  #") else "")
                     for line in threshold_lines(th))
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
    if report.local is not None:  # replay measured each module's own error: that answers "where", not the gains
        lines.extend(local_lines(report.local))
    elif ranking and report.verdict != "pass":
        g = ranking[0]
        lines.append(f"top error gain: {g['module']} (gain {_gain_value(g['gain'])}: input error "
                     f"{_fmt(g['in_error'])}, output error {_fmt(g['out_error'])}); ranked by accumulated error, "
                     "which hides where error starts once the candidate is not bit-compatible: --replay REF_MODEL "
                     "measures each module's own error")
    lines.append(f"verdict: {report.verdict}")
    return lines


MAX_INTRODUCED_LINES = 10


def local_lines(local: dict) -> list[str]:
    """The lines of a replay (report.local): one ``INTRO`` line per module that introduces error, in execution
    order (at most MAX_INTRODUCED_LINES), then the line naming where error is introduced, or saying it is nowhere.

    ``INTRO model.layers.1.self_attn.q_proj  local rel_l2=9.1e-03 > 4.8e-03 (expected 2.4e-03)``
    """
    lines = []
    introduced = [e for e in local.get("modules", []) if e["introduced"]]
    for e in introduced[:MAX_INTRODUCED_LINES]:
        if e["decided_by"] == "non_finite":
            test = "NaN/Inf that the replay in its dtype does not give"
        else:
            test = f"local rel_l2={_fmt(e['local'])} > {_fmt(e['limit'])} (expected {_fmt(e['expected'])})"
        note = f"  ({e['note']})" if e.get("note") else ""
        lines.append(f"INTRO {e['module']}  {test}{note}")
    if len(introduced) > MAX_INTRODUCED_LINES:
        lines.append(f"INTRO ... and {len(introduced) - MAX_INTRODUCED_LINES} more (the report's local.modules)")
    skipped = sum(len(v) for v in local.get("skipped", {}).values())
    tail = f"; {skipped} not replayed (local.skipped)" if skipped else ""
    first = local.get("first_introduced")
    if first is not None:
        lines.append(f"error introduced here: {first['module']} ({first['key']}), local/limit "
                     f"{_ratio_text(first['ratio'])}{tail}")
    elif not local.get("replayed"):
        lines.append(f"error introduced: unknown, no module could be replayed{tail}")
    else:
        top = next(iter(local.get("modules") or []), None)
        closest = f"; closest: {top['module']}, local/limit {_ratio_text(top['ratio'])}" if top else ""
        lines.append(f"error introduced: nowhere beyond the candidate's precision ({local['replayed']} module calls "
                     f"replayed against {local['factor']:g}x the expected noise{closest}){tail}")
    return lines


def threshold_lines(result: dict) -> list[str]:
    """Terminal lines of a threshold check: one per failing site and logit metric, then a verdict line."""
    lines = []
    for f in result["failures"]:
        lines.append(f"FAIL  #{f['index']} {f['site']}  {_test_text(f)}  ({f['records_failed']}/{f['records']} "
                     "records)")
    for lg in result["logits"]:
        state = "FAIL" if not lg["passed"] else "ok  "
        lines.append(f"{state}  logits {lg['site']} {lg['metric']}: {lg['failed_tokens']}/{lg['tokens']} tokens over "
                     f"{lg['limit']:.3g} = {100 * lg['failure_rate']:.2f}% (allowed "
                     f"{100 * lg['max_failure_rate']:.2f}%)")
        for t in lg["failing_tokens"][:5] if not lg["passed"] else []:
            lines.append(f"        sample {t['sample']} step {t['step']} position {t['position']} token "
                         f"{t['token'] if t['token'] is not None else '?'}: {t['value']:.4g}")
    if result["worst_sites"]:
        w = result["worst_sites"][0]
        lines.append(f"worst site: #{w['index']} {w['site']} {w['metric']} at {_ratio_text(w['ratio'])} of its limit")
    lines.append(f"thresholds: {result['sites_checked']} sites checked, {result['sites_failed']} failed, "
                 f"{len(result['unthresholded'])} without threshold; "
                 f"{'passed' if result['passed'] else 'FAILED'}")
    return lines


def _ratio_text(r) -> str:
    return "inf" if r is None or math.isinf(r) else f"{r:.3g}x"


def _test_text(f: dict) -> str:
    if f["metric"] == "error":
        return "record could not be compared"
    op = "<" if f["direction"] == "min" else ">"
    value = f"{f['value']:.6g}" if f["direction"] == "min" else f"{f['value']:.1e}"
    limit = f"{f['limit']:.6g}" if f["direction"] == "min" else f"{f['limit']:.1e}"
    return f"{f['metric']}={value} {op} {limit} (threshold)"
