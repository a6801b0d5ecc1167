"""``analyze.compare``: pair two dumps, compute every metric, aggregate per site, find the first divergence."""
from __future__ import annotations

import datetime as _dt
import math
import os
import time

import numpy as np

from common.console import progress as progress_bar
from common.read_ahead import read_ahead
from protocol import CorruptDumpError, DumpReader, PairingError, RecordInfo, split_site

from .judge import DEFAULT_REPLAY_FACTOR, Decision, judge_record, judge_site
from .localize import floor_errors
from .logit_block import build_logit_site, compare_logit_records, logit_pair_usable
from .logit_metrics import DEFAULT_TOPK, LOGIT_METRICS
from .pairing import check_pairable, find_input_set, open_side, pair_records
from .perplexity import logit_records
from .report import RecordResult, Report, SiteResult, site_name
from .summary import aggregate
from .tensor_metrics import (DEFAULT_ATOL, DEFAULT_RTOL, STATS_METRICS, TENSOR_METRICS, MetricValues,
                             TensorMetricAccumulator, stats_metrics)
from .tolerances import DEFAULT_TOLERANCES, dtype_class, tolerance_for

#: Every metric name ``compare(metrics=...)`` accepts.
ALL_METRICS = TENSOR_METRICS + STATS_METRICS + ("topk_index_overlap",) + LOGIT_METRICS
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def compare(ref_path, cand_path, *, inputs=None, metrics=None, sites: str | None = None,
            logit_sites: str | None = None, tolerances: dict | None = None,
            chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
            topk: int = DEFAULT_TOPK, show_progress: bool | None = None, thresholds=None, floor=None,
            max_failure_rate: float = 0.01, replay=None, replay_factor: float = DEFAULT_REPLAY_FACTOR,
            replay_modules: str | None = None, replay_device: str | None = None, scheduler=None) -> Report:
    """Compare a candidate dump with a reference dump.

    Args:
        ref_path, cand_path: a dump, a list of dumps (one per rank), a folder of rank dumps, or a glob.
        inputs: the input set file (for next-token labels); default: found next to the dumps, else none.
        metrics: metric names to keep in the report (default all; see ALL_METRICS). The verdict always uses
            ``rel_l2``/``cosine`` (``stats_rel_l2`` for statistics-only records).
        sites: regex searched in each record's site; other records are left out.
        logit_sites: regex naming the logits sites (default: the root output ``:out.logits``).
        tolerances: dtype -> tolerance overrides of tolerances.DEFAULT_TOLERANCES.
        chunk_elements: elements per block read from disk (memory bound).
        atol, rtol: ``allclose_frac`` tolerances. topk: ``topk_overlap``'s k.
        show_progress: progress bar on stderr (default: when stderr is a terminal).
        thresholds: a thresholds file, document or ``thresholds.Thresholds``: the sites they name are judged
            against them instead of the default tolerance (report.thresholds summarizes the check).
        floor: a noise-floor dump (the reference captured a second time on its own device): sites without
            thresholds are judged by each record's error in excess of the floor's error for the same key.
        max_failure_rate: allowed share of tokens over a logit threshold.
        replay: the reference model (a folder, or an open replayer of protocol/replay.py): each module call of the
            candidate with full outputs is replayed on the candidate's inputs and its local error judged
            (report.local; analyze/local_error.py). A folder is loaded in the reference dump's dtype on
            ``replay_device`` (default cpu) and freed afterwards.
        replay_factor: a local error over this many times the expected noise counts as introduced.
        replay_modules: a regex searched in module paths: replay only those.
        scheduler: a Dask scheduler's address (or ``analyze.distributed.ClusterSettings``, a ``Client``): the
            record pairs are measured on its workers, which open the dumps by the same paths
            (analyze/distributed.py); the report is the local run's.

    Returns:
        A Report (``report.verdict``, ``report.exit_code``, ``report.sites``, ``report.first_divergence``...).

    Raises:
        InputSetMismatchError: the dumps (or the given input set) consumed different input sets.
        PairingError: different world sizes, inconsistent rank files, or no record in common (nothing compared).
        ValueError: an unknown metric name or an invalid regex.
        ThresholdFileError: a missing or malformed thresholds file.
        ClusterError: with ``scheduler``, a cluster that cannot do the work (unreachable, no worker...).
        ParityError subclasses: unreadable dumps; CaptureError: a replay model that cannot be loaded.
    """
    unknown = sorted(set(metrics or ()) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
    started = time.perf_counter()
    from .threshold_check import apply_thresholds
    from .thresholds import as_thresholds
    thresholds = as_thresholds(thresholds) if thresholds is not None else None  # a bad file fails before any work
    floor_report = None
    if floor is not None:
        floor_report = compare(ref_path, floor, metrics=["rel_l2", "stats_rel_l2", "cosine"], sites=sites,
                               logit_sites=logit_sites, tolerances=tolerances, chunk_elements=chunk_elements,
                               show_progress=show_progress, scheduler=scheduler)
    floor_by_key = floor_errors(floor_report) if floor_report is not None else None

    def site_limits(name: str) -> dict | None:
        return thresholds.sites.get(name) if thresholds is not None else None
    ref = open_side(ref_path)
    try:
        cand = open_side(cand_path)
    except BaseException:
        ref.close()
        raise
    try:
        warnings = check_pairable(ref, cand)
        inputset = find_input_set([ref, cand], inputs)
        if inputset is None and ref.manifest.inputs_sha256:
            warnings.append(f"input set {ref.manifest.inputs_sha256[:16]}... not found next to the dumps: "
                            "no next-token labels, so no perplexity, NLL or delta_p (pass --inputs)")
        table = {**DEFAULT_TOLERANCES, **(tolerances or {})}
        report = Report(reference=_describe(ref), candidate=_describe(cand),
                        inputs={"path": inputset.path if inputset else None,
                                "sha256": ref.manifest.inputs_sha256 or None},
                        options={"metrics": list(metrics) if metrics else "all", "sites": sites,
                                 "logit_sites": logit_sites or ":out.logits", "tolerances": table, "atol": atol,
                                 "rtol": rtol, "topk": topk, "chunk_elements": chunk_elements,
                                 "thresholds": thresholds.path if thresholds is not None else None,
                                 "max_failure_rate": max_failure_rate},
                        warnings=warnings,
                        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        multi = ref.world_size > 1
        pairings = [pair_records(r, c, sites=sites, rank=i)
                    for i, (r, c) in enumerate(zip(ref.readers, cand.readers))]
        for p in pairings:
            prefix = f"r{p.rank}:" if multi else ""
            report.unmatched["reference_only"] += [prefix + str(i.key) for i in p.only_reference]
            report.unmatched["candidate_only"] += [prefix + str(i.key) for i in p.only_candidate]
        keep = set(metrics) if metrics else None
        site_map: dict[tuple, SiteResult] = {}
        decisions: dict[tuple, list] = {}  # (site, call) -> the judge's decision of each record
        logit_map: dict[str, list] = {}
        total = sum(len(p.pairs) for p in pairings)
        if total == 0:  # nothing compared must never read as "pass"
            only_ref = sum(len(p.only_reference) for p in pairings)
            only_cand = sum(len(p.only_candidate) for p in pairings)
            if sites and (only_ref or only_cand or any(len(r) for r in ref.readers)):
                raise PairingError(f"no record of both dumps has a site matching --sites {sites!r}",
                                   hint="check the regex against 'parity inspect' of the reference")
            raise PairingError(f"the dumps have no record key in common ({only_ref} only in the reference, "
                               f"{only_cand} only in the candidate)", f"{cand.paths[0]} vs {ref.paths[0]}",
                               "capture both from the same model and inputs; an ONNX capture pairs with a "
                               "PyTorch one through --sites-like and --rename")
        with progress_bar(total, "comparing records", enabled=show_progress) as bar:
            measured = measure_pairs(pairings, ref, cand, inputset, logit_sites=logit_sites, scheduler=scheduler,
                                     atol=atol, rtol=rtol, table=table, topk=topk, chunk_elements=chunk_elements)
            for p, ri, ci, rec, logit in measured:
                decision = judge_record(rec.metrics, status=rec.status, stats_only=rec.kind == "stats-only",
                                        tolerance=rec.tolerance or 0.0, key=rec.key,
                                        limits=site_limits(site_name(ri.key.site, ri.key.call)),
                                        floor=floor_by_key.get((p.rank, rec.key)) if floor_by_key else None)
                _add_to_site(site_map, decisions, ri, rec, decision, keep)
                if logit is not None:
                    logit_map.setdefault(ri.key.site, []).append(logit)
                bar.advance()
        report.sites = list(site_map.values())
        for s in report.sites:
            how = ("thresholds" if site_limits(s.name) is not None
                   else "floor" if floor_by_key is not None else "tolerance")
            s.set_decision(judge_site(decisions[(s.site, s.call)], how))
            _finish_site(s, report)
        report.logits = [build_logit_site(site, recs, inputset, topk=topk) for site, recs in logit_map.items()]
        if keep is not None:
            for ls in report.logits:
                for r in ls.records:
                    r.means = {m: v for m, v in r.means.items() if m in keep}
        if thresholds is not None:
            checked = apply_thresholds(report, thresholds, max_failure_rate=max_failure_rate, inputs=inputset)
            report.thresholds = {k: v for k, v in checked.items() if k != "site_results"}
        from .localize import attach_localization
        attach_localization(report, ref, cand, floor_report=floor_report, chunk_elements=chunk_elements)
        if floor_report is not None:
            report.options["floor"] = floor_report.candidate["paths"]
        if replay is not None:
            report.local = _replay(report, ref, cand, replay, replay_factor, replay_modules, replay_device)
        report.totals = {
            "sites": len(report.sites), "records": total,
            "over_tolerance": sum(s.over_tolerance for s in report.sites),
            "error_records": len(report.errors),
            "stats_only_records": sum(r.kind == "stats-only" for s in report.sites for r in s.records),
            "excluded_positions": sum(r.excluded for s in report.sites for r in s.records),
            "reference_only": len(report.unmatched["reference_only"]),
            "candidate_only": len(report.unmatched["candidate_only"]),
            "module_outputs": paired_module_outputs(pairings),
        }
        report.duration_s = round(time.perf_counter() - started, 3)
        return report
    finally:
        ref.close()
        cand.close()


def _replay(report: Report, ref, cand, replay, factor: float, modules: str | None, device: str | None) -> dict:
    """The local-error block: replay the candidate's module calls on the reference model (``replay``: a folder,
    opened here in the reference's dtype, or an open replayer)."""
    from protocol.replay import open_replayer
    from .local_error import replay_local_errors
    owned = isinstance(replay, (str, os.PathLike))
    replayer = replay
    if owned:
        dtype = ref.manifest.dtype if ref.manifest.dtype in ("float32", "float16", "bfloat16", "float64") else None
        replayer = open_replayer(os.fspath(replay), dtype=dtype, device=device)
    try:
        index = {s.name: s.index for s in report.sites}
        return replay_local_errors(cand, replayer, factor=factor, modules=modules, site_index=index)
    finally:
        if owned:
            replayer.close()


def paired_module_outputs(pairings) -> dict:
    """How many of the reference's modules (module path + call) with an output record have a partner in the
    candidate: ``{"reference": n, "paired": m}``. Across backends (a PyTorch reference, an ONNX candidate) this is
    the share of torch modules that the ONNX value names map to; between two captures of one backend it is all.
    """
    def outputs(rank: int, infos) -> set:
        return {(rank, split_site(i.key.site)[0], i.key.call) for i in infos if split_site(i.key.site)[1] == "out"}
    paired, seen = set(), set()
    for p in pairings:
        paired |= outputs(p.rank, (ri for ri, _ in p.pairs))
        seen |= outputs(p.rank, p.only_reference)
    seen |= paired
    return {"reference": len(seen), "paired": len(paired)}


def _describe(side) -> dict:
    m = side.manifest
    return {"paths": [os.path.abspath(p) for p in side.paths], "label": m.label, "run_id": m.run_id,
            "model": m.model, "device": m.device, "dtype": m.dtype, "framework": m.framework,
            "capture": {"method": m.capture.get("method"), "mode": m.capture.get("mode")},
            "world_size": side.world_size}


def compare_record(rd: DumpReader, cd: DumpReader, ri: RecordInfo, ci: RecordInfo, *, rank: int = 0,
                   atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, table: dict | None = None,
                   chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> RecordResult:
    """Compare one pair of records (same key). Never raises for a mismatch: it becomes an ``error`` result.

    Statistics-only records (either side) are compared on their statistics (kind ``stats-only``); ``slice`` and
    ``topk`` records on the data they hold (top-k adds ``topk_index_overlap``, the mean share of common indices per
    row); full records stream both tensors block by block.

    Damaged data on either side (a checksum mismatch, unreadable bytes: ``CorruptDumpError``) is an ``error``
    result too, ``damaged dump: <the reader's message>``, never metrics: damaged numbers are not a divergence.
    """
    tol = tolerance_for(ri.dtype, ci.dtype, table)
    kind = "stats-only" if "stats" in (ri.storage, ci.storage) else ri.storage
    rec = RecordResult(str(ri.key), ri.key.sample, ri.key.step, rank, ri.seq, kind, "ok", ri.dtype, ci.dtype,
                       list(ri.shape), list(ci.shape), tolerance=tol)
    error = None
    if dtype_class(ri.dtype) != dtype_class(ci.dtype):
        error = f"dtype-class mismatch: {ri.dtype} vs {ci.dtype}"
    elif kind == "stats-only":
        if tuple(ri.orig_shape) != tuple(ci.orig_shape):
            error = f"shape mismatch: {list(ri.orig_shape)} vs {list(ci.orig_shape)}"
    elif ri.storage != ci.storage or ri.reduction != ci.reduction:
        error = f"reduction mismatch: {ri.storage} {ri.reduction or ''} vs {ci.storage} {ci.reduction or ''}"
    elif tuple(ri.shape) != tuple(ci.shape):
        error = f"shape mismatch: {list(ri.shape)} vs {list(ci.shape)}"
    if error:
        rec.status, rec.error = "error", error
        return rec
    if kind == "stats-only":
        mv = stats_metrics(ri.stats, ci.stats)
    else:
        try:
            mv = _stream_metrics(rd, cd, ri, ci, atol, rtol, chunk_elements)
            if kind == "topk":
                mv.values["topk_index_overlap"] = _topk_index_overlap(rd.read_aux(ri), cd.read_aux(ci))
        except CorruptDumpError as exc:
            rec.status, rec.error = "error", f"damaged dump: {exc.message}"
            return rec
    rec.status, rec.metrics, rec.numel, rec.excluded = mv.status, mv.values, mv.numel, mv.excluded
    return rec


def measure_pairs(pairings, ref, cand, inputset, *, logit_sites: str | None = None, scheduler=None, **options):
    """Measure every record pair of every rank in the reference's order: the record loop of ``compare``.

    Args:
        pairings: ``pairing.pair_records`` of each rank, in rank order; ref, cand: the open sides.
        inputset: the input set (next-token labels of the logits records), or None.
        logit_sites: regex naming the logits sites (see ``compare``).
        scheduler: None (here, one record after the other), or a Dask scheduler: the pairs are measured on its
            workers in batches (analyze/distributed.py) and yielded in the same order with the same values.
        options: ``measure_pair``'s atol, rtol, table, topk, chunk_elements.

    Yields:
        ``(pairing, ri, ci, RecordResult, LogitRecordResult | None)`` per record pair.
    """
    work = []  # per rank: its pairing and, per record pair, whether it is a logits record (the logit block: rank 0)
    for p, rd in zip(pairings, ref.readers):
        logit_keys = {i.key for i in logit_records(rd, logit_sites)} if p.rank == 0 else set()
        work.append((p, [ri.key in logit_keys for ri, _ in p.pairs]))
    if scheduler is not None:
        from .distributed import measure_on_cluster
        yield from measure_on_cluster(measure_pair, work, ref, cand, inputset, scheduler=scheduler, options=options)
        return
    for (p, flags), rd, cd in zip(work, ref.readers, cand.readers):
        for (ri, ci), logit in zip(p.pairs, flags):
            yield (p, ri, ci, *measure_pair(rd, cd, ri, ci, rank=p.rank, logit=logit, inputset=inputset, **options))


def measure_pair(rd: DumpReader, cd: DumpReader, ri: RecordInfo, ci: RecordInfo, *, rank: int, logit: bool,
                 inputset, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, table: dict | None = None,
                 topk: int = DEFAULT_TOPK, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple:
    """One record pair's measurements: ``(RecordResult, LogitRecordResult | None)``; the token metrics when
    ``logit`` (a logits record) and both records hold usable float logits. Runs here or on a Dask worker."""
    rec = compare_record(rd, cd, ri, ci, rank=rank, atol=atol, rtol=rtol, table=table, chunk_elements=chunk_elements)
    if logit and rec.status != "error" and logit_pair_usable(ri, ci) \
            and dtype_class(ri.dtype) == dtype_class(ci.dtype) == "float":
        return rec, compare_logit_records(rd, cd, ri, ci, inputset, rank=rank, topk=topk,
                                          chunk_elements=chunk_elements)
    return rec, None


def _stream_metrics(rd, cd, ri, ci, atol, rtol, chunk_elements) -> MetricValues:
    rs, cs = ri.stats, ci.stats
    peak = None
    if ri.storage == "full" and rs is not None and cs is not None and rs.numel == ri.numel \
            and rs.nan_count == rs.inf_count == cs.nan_count == cs.inf_count == 0 and math.isfinite(rs.abs_max):
        peak = rs.abs_max  # max|a| from the index: saves a pass
    acc = TensorMetricAccumulator(tuple(ri.shape), atol=atol, rtol=rtol, peak=peak)
    if ri.numel:
        blocks = zip(rd.iter_blocks(ri, chunk_elements, reuse=True), cd.iter_blocks(ci, chunk_elements, reuse=True))
        # several blocks: read the next pair while this one is measured (one block has nothing to overlap with)
        ahead = read_ahead(blocks) if ri.numel > chunk_elements else None
        try:
            for a, b in ahead or blocks:
                acc.update(a, b)
        finally:
            if ahead is not None:
                ahead.close()  # now, on an error too: waits for the read in flight before the caller closes the files
    return acc.result()


def _topk_index_overlap(ia: np.ndarray, ib: np.ndarray) -> float | None:
    if ia.shape != ib.shape or ia.size == 0:
        return None
    k = ia.shape[-1]
    ra, rb = ia.reshape(-1, k), ib.reshape(-1, k)
    shared = [np.intersect1d(x, y).size for x, y in zip(ra, rb)]
    return float(np.mean(shared)) / k


def _add_to_site(site_map: dict, decisions: dict, ri: RecordInfo, rec: RecordResult, decision: Decision,
                 keep: set | None) -> None:
    key = (ri.key.site, ri.key.call)
    site = site_map.get(key)
    if site is None:
        site = site_map[key] = SiteResult(len(site_map), ri.key.site, ri.key.call, ri.module_type, rec.kind,
                                          rec.dtype_ref, rec.dtype_cand, rec.tolerance)
    rec.over_tolerance, rec.decided_by = decision.over, decision.metric
    decisions.setdefault(key, []).append(decision)
    # worst values are taken before the metric filter: the verdict needs them whatever is displayed
    for name, pick in (("rel_l2", max), ("stats_rel_l2", max), ("cosine", min), ("nan_mismatch", max),
                       ("inf_mismatch", max)):
        v = rec.metrics.get(name)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            old = site.worst.get(name)
            site.worst[name] = v if old is None else pick(old, v)
    if keep is not None:
        rec.metrics = {m: v for m, v in rec.metrics.items() if m in keep}
    if rec.kind != site.kind:
        site.kind = "mixed"
    site.records.append(rec)


def _finish_site(site: SiteResult, report: Report) -> None:
    names = []
    for r in site.records:
        names.extend(m for m in r.metrics if m not in names)
        if r.status == "error":
            site.errors += 1
            report.errors.append({"key": r.key, "rank": r.rank, "site": site.name, "error": r.error})
    site.aggregates = {m: aggregate(site.values(m)) for m in names}
