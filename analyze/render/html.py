"""The self-contained HTML report: one file, viewable offline (Chart.js 4, MIT, inlined from analyze/assets/).

Top to bottom: the verdict and the first-divergence card; the per-site error curve over execution order (log scale;
hovering names the site and its values); the error-gain ranking; threshold failures and logit failure rates; the
worst elements of the first divergent site; the logit/perplexity block; unmatched sites and records in error; every
site in a table. All text from the report is HTML-escaped (site names come from files), and the data handed to the
chart is JSON with ``<``, ``>`` and ``&`` escaped, so nothing in a dump can close a tag or run a script.
"""
from __future__ import annotations

import html
import json
import math
import os
from importlib import resources

from ..localize import localize
from ..report import read_report

MAX_TABLE_ROWS = 25
MAX_UNMATCHED = 200


def _chart_js() -> str:
    return resources.files("analyze").joinpath("assets/chart.umd.min.js").read_text(encoding="utf-8")


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v == 0:
        return "0"
    return f"{v:.{digits}e}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits + 2}g}"


def _cos(v) -> str:
    return "–" if v is None else ("NaN" if math.isnan(v) else f"{v:.8f}")


def _json_for_script(obj) -> str:
    """JSON safe inside <script>: non-finite numbers become strings/null, and <, >, & are \\u-escaped."""
    def clean(x):
        if isinstance(x, float):
            return None if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else x
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    text = json.dumps(clean(obj), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _side(d: dict) -> str:
    d = d or {}
    dev = d.get("device") or {}
    device = dev.get("name") or dev.get("type") if isinstance(dev, dict) else dev
    return f"{_e(d.get('label') or '?')} <span class=dim>({_e(device)}, {_e(d.get('dtype'))})</span>"


def _local_card(local: dict | None) -> str:
    """The replay's answer, above the first divergence: where error is introduced (or that it is nowhere)."""
    if local is None:
        return ('<div class="card dim" id="introduced">Ranked by accumulated error only: once the candidate is not '
                "bit-compatible, accumulated error hides where error starts. <span class=mono>parity compare "
                "--replay REF_MODEL</span> replays each module on the candidate's own inputs and names the module "
                "that introduces error.</div>")
    first = local.get("first_introduced")
    skipped = sum(len(v) for v in (local.get("skipped") or {}).values())
    tail = f"{_e(local.get('replayed'))} module calls replayed, {skipped} not (see the table below)"
    if first is None:
        return (f'<div class="card first ok" id="introduced"><h2>Error introduced: nowhere beyond the '
                f"candidate's precision</h2><div class=dim>{tail}; limit {_e(local.get('factor'))}x the expected "
                f"noise</div></div>")
    why = ("NaN/Inf that the replay in its dtype does not give" if first.get("decided_by") == "non_finite" else
           f"local rel_l2 {_num(first.get('local'))} against {_num(first.get('expected'))} expected "
           f"(limit {_num(first.get('limit'))})")
    note = f"<div>{_e(first['note'])}</div>" if first.get("note") else ""
    return (f'<div class="card first" id="introduced"><h2>Error introduced here</h2>'
            f'<div class="big mono">{_e(first["module"])}</div><div>{_e(first.get("module_class"))} · {why}</div>'
            f"{note}<div class=dim>record {_e(first.get('key'))}; {_e(local.get('introduced'))} modules introduce "
            f"error (its parents among them); {tail}</div></div>")


def _local_section(local: dict | None) -> str:
    """The local-error curve (beside the accumulated one) and the table of replayed modules."""
    if local is None:
        return ""
    entries = sorted(local.get("modules") or [], key=lambda e: e.get("first_seq", 0))
    data = [{"module": e["module"], "local": e.get("local"), "expected": e.get("expected"), "limit": e.get("limit"),
             "introduced": bool(e.get("introduced")), "site": e.get("site")} for e in entries]
    rows = [[_e(e["module"]), _e((e.get("module_class") or "").rsplit(".", 1)[-1]), _num(e.get("local")),
             _num(e.get("expected")), _num(e.get("ratio")),
             "<b class=bad>introduced</b>" if e.get("introduced") else "ok", _e(e.get("note") or "")]
            for e in local.get("modules") or []]
    skipped = "".join(f"<li>{_e(why)}: <span class=mono>{_e(', '.join(mods[:20]))}"
                      f"{' …' if len(mods) > 20 else ''}</span></li>" for why, mods in (local.get("skipped") or {}).items())
    return (f'<section id="local-error"><h2>Local error: what each module introduces itself</h2><p class=dim>Each '
            f"module replayed on the reference model ({_e(local.get('model'))}, {_e(local.get('dtype'))}) on the "
            f"candidate's own recorded inputs: its local error (candidate output against the replay) beside the "
            f"noise its precision explains; red points introduce error (over {_e(local.get('factor'))}x that noise)."
            f'</p><div class=chart><canvas id=local-curve></canvas></div><script type="application/json" '
            f'id="local-data">{_json_for_script({"modules": data})}</script>'
            + _table(["module", "class", "local rel_l2", "expected", "local / limit", "", "note"], rows, "local")
            + (f"<details><summary>Not replayed</summary><ul>{skipped}</ul></details>" if skipped else "")
            + "</section>")


def _card(doc: dict, loc: dict) -> str:
    verdict = doc.get("verdict", "?")
    first = loc.get("first_divergence")
    ranking = loc.get("gain_ranking") or []
    parts = [f'<div class="card verdict {_e(verdict)}" id="verdict"><div class=big>{_e(verdict.upper())}</div>'
             f"<div>{_side(doc.get('reference'))} → {_side(doc.get('candidate'))}</div>"]
    t = doc.get("totals") or {}
    outputs = t.get("module_outputs") or {}
    paired = (f"; {_e(outputs['paired'])} of {_e(outputs['reference'])} reference modules' outputs paired"
              if outputs.get("paired", 0) < outputs.get("reference", 0) else "")
    parts.append(f"<div class=dim>{_e(t.get('sites', 0))} sites, {_e(t.get('records', 0))} records compared; "
                 f"{_e(t.get('error_records', 0))} in error{paired}; judged by {_e(loc.get('judged_by'))}"
                 f"{' with a noise floor' if loc.get('floor') else ''}</div></div>")
    if first:
        limit = first.get("limit")
        test = f"{_e(first.get('metric'))} = {_num(first.get('value'))}"
        if limit is not None:
            test += f" ({'threshold' if first.get('judged_by') == 'thresholds' else 'tolerance'} {_num(limit)})"
        near = loc.get("neighbours") or {}
        gain = first.get("gain")
        parts.append(
            f'<div class="card first" id="first-divergence"><h2>First divergent site</h2>'
            f'<div class="big mono">#{_e(first["index"])} {_e(first["site"])}</div>'
            f"<div>{_e(first.get('module_type'))} · {test}"
            + (f" · rel_l2 {_num(first.get('rel_l2'))}" if first.get("metric") != "rel_l2" else "")
            + f" · cosine {_cos(first.get('cosine'))}"
            + (f" · gain {_num(gain)}" if gain is not None else "")
            + (f" · excess over floor {_num(first.get('excess'))}" if first.get("excess") is not None else "")
            + f"</div><div class=dim>record {_e(first.get('key'))}</div>"
            f"<div class=dim>before: {', '.join(_e(s) for s in near.get('before', [])) or '–'}<br>"
            f"after: {', '.join(_e(s) for s in near.get('after', [])) or '–'}</div>")
        if ranking and doc.get("local") is None:  # with a replay, the card above answers "where"
            g = ranking[0]
            parts.append(f"<div><b>Top error gain:</b> <span class=mono>{_e(g['module'])}</span> "
                         f"({_e(g['module_type'])}), gain {_num(g['gain'])}"
                         + (" — error from exact inputs" if g.get("infinite") else "") + "</div>")
        parts.append("</div>")
    else:
        parts.append('<div class="card first ok" id="first-divergence"><h2>No divergent site</h2>'
                     "<div>Every site is within its limit.</div></div>")
    return "".join(parts)


def _curve_section(loc: dict) -> str:
    data = [{"i": e["index"], "site": e["site"], "type": e.get("module_type"), "rel": e.get("rel_l2"),
             "cos": e.get("cosine"), "limit": e.get("limit"), "floor": e.get("floor"), "excess": e.get("excess"),
             "gain": e.get("gain"), "over": bool(e.get("over")), "metric": e.get("metric")}
            for e in loc.get("curve") or []]
    first = (loc.get("first_divergence") or {}).get("index")
    return (f'<section><h2>Error curve over execution order</h2><p class=dim>rel_l2 of every site (worst record), log '
            f"scale; exact matches are drawn at the bottom of the axis. Red points are over their limit; hover for "
            f"the site's name and values.</p><div class=chart><canvas id=error-curve></canvas></div>"
            f'<script type="application/json" id="curve-data">{_json_for_script({"sites": data, "first": first})}'
            f"</script></section>")


def _gain_section(loc: dict) -> str:
    ranking = loc.get("gain_ranking") or []
    other = loc.get("gain_other") or {}
    rows = [[_e(i + 1), f"<span class=mono>{_e(g['module'])}</span>", _e(g["module_type"]),
             _num(g["gain"]) + (" <span class=dim>(exact inputs)</span>" if g.get("infinite") else ""),
             _num(g["in_error"]), _num(g["out_error"]), f"<span class=mono>{_e(g['out_site'])}</span>"]
            for i, g in enumerate(ranking[:MAX_TABLE_ROWS])]
    note = (f"<p class=dim>{len(ranking)} modules ranked; {len(other.get('no_error', []))} with no error in or out; "
            f"{len(other.get('no_input', []))} without a captured input record (no gain).</p>")
    table = _table(["#", "module", "type", "gain = out / in", "input error", "output error", "output site"], rows,
                   "gains") if rows else "<p>No module has both input and output records with error.</p>"
    return f'<section id="gain-ranking"><h2>Error gain: where error is introduced</h2>{note}{table}</section>'


def _threshold_section(doc: dict) -> str:
    th = doc.get("thresholds")
    if not th:
        return ""
    rows = [[_e(f["index"]), f"<span class=mono>{_e(f['site'])}</span>", _e(f["metric"]), _num(f["value"]),
             _num(f["limit"]), f"{_e(f['records_failed'])}/{_e(f['records'])}"]
            for f in th.get("failures", [])[:MAX_TABLE_ROWS]]
    out = [f'<section id="threshold-failures"><h2>Thresholds: {"passed" if th.get("passed") else "FAILED"}</h2>'
           f"<p class=dim>{_e(th.get('file'))} (statistic {_e(th.get('statistic'))}, margin {_e(th.get('margin'))})"
           f"; {_e(th.get('sites_checked'))} sites checked, {_e(th.get('sites_failed'))} failed, "
           f"{len(th.get('unthresholded') or [])} without threshold.</p>"]
    out.append(_table(["#", "site", "metric", "worst value", "limit", "records failed"], rows)
               if rows else "<p>No site over its threshold.</p>")
    for lg in th.get("logits") or []:
        out.append(f"<h3>{_e(lg['site'])} {_e(lg['metric'])}: {lg['failed_tokens']}/{lg['tokens']} tokens over "
                   f"{_num(lg['limit'])} = {100 * lg['failure_rate']:.2f}% (allowed "
                   f"{100 * lg['max_failure_rate']:.2f}%) — {'pass' if lg['passed'] else 'FAIL'}</h3>")
        toks = [[_e(t["sample"]), _e(t["step"]), _e(t["position"]), _e(t["token"]), _e(t["next_token"]),
                 _num(t["value"])] for t in lg.get("failing_tokens", [])[:MAX_TABLE_ROWS]]
        if toks:
            out.append(_table(["sample", "step", "position", "token", "next token", "value"], toks))
    worst = [[_e(w["index"]), f"<span class=mono>{_e(w['site'])}</span>", _e(w["metric"]), _num(w["ratio"])]
             for w in th.get("worst_sites", [])]
    if worst:
        out.append("<h3>Worst sites (value / limit)</h3>" + _table(["#", "site", "metric", "ratio"], worst))
    return "".join(out) + "</section>"


def _worst_section(loc: dict) -> str:
    we = loc.get("worst_elements")
    if not we:
        return ""
    rows = [[_e(list(x["index"])), _num(x["reference"], 6), _num(x["candidate"], 6), _num(x["abs_diff"])]
            for x in we.get("elements", [])]
    body = _table(["index", "reference", "candidate", "|difference|"], rows, "worst") if rows else \
        f"<p>{_e(we.get('note') or 'no element data')}</p>"
    return (f'<section id="worst-elements"><h2>Worst elements of {_e(we.get("site"))}</h2><p class=dim>record '
            f"{_e(we.get('key'))}, shape {_e(we.get('shape'))}{'; ' + _e(we['note']) if we.get('note') else ''}"
            f"</p>{body}</section>")


def _logit_section(doc: dict) -> str:
    out = []
    for ls in doc.get("logits") or []:
        st = ls.get("statistics") or {}
        kl, dp, same = st.get("kl") or {}, st.get("delta_p") or {}, st.get("same_top_p") or {}
        rows = [["tokens", _e(st.get("n"))], ["KL mean ± SE", f"{_num(kl.get('mean'))} ± {_num(kl.get('se'))}"],
                ["KL p99 / max", f"{_num(kl.get('p99'))} / {_num(kl.get('max'))}"],
                ["same top-1", f"{100 * same['value']:.2f}%" if same.get("value") is not None else "–"]]
        if dp:
            rows.append(["Δp mean / RMS", f"{_num(dp.get('mean'))} / {_num(dp.get('rms'))}"])
        ppl = ls.get("perplexity") or {}
        if ppl.get("reference") and ppl.get("candidate"):
            rows.append(["PPL reference / candidate", f"{_num(ppl['reference'].get('ppl'))} / "
                                                      f"{_num(ppl['candidate'].get('ppl'))}"])
            ratio = st.get("ppl_ratio") or {}
            rows.append(["PPL ratio", _num(ratio.get("value"))])
        out.append(f"<h3 class=mono>{_e(ls.get('site'))}</h3>" + _table(["statistic", "value"], rows))
    if not out:
        return ""
    return '<section id="logits"><h2>Logits and perplexity</h2>' + "".join(out) + "</section>"


def _unmatched_section(doc: dict) -> str:
    um = doc.get("unmatched") or {}
    errors = doc.get("errors") or []
    parts = ['<section id="unmatched"><h2>Unmatched sites and records in error</h2>']
    for side in ("reference_only", "candidate_only"):
        keys = um.get(side) or []
        items = "".join(f"<li class=mono>{_e(k)}</li>" for k in keys[:MAX_UNMATCHED])
        more = f"<li class=dim>… {len(keys) - MAX_UNMATCHED} more</li>" if len(keys) > MAX_UNMATCHED else ""
        parts.append(f"<details{' open' if keys and len(keys) <= 20 else ''}><summary>{len(keys)} only in the "
                     f"{side.split('_')[0]}</summary><ul>{items}{more}</ul></details>")
    if errors:
        rows = [[f"<span class=mono>{_e(x.get('key'))}</span>", _e(x.get("error"))] for x in errors[:MAX_UNMATCHED]]
        parts.append(f"<details open><summary>{len(errors)} records in error</summary>"
                     + _table(["record", "error"], rows) + "</details>")
    return "".join(parts) + "</section>"


def _sites_section(loc: dict) -> str:
    rows = [[_e(e["index"]), f"<span class=mono>{_e(e['site'])}</span>", _e(e.get("module_type")),
             _num(e.get("rel_l2")), _cos(e.get("cosine")), _num(e.get("limit")), _num(e.get("gain")),
             "<b class=bad>over</b>" if e.get("over") else "ok"] for e in loc.get("curve") or []]
    return ('<section><details><summary>Every site (' + str(len(rows)) + ")</summary>"
            + _table(["#", "site", "type", "rel_l2", "cosine", "limit", "gain", ""], rows) + "</details></section>")


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1f24;max-width:1300px}
h1{font-size:20px}h2{font-size:17px;margin:4px 0 8px}h3{font-size:14px}.dim{color:#667}.mono{font-family:monospace}
.card{border:1px solid #ccd;border-radius:8px;padding:12px 16px;margin:10px 0}.big{font-size:20px;font-weight:600}
.verdict.pass{background:#e8f6ec;border-color:#6c9}.verdict.diverged{background:#fdecea;border-color:#d66}
.verdict.error{background:#fff4e0;border-color:#d93}
.first{background:#fff8e6;border-color:#e0b000}.first.ok{background:#f4f8f4}.bad{color:#c00}
table{border-collapse:collapse;margin:6px 0}td,th{border-bottom:1px solid #e3e3ea;padding:3px 10px;text-align:left}
th{background:#f3f4f8}.chart{position:relative;height:380px}section{margin:22px 0}summary{cursor:pointer}"""

_JS = """(function(){
var d=JSON.parse(document.getElementById('curve-data').textContent);var s=d.sites;
function num(v){return v==='inf'?Infinity:v==='-inf'?-Infinity:v;}
var pos=s.map(function(x){return num(x.rel);}).concat(s.map(function(x){return x.metric==='cosine'?null:num(x.limit);}))
 .filter(function(v){return v>0&&isFinite(v);});
var lo=pos.length?Math.min.apply(null,pos)/10:1e-12, hi=pos.length?Math.max.apply(null,pos)*10:1;
function plot(v){v=num(v);if(v===null||v===undefined)return null;if(v<=0)return lo;if(!isFinite(v))return hi;return v;}
function fmt(v){v=num(v);if(v===null||v===undefined)return '-';if(typeof v!=='number')return String(v);
 if(!isFinite(v))return v>0?'inf':'-inf';return v===0?'0 (exact)':v.toExponential(3);}
var sets=[{label:'rel_l2',data:s.map(function(x){return plot(x.rel);}),borderColor:'#3465a4',borderWidth:1.5,
 pointRadius:s.map(function(x){return x.over?3:1.5;}),
 pointBackgroundColor:s.map(function(x){return x.over?'#cc0000':'#3465a4';}),
 spanGaps:true},
 {label:'limit',data:s.map(function(x){return x.metric==='cosine'||!(num(x.limit)>0)?null:plot(x.limit);}),
 borderColor:'#999',borderDash:[4,4],borderWidth:1,pointRadius:0,spanGaps:false}];
if(s.some(function(x){return x.floor!==null&&x.floor!==undefined;}))sets.push({label:'noise floor',
 data:s.map(function(x){return plot(x.floor);}),borderColor:'#73a857',borderWidth:1,pointRadius:0,spanGaps:true});
if(d.first!==null)sets.push({label:'first divergence',data:s.map(function(x){return x.i===d.first?plot(x.rel):null;}),
 borderColor:'#cc0000',backgroundColor:'#cc0000',pointRadius:7,pointStyle:'triangle',showLine:false});
var el=document.getElementById('error-curve');
new Chart(el,{type:'line',data:{labels:s.map(function(x){return x.i;}),datasets:sets},
 options:{animation:false,responsive:true,maintainAspectRatio:false,interaction:{mode:'index',intersect:false},
 scales:{y:{type:'logarithmic',min:lo,max:hi,title:{display:true,text:'rel_l2'}},
  x:{title:{display:true,text:'site (execution order)'}}},
 plugins:{tooltip:{callbacks:{title:function(it){var x=s[it[0].dataIndex];return '#'+x.i+' '+x.site;},
  label:function(it){var x=s[it.dataIndex];if(it.datasetIndex>0)return null;
   return ['type '+(x.type||'?'),'rel_l2 '+fmt(x.rel),'cosine '+(x.cos===null?'-':x.cos),'limit '+fmt(x.limit),
   'gain '+fmt(x.gain)].concat(x.floor!==null&&x.floor!==undefined?['floor '+fmt(x.floor),'excess '+fmt(x.excess)]:[])
   .concat(x.over?['OVER ('+x.metric+')']:[]);}}}}}});
el.setAttribute('data-rendered','1');
var ld=document.getElementById('local-data');if(!ld)return;var m=JSON.parse(ld.textContent).modules;
var lpos=m.map(function(x){return num(x.local);}).concat(m.map(function(x){return num(x.expected);}))
 .filter(function(v){return v>0&&isFinite(v);});
var llo=lpos.length?Math.min.apply(null,lpos)/10:1e-12, lhi=lpos.length?Math.max.apply(null,lpos)*10:1;
function lplot(v){v=num(v);if(v===null||v===undefined)return null;if(v<=0)return llo;if(!isFinite(v))return lhi;return v;}
var lel=document.getElementById('local-curve');
new Chart(lel,{type:'line',data:{labels:m.map(function(x){return x.module;}),datasets:[
 {label:'local rel_l2',data:m.map(function(x){return lplot(x.local);}),borderColor:'#3465a4',borderWidth:1.5,
  pointRadius:m.map(function(x){return x.introduced?4:1.5;}),
  pointBackgroundColor:m.map(function(x){return x.introduced?'#cc0000':'#3465a4';}),spanGaps:true},
 {label:'expected noise',data:m.map(function(x){return lplot(x.expected);}),borderColor:'#73a857',borderWidth:1,
  pointRadius:0,spanGaps:true},
 {label:'limit',data:m.map(function(x){return lplot(x.limit);}),borderColor:'#999',borderDash:[4,4],borderWidth:1,
  pointRadius:0,spanGaps:true}]},
 options:{animation:false,responsive:true,maintainAspectRatio:false,interaction:{mode:'index',intersect:false},
 scales:{y:{type:'logarithmic',min:llo,max:lhi,title:{display:true,text:'local rel_l2'}},
  x:{ticks:{display:false},title:{display:true,text:'module (execution order)'}}},
 plugins:{tooltip:{callbacks:{label:function(it){var x=m[it.dataIndex];if(it.datasetIndex>0)return null;
  return ['local '+fmt(x.local),'expected '+fmt(x.expected),'limit '+fmt(x.limit)]
  .concat(x.introduced?['INTRODUCED']:[]);}}}}}});
lel.setAttribute('data-rendered','1');})();"""


def render_html(report) -> str:
    """The HTML page of a Report (from compare, or ``read_report``), as one self-contained string."""
    doc = report.to_dict()
    loc = doc.get("localization") or localize(report)
    title = f"tensorparity: {(doc.get('reference') or {}).get('label')} vs {(doc.get('candidate') or {}).get('label')}"
    warnings = "".join(f"<li>{_e(w)}</li>" for w in doc.get("warnings") or [])
    body = [f"<h1>{_e(title)}</h1><p class=dim>report schema {_e(doc.get('schema_version'))}, created "
            f"{_e(doc.get('created'))}; reference {_e(', '.join((doc.get('reference') or {}).get('paths') or []))}; "
            f"candidate {_e(', '.join((doc.get('candidate') or {}).get('paths') or []))}</p>",
            _card(doc, loc), _local_card(doc.get("local")), f"<ul class=dim>{warnings}</ul>" if warnings else "",
            _curve_section(loc), _local_section(doc.get("local")), _gain_section(loc), _threshold_section(doc), _worst_section(loc), _logit_section(doc),
            _unmatched_section(doc), _sites_section(loc)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}<script>{_chart_js()}</script><script>{_JS}</script>"
            "</body></html>")


def write_html(report, path: str | os.PathLike) -> str:
    """Write the HTML page of a Report to ``path`` (atomically); returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(render_html(report))
    os.replace(tmp, path)
    return path


def write_report_html(report_path: str | os.PathLike, path: str | os.PathLike) -> str:
    """``parity report``: read a saved report (``read_report``) and write its HTML page; returns its verdict.

    Raises:
        ReportError: a missing or unreadable report, or another schema MAJOR version.
    """
    report = read_report(report_path)
    write_html(report, path)
    return report.verdict
