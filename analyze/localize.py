"""Localization (docs/ARCHITECTURE.md section 6): where does the drift start, and which modules introduce it?

- **First divergent site**: the sites walked in the reference's execution order; the first one that the judge put
  over its limit, with its neighbours and the whole per-site error curve.
- **Error gain** of every module (module path + call index) = its output error / its input error, per record
  (sample, step, rank), from the pre-hook records ``<module>:in.*`` and the post-hook records ``<module>:out*``;
  the error of a side is the largest ``rel_l2`` (``stats_rel_l2`` for statistics-only records) among its records.
  A module that *introduces* error has a large gain; one that passes error on has a gain near 1. Degenerate cases:
  input error 0 and output error > 0 is an infinite gain (ranked first; among several, the earliest output in
  execution order first, which names the innermost module that broke, not its parents); both 0 is "no error" and
  not ranked; a module with outputs but no captured inputs has no gain ("no input record") and is not ranked.
- **Noise floor**: with a floor report (the reference against a second capture of itself on its own device), the
  excess of every record's error over the floor's error for the same key (compare's judge judges that excess, so
  nondeterminism does not count as divergence; the curve shows the floor and the excess).

Nothing here judges: whether a site is over comes from the judge's decision stored on the site (judge.py); sites
of reports written before the decisions were stored are judged by tolerance when they are read.
- **Worst elements** of the first divergent site: the k largest ``|a - b|`` of its worst record, with their indices
  and both values, streamed block by block (memory bounded by the block size).

Everything here reads a ``Report`` (``read_report`` gives one for a saved report, of any 1.x schema).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from protocol import RecordKey, split_site


DEFAULT_NEIGHBOURS = 3
DEFAULT_WORST_ELEMENTS = 10
ROOT_NAME = "<root>"
_TILE = 1 << 16


@dataclass
class SiteView:
    """One site of a report, read alike from a ``SiteResult`` or its JSON dict."""

    index: int
    name: str
    site: str
    call: int
    module_type: str
    kind: str
    tolerance: float | None
    worst: dict
    records: list = field(default_factory=list)  # dicts: key, sample, step, rank, status, metrics, error
    over_tolerance: bool = False
    decided_by: str | None = None
    judged_by: str = "tolerance"
    limit: float | None = None
    value: float | None = None
    decided_key: str | None = None

    @property
    def module(self) -> str:
        return split_site(self.site)[0]

    @property
    def direction(self) -> str:
        return split_site(self.site)[1]


def report_sites(report) -> list[SiteView]:
    """The sites of a Report, in the reference's execution order, with their records as plain dicts."""
    views = []
    for s in report.sites:
        recs = [{"key": r.key, "sample": r.sample, "step": r.step, "rank": r.rank, "status": r.status,
                 "metrics": r.metrics or {}, "kind": r.kind, "error": r.error, "over": r.over_tolerance}
                for r in s.records]
        views.append(SiteView(s.index, s.name, s.site, s.call, s.module_type or "", s.kind or "", s.tolerance,
                              dict(s.worst or {}), recs, bool(s.over_tolerance), s.decided_by, s.judged_by,
                              s.limit, s.value, s.decided_key))
    return views


def record_error(metrics: dict) -> float | None:
    """The error of one record: ``rel_l2``, else ``stats_rel_l2`` (statistics-only), else None."""
    for name in ("rel_l2", "stats_rel_l2"):
        v = metrics.get(name)
        if v is not None:
            return float(v)
    return None


def _rkey(rec: dict) -> tuple:
    return rec["sample"], rec["step"], rec["rank"]


def _max(values) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return math.nan if any(math.isnan(v) for v in vals) else max(vals)


def floor_errors(floor_report) -> dict:
    """Per-record errors of a floor report: ``{(rank, key text): (rel_l2, cosine)}``."""
    out = {}
    for s in report_sites(floor_report):
        for r in s.records:
            m = r["metrics"]
            out[(r["rank"], r["key"])] = (record_error(m), m.get("cosine"))
    return out


def error_curve(views: list[SiteView], *, floor: dict | None = None) -> list:
    """One entry per site in execution order: its worst error, cosine, the limit it was judged against, whether
    it is over (the judge's decision, judge.py), and with a floor the floor's error and the excess over it."""
    curve = []
    for v in views:
        errs = [record_error(r["metrics"]) for r in v.records if r["status"] != "error"]
        coss = [r["metrics"].get("cosine") for r in v.records if r["status"] != "error"]
        rel = _max(errs)
        if rel is None:  # records filtered to other metrics: the site's worst values were kept
            rel = v.worst.get("rel_l2", v.worst.get("stats_rel_l2"))
        cos = min((c for c in coss if c is not None), default=v.worst.get("cosine"))
        over = v.over_tolerance
        entry = {"index": v.index, "site": v.name, "module": v.module, "direction": v.direction,
                 "module_type": v.module_type, "kind": v.kind, "rel_l2": rel, "cosine": cos,
                 "limit": v.limit if v.limit is not None else v.tolerance, "judged_by": v.judged_by,
                 "floor": None, "excess": None,
                 "over": over, "metric": v.decided_by if over else None, "value": v.value if over else None,
                 "errors": sum(r["status"] == "error" for r in v.records),
                 "key": v.decided_key if over else None, "gain": None}
        if floor is not None:
            _apply_floor(entry, v, floor)
        curve.append(entry)
    return curve


def _apply_floor(entry: dict, v: SiteView, floor: dict) -> None:
    floors, excess = [], []
    for r in v.records:
        e = record_error(r["metrics"])
        f = floor.get((r["rank"], r["key"]))
        if e is None or f is None or f[0] is None:
            continue
        floors.append(f[0])
        excess.append(e - f[0])
    entry["floor"] = _max(floors)
    entry["excess"] = _max(excess)


def find_first_divergence(curve: list) -> dict | None:
    """The first over-limit entry of an error curve (execution order), or None."""
    return next((e for e in curve if e["over"]), None)


def error_gains(views: list[SiteView]) -> tuple[list, dict]:
    """Error gain of every module, ranked: infinite gains first (earliest output first), then by gain.

    Returns:
        ``(ranking, other)``: ranking is a list of ``{"module", "call", "module_type", "gain", "in_error",
        "out_error", "in_site", "out_site", "index", "key", "infinite"}`` (index: the output site's position);
        other is ``{"no_error": [modules], "no_input": [modules]}``.
    """
    modules: dict = {}
    for v in views:
        module, direction, _ = split_site(v.site)
        if direction not in ("in", "out"):
            continue
        m = modules.setdefault((module, v.call), {"in": {}, "out": {}, "type": v.module_type, "out_index": None,
                                                  "out_sites": {}, "in_sites": {}})
        if direction == "out" and m["out_index"] is None:
            m["out_index"] = v.index
        for r in v.records:
            e = record_error(r["metrics"]) if r["status"] != "error" else None
            if e is None:
                continue
            side, sites = m[direction], m[f"{direction}_sites"]
            k = _rkey(r)
            if k not in side or e > side[k] or math.isnan(e):
                side[k], sites[k] = e, (v.name, r["key"])
    ranking, no_error, no_input = [], [], []
    for (module, call), m in modules.items():
        if not m["out"]:
            continue
        name = module or ROOT_NAME
        label = name if call == 0 else f"{name}#{call}"
        if not m["in"]:
            no_input.append(label)
            continue
        best = None
        for k, out_err in m["out"].items():
            in_err = m["in"].get(k)
            if in_err is None:
                continue
            gain = _gain(in_err, out_err)
            if gain is None:
                continue
            if best is None or _gain_order(gain) > _gain_order(best[0]):
                best = (gain, in_err, out_err, k)
        if best is None:
            (no_error if any(k in m["in"] for k in m["out"]) else no_input).append(label)
            continue
        gain, in_err, out_err, k = best
        ranking.append({"module": label, "call": call, "module_type": m["type"], "gain": gain,
                        "infinite": math.isinf(gain), "in_error": in_err, "out_error": out_err,
                        "in_site": m["in_sites"][k][0], "out_site": m["out_sites"][k][0],
                        "key": m["out_sites"][k][1], "index": m["out_index"]})
    ranking.sort(key=lambda g: (0, g["index"]) if g["infinite"] else (1, -_gain_order(g["gain"]), g["index"]))
    return ranking, {"no_error": no_error, "no_input": no_input}


def _gain(in_err: float, out_err: float) -> float | None:
    if math.isnan(in_err) or math.isnan(out_err):
        return math.nan
    if in_err == 0.0:
        return math.inf if out_err > 0.0 else None  # both 0: no error to speak of
    return out_err / in_err


def _gain_order(g: float) -> float:
    return -1.0 if math.isnan(g) else g


def worst_elements(ref_reader, cand_reader, ref_info, cand_info, *, k: int = DEFAULT_WORST_ELEMENTS,
                   chunk_elements: int = 1 << 22) -> list[dict]:
    """The ``k`` elements of a record pair with the largest ``|a - b|`` (NaN/Inf mismatches first), streamed.

    Args:
        ref_reader, cand_reader: open DumpReaders; ref_info, cand_info: the paired RecordInfos (data records of the
            same shape).
        k: how many elements. chunk_elements: elements per block read (memory bound).

    Returns:
        ``[{"index": [i, j, ...], "flat": n, "reference": a, "candidate": b, "abs_diff": |a-b|}]``, largest first.
    """
    best = [np.empty(0), np.empty(0, dtype=np.int64), np.empty(0), np.empty(0)]  # |a-b|, flat index, a, b
    offset = 0
    for a_block, b_block in zip(ref_reader.iter_blocks(ref_info, chunk_elements, reuse=True),
                                cand_reader.iter_blocks(cand_info, chunk_elements, reuse=True)):
        for start in range(0, a_block.size, _TILE):  # float64 scratch bounded by the tile, not the block
            a = np.asarray(a_block[start:start + _TILE], dtype=np.float64)
            b = np.asarray(b_block[start:start + _TILE], dtype=np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                d = np.abs(a - b)
            index = None
            if best[0].size == k:
                # only elements above the k-th largest so far (or NaN: a NaN or Inf on some side) can enter: once
                # the first tiles have set it, a tile costs a compare instead of a partition (a third of a
                # comparison's time went here). Strictly above: of equal ones, the earlier stays (a stable order).
                index = np.flatnonzero((d > best[0].min()) | np.isnan(d))
                if not index.size:
                    continue
                a, b, d = a[index], b[index], d[index]
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            d[same] = 0.0
            d[np.isnan(d)] = np.inf  # one-sided NaN/Inf: the worst
            pick = np.argpartition(d, d.size - k)[d.size - k:] if d.size > k else np.arange(d.size)
            at = (pick if index is None else index[pick]) + offset + start
            best = [np.concatenate([best[0], d[pick]]), np.concatenate([best[1], at]),
                    np.concatenate([best[2], a[pick]]), np.concatenate([best[3], b[pick]])]
            if best[0].size > k:
                # the k largest, of equal ones the earliest (lexsort: by -d, then index)
                keep = np.lexsort((best[1], -best[0]))[:k]
                best = [x[keep] for x in best]
        offset += a_block.size
    best_d, best_i, best_a, best_b = best
    order = np.lexsort((best_i, -best_d))
    shape = tuple(ref_info.shape) or (1,)
    out = []
    for j in order:
        flat = int(best_i[j])
        out.append({"index": [int(x) for x in np.unravel_index(flat, shape)] if ref_info.shape else [],
                    "flat": flat, "reference": float(best_a[j]), "candidate": float(best_b[j]),
                    "abs_diff": float(best_d[j])})
    return out


def localize(report, *, floor: dict | None = None, neighbours: int = DEFAULT_NEIGHBOURS) -> dict:
    """The localization block of a report (without worst elements; see ``attach_localization``).

    Args:
        report: a Report or a report dict.
        floor: ``floor_errors(floor_report)``, or None.
        neighbours: how many sites before and after the first divergent site to list.

    Returns:
        ``{"first_divergence": entry or None, "neighbours": {"before": [...], "after": [...]}, "curve": [...],
        "gain_ranking": [...], "gain_other": {...}, "floor": bool, "judged_by": "thresholds"|"tolerance"}``.
    """
    views = report_sites(report)
    curve = error_curve(views, floor=floor)
    ranking, other = error_gains(views)
    by_out = {}
    for g in ranking:
        by_out.setdefault(g["out_site"], g["gain"])
    for e in curve:
        e["gain"] = by_out.get(e["site"])
    first = find_first_divergence(curve)
    near = {"before": [], "after": []}
    if first is not None:
        i = curve.index(first)
        near = {"before": [e["site"] for e in curve[max(0, i - neighbours):i]],
                "after": [e["site"] for e in curve[i + 1:i + 1 + neighbours]]}
    return {"first_divergence": first, "neighbours": near, "curve": curve, "gain_ranking": ranking,
            "gain_other": other, "floor": floor is not None,
            "judged_by": _judged_by(views), "worst_elements": None}


def _judged_by(views: list[SiteView]) -> str:
    """How the report was judged: ``thresholds`` when any site had thresholds, else ``floor`` or ``tolerance``."""
    ways = {v.judged_by for v in views}
    return next((w for w in ("thresholds", "floor") if w in ways), "tolerance")


def first_divergence_summary(entry: dict | None, report=None) -> dict | None:
    """The compact ``Report.first_divergence`` dict of a localization entry (REPORT_SCHEMA.md)."""
    if entry is None:
        return None
    return {"index": entry["index"], "site": entry["site"], "metric": entry["metric"], "value": entry["value"],
            "tolerance": entry["limit"], "rel_l2": entry["rel_l2"], "cosine": entry["cosine"], "key": entry["key"],
            "judged_by": entry["judged_by"], "excess": entry["excess"], "gain": entry["gain"]}


def attach_localization(report, ref_side, cand_side, *, floor_report=None, neighbours: int = DEFAULT_NEIGHBOURS,
                        k: int = DEFAULT_WORST_ELEMENTS, chunk_elements: int = 1 << 22) -> None:
    """Compute the localization of a freshly compared and judged Report (dumps still open) and store it on the
    report: ``report.localization`` and ``report.first_divergence`` (the first site the judge put over its limit),
    plus the worst elements of the first divergent site, streamed from the dumps."""
    floor = floor_errors(floor_report) if floor_report is not None else None
    loc = localize(report, floor=floor, neighbours=neighbours)
    first = loc["first_divergence"]
    if first is not None:
        loc["worst_elements"] = _worst_of_site(report, first["site"], ref_side, cand_side, k, chunk_elements)
    report.localization = loc
    report.first_divergence = first_divergence_summary(first)


def _worst_of_site(report, name: str, ref_side, cand_side, k: int, chunk_elements: int) -> dict:
    view = next(v for v in report_sites(report) if v.name == name)
    recs = [r for r in view.records if r["status"] != "error" and record_error(r["metrics"]) is not None]
    if not recs:
        return {"site": name, "key": None, "elements": [], "note": "no comparable record"}
    worst = max(recs, key=lambda r: (math.isnan(record_error(r["metrics"])), record_error(r["metrics"])))
    rank, key = worst["rank"], RecordKey.parse(worst["key"])
    rd, cd = ref_side.readers[rank], cand_side.readers[rank]
    ri, ci = rd.record(key), cd.record(key)
    if not (ri.has_data and ci.has_data) or ri.storage == "topk" or tuple(ri.shape) != tuple(ci.shape):
        return {"site": name, "key": worst["key"], "rank": rank, "elements": [],
                "note": f"no element data ({ri.storage} vs {ci.storage} records)"}
    elems = worst_elements(rd, cd, ri, ci, k=k, chunk_elements=chunk_elements)
    return {"site": name, "key": worst["key"], "rank": rank, "shape": list(ri.shape), "elements": elems,
            "note": None if ri.storage == "full" else f"indices within the stored {ri.storage} ({ri.reduction})"}
