"""Local error: the error each module introduces itself, measured by replay (docs/METRICS.md section 7).

Accumulated error (every site's error against the reference run) hides where error is introduced once the candidate
is not bit-compatible: in a bfloat16 candidate every site carries the rounding of everything before it. A replayer
(protocol/replay.py) calls the reference model's module on the candidate's own recorded inputs, so that

- **local error** = ``rel_l2`` of the candidate's output against the reference module's output on the same inputs:
  nothing inherited;
- **expected** = ``rel_l2(exact, low) + rel_l2(exact, reference)``: the module replayed in float64 (exact) against
  the same in the candidate's dtype (low) and in the reference's: what the two precisions alone explain;
- the judge (``judge_local``) says a call **introduces error** when local > factor x expected, or when the candidate
  has NaN/Inf that the replay in its dtype does not.

A module is judged by its worst call (sample, step, rank) and, within a call, its worst output. The block is
ranked for a reader: modules that introduce error first, in execution order (the innermost module that breaks
comes before its parents, whose outputs come later), then the rest by local / limit.
"""
from __future__ import annotations

import math
import time

from .judge import DEFAULT_REPLAY_FACTOR, Decision, judge_local
from .report import site_name
from .tensor_metrics import tensor_metrics

ROOT_NAME = "<root>"


def replay_local_errors(cand_side, replayer, *, factor: float = DEFAULT_REPLAY_FACTOR,
                        modules: str | None = None, site_index: dict | None = None) -> dict:
    """Replay every module call of the candidate that has full output records and judge its local error.

    Args:
        cand_side: the candidate's open side (``pairing.open_side``): one DumpReader per rank.
        replayer: an open replayer (protocol/replay.py) of the reference model.
        factor: how many times the expected noise a local error may reach before it counts as introduced.
        modules: a regex searched in module paths; other modules are not replayed.
        site_index: ``{site name: index}`` of the report's sites, stored on each entry (for the error curve).

    Returns:
        The report's ``local`` block (REPORT_SCHEMA.md): ``{"model", "dtype", "factor", "replayed", "modules",
        "first_introduced", "skipped", "seconds"}``.
    """
    started = time.perf_counter()
    worst: dict = {}  # (module, call) -> its worst entry
    first_seq: dict = {}  # (module, call) -> seq of its earliest output record
    skipped: dict = {}
    replayed = 0
    multi = len(cand_side.readers) > 1
    for rank, reader in enumerate(cand_side.readers):
        for rc in replayer.replay(reader, modules=modules):
            label = _label(rc.module, rc.call)
            if rc.skipped is not None:
                skipped.setdefault(rc.skipped, [])
                if label not in skipped[rc.skipped]:
                    skipped[rc.skipped].append(label)
                continue
            replayed += 1
            for out in rc.outputs:
                entry = _judge_output(reader, out, factor, rank, multi, getattr(replayer, "dtype", ""))
                entry.update(module=label, module_path=rc.module, call=rc.call, module_class=rc.module_class,
                             candidate_class=rc.candidate_class, sample=rc.sample, step=rc.step,
                             index=(site_index or {}).get(entry["site"]))
                if rc.candidate_class and rc.module_class and rc.candidate_class != rc.module_class:
                    entry["note"] = (f"the candidate's module is a {rc.candidate_class.rsplit('.', 1)[-1]}, the "
                                     f"reference's a {rc.module_class.rsplit('.', 1)[-1]}")
                key = (rc.module, rc.call)
                first_seq[key] = min(first_seq.get(key, entry["first_seq"]), entry["first_seq"])
                if key not in worst or _rank(entry) > _rank(worst[key]):
                    worst[key] = entry
    entries = list(worst.values())
    for key, entry in worst.items():  # the module's place in execution order: its earliest output
        entry["first_seq"] = first_seq[key]
    introduced = sorted((e for e in entries if e["introduced"]), key=lambda e: e["first_seq"])
    rest = sorted((e for e in entries if not e["introduced"]), key=lambda e: (-_ratio_order(e["ratio"]), e["first_seq"]))
    return {"model": getattr(replayer, "model_path", ""), "dtype": getattr(replayer, "dtype", ""), "factor": factor,
            "modules_regex": modules, "replayed": replayed, "introduced": len(introduced),
            "modules": introduced + rest, "first_introduced": introduced[0] if introduced else None,
            "skipped": skipped, "seconds": round(time.perf_counter() - started, 3)}


#: Unit roundoff (half an ulp of 1, relative) of each floating dtype.
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8,
                 "float8_e4m3fn": 2.0 ** -4, "float8_e4m3fnuz": 2.0 ** -4, "float8_e5m2": 2.0 ** -3,
                 "float8_e5m2fnuz": 2.0 ** -3}


def _at_least_rounding(error: float | None, dtype: str) -> float | None:
    """A replay's error against float64, never below the rms of rounding an output to ``dtype`` (u / sqrt 3):
    a module that computes internally in a fixed precision (an RMSNorm in float32) replays "exactly" in float64
    too, yet another kernel's result differs from it by that rounding."""
    if error is None:
        return None
    return max(error, UNIT_ROUNDOFF.get(dtype, 0.0) / math.sqrt(3.0))


def _judge_output(reader, out, factor: float, rank: int, multi: bool, ref_dtype: str) -> dict:
    """The local error of one replayed output (its dict entry, with the judge's decision)."""
    info = out.info
    cand = reader.read(info)
    reference, exact = out.reference, out.exact
    low = out.low if out.low is not None else reference
    local = tensor_metrics(reference, cand).values
    e_ref = _at_least_rounding(tensor_metrics(exact, reference).values.get("rel_l2"), ref_dtype)
    e_low = _at_least_rounding(tensor_metrics(exact, low).values.get("rel_l2"), info.dtype) \
        if out.low is not None else e_ref
    expected = None if e_ref is None or e_low is None else e_ref + e_low
    non_finite = 0
    if local.get("nan_mismatch") or local.get("inf_mismatch"):
        # NaN/Inf the candidate has where the reference has none: introduced, unless its dtype gives them too
        against_low = tensor_metrics(low, cand).values
        non_finite = int(against_low.get("nan_mismatch") or 0) + int(against_low.get("inf_mismatch") or 0)
    key = (f"r{rank}:" if multi else "") + str(info.key)
    decision: Decision = judge_local(local.get("rel_l2"), expected, factor=factor, non_finite=non_finite, key=key)
    return {"site": site_name(info.key.site, info.key.call), "key": key, "rank": rank, "first_seq": info.seq,
            "dtype": info.dtype, "local": local.get("rel_l2"), "cosine": local.get("cosine"),
            "max_abs_diff": local.get("max_abs_diff"), "expected": expected, "expected_low": e_low,
            "expected_reference": e_ref, "limit": decision.limit, "ratio": decision.ratio,
            "introduced": decision.over, "decided_by": decision.metric, "note": None}


def _label(module: str, call: int) -> str:
    name = module or ROOT_NAME
    return name if call == 0 else f"{name}#{call}"


def _ratio_order(r) -> float:
    return -1.0 if r is None or (isinstance(r, float) and math.isnan(r)) else r


def _rank(entry: dict) -> tuple:
    return entry["introduced"], _ratio_order(entry["ratio"])

