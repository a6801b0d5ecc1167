"""The watcher's work on one pair: what is left to do in a run, and one analysis into its scratch folder.

``plan_run`` reads what is on disk; ``analyze_pair`` runs in a worker process: ``compute_pair`` (the comparison,
which writes nothing, so it may run on a Dask worker instead: analyze/distributed.py), then ``publish_pair``, which
writes the reports into the lease's scratch folder (analyze/watch_leases.py) and moves them into ROOT/reports/<run>/
from there: the CSV and HTML by rename, the JSON last by a hard link that never replaces a report. Before it moves
anything it checks the scratch folder's owner mark: a takeover deletes the folder (a writer may make it again, but
without the mark), and after the check only renames and links out of the folder follow, which fail once it is gone.
So a watcher that lost its lease while it worked publishes nothing.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass

from protocol import (
    ParityError, SharedFolder, create_exclusive_json, link_no_replace, open_dump, parse_dump_name, resolve_inside,
    write_new_json,
)
from protocol.claims import OWNER_MARK
from protocol.jobs import read_job

from .compare import compare
from .report import Report
from .render.html import write_html
from .render.tables import write_csv
from .watch_leases import WATCH_DIR

ERROR_FORMAT = "tensorparity.watch-error"
ERROR_FORMAT_VERSION = "1.0"


@dataclass(frozen=True)
class PairTask:
    """One analysis: a candidate dump against its run's reference dump (paths absolute).

    ``scratch`` is the folder of the lease held for it; None makes ``analyze_pair`` use a private one.
    """

    run_id: str
    reference: str
    candidate: str
    ref_path: str
    cand_path: str
    report_base: str
    inputs_path: str | None
    thresholds: str | None
    scratch: str | None = None
    replay_model: str | None = None  # the reference's PyTorch model folder inside ROOT: replay on it


@dataclass
class PairOutcome:
    """What one pair's analysis found, before anything is written (plain data: it may come from a Dask worker).

    Either ``report``, or ``error``: a dump that cannot be opened (``label``/``dump`` name it, ``reference`` is
    None) or a pair that cannot be compared (the candidate's, ``reference`` set).
    """

    report: Report | None = None
    error: ParityError | None = None
    label: str | None = None
    dump: str | None = None
    reference: str | None = None


class LeaseLost(Exception):
    """The scratch folder lost its owner mark: a takeover deleted it while the analysis ran."""


def plan_run(folder: SharedFolder, run_id: str, default_thresholds: str | None = None, *,
             replay: bool = True) -> list[PairTask]:
    """The pairs of a run that still need a report, from what is on disk; with ``replay``, each task names the
    reference's model folder when the job's model is a PyTorch model inside ROOT.

    Raises:
        JobError: the run has no readable job (its reference is unknown).
    """
    job = read_job(folder.job_path(run_id))
    dump_dir = os.path.join(folder.sub("dumps"), run_id)
    try:
        names = os.listdir(dump_dir)
    except FileNotFoundError:
        return []
    dumps: dict[tuple[str, int | None], str] = {}
    for name in names:
        parsed = parse_dump_name(name)
        if parsed is not None and os.path.isfile(os.path.join(dump_dir, name)):
            dumps[parsed] = os.path.join(dump_dir, name)
    thresholds = default_thresholds
    if job.thresholds:
        thresholds = job.check_files(folder)["thresholds"]
    inputs = folder.input_path(job.inputs)
    tasks = []
    for (label, rank), cand_path in sorted(dumps.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        ref_path = dumps.get((job.reference, rank))
        if label == job.reference or ref_path is None:
            continue
        suffix = f".rank{rank}" if rank is not None else ""
        if any(os.path.exists(folder.error_report_path(run_id, lab + suffix)) for lab in (job.reference, label)):
            continue
        base = folder.pair_report_base(run_id, job.reference + suffix, label + suffix)
        if os.path.exists(base + ".json"):
            continue
        tasks.append(PairTask(run_id, job.reference + suffix, label + suffix, ref_path, cand_path, base,
                              inputs if os.path.isfile(inputs) else None, thresholds,
                              replay_model=_replay_model(folder, job) if replay else None))
    return tasks


def _replay_model(folder: SharedFolder, job) -> str | None:
    """The reference label's model folder when it is a PyTorch model inside ROOT: the watcher replays the
    candidate's modules on it (analyze/local_error.py). None otherwise (a hub id, an ONNX reference)."""
    target = job.target(job.reference)
    model = target.get("model", job.model)
    if target.get("backend", job.backend) != "torch" or "path" not in model:
        return None
    try:
        path = resolve_inside(folder.root, model["path"], "model path")
    except ParityError:
        return None
    return path if os.path.isdir(path) else None


def write_error_report(folder: SharedFolder, run_id: str, label: str, dump_path: str, exc: ParityError,
                       reference: str | None = None, scratch: str | None = None) -> str:
    """Write ``<label>.error.json`` once (an existing one is kept); from ``scratch`` when given. Returns its path.

    Raises:
        LeaseLost: ``scratch`` was deleted by a takeover (nothing was written).
    """
    path = folder.error_report_path(run_id, label)
    doc = {"format": ERROR_FORMAT, "format_version": ERROR_FORMAT_VERSION, "run_id": run_id, "label": label,
           "dump": os.path.relpath(dump_path, folder.root), "reference": reference,
           "error_type": type(exc).__name__, "error": exc.message,
           "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if scratch is None:
        create_exclusive_json(path, doc)
        return path
    staged = os.path.join(scratch, os.path.basename(path))
    try:
        write_new_json(staged, doc)
        _check_mark(scratch)
        link_no_replace(staged, path)  # False: another analysis wrote it first, and it is kept
        os.unlink(staged)
    except FileNotFoundError:
        raise LeaseLost(scratch) from None
    return path


def analyze_pair(root: str, task: PairTask) -> dict:
    """Compare one pair and write its reports (CSV, HTML, then the JSON): ``publish_pair`` of ``compute_pair``.
    Runs in a worker process of the watcher's pool. Returns what ``publish_pair`` returns."""
    return publish_pair(root, task, compute_pair(task))


def compute_pair(task: PairTask) -> PairOutcome:
    """Compare one pair; writes nothing. A dump that cannot be opened, or a pair that cannot be compared
    (different input sets, nothing in common), is an outcome with its ``error``, not an exception."""
    for label, path in ((task.reference, task.ref_path), (task.candidate, task.cand_path)):
        try:
            open_dump(path).close()
        except ParityError as exc:
            return PairOutcome(error=exc, label=label, dump=path)
    kwargs = {"inputs": task.inputs_path}
    if task.thresholds:
        kwargs["thresholds"] = task.thresholds
    replayer, warning = _open_replayer(task)
    try:
        report = compare(task.ref_path, task.cand_path, replay=replayer, **kwargs)
    except ParityError as exc:
        return PairOutcome(error=exc, label=task.candidate, dump=task.cand_path, reference=task.reference)
    finally:
        if replayer is not None:
            replayer.close()
    if warning:
        report.warnings.append(warning)
    return PairOutcome(report=report)


def _open_replayer(task: PairTask):
    """``(replayer, None)`` on the task's replay model in the reference's dtype, or ``(None, warning)``: a replay
    that cannot run here (no torch on this host, a model that does not load) leaves the report without local
    errors, never without a report."""
    if not task.replay_model:
        return None, None
    from protocol.replay import open_replayer
    try:
        with open_dump(task.ref_path) as ref:
            dtype = ref.manifest.dtype if ref.manifest.dtype in ("float32", "float16", "bfloat16") else None
        return open_replayer(task.replay_model, dtype=dtype), None
    except ParityError as exc:
        return None, f"no replay on {task.replay_model}: {exc.message}"


def publish_pair(root: str, task: PairTask, outcome: PairOutcome) -> dict:
    """Write one pair's outcome under its lease: the reports (CSV, HTML, then the JSON), or ``<label>.error.json``
    for a dump that cannot be opened, or ``<candidate>.error.json`` naming the reference for a pair that cannot be
    compared. Runs in the watcher's worker process, or in the watcher itself for an analysis done on a cluster.

    Returns:
        ``{"kind": "report", "verdict", "first", "path"}``, ``{"kind": "error", "label", "message", "path"}``,
        ``{"kind": "lost"}`` when the lease was taken over (nothing published), or ``{"kind": "duplicate", "path"}``
        when a JSON report of the pair appeared meanwhile (it is kept).
    """
    folder = SharedFolder(root)
    scratch = task.scratch or _private_scratch(folder, task)
    try:
        return _publish(folder, task, scratch, outcome)
    except LeaseLost:
        if not os.path.exists(os.path.join(scratch, OWNER_MARK)):  # what this analysis wrote after the takeover
            shutil.rmtree(scratch, ignore_errors=True)                # deleted the folder (it has our name)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(scratch))
        return {"kind": "lost"}
    finally:
        if task.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):  # only when empty
                os.rmdir(os.path.dirname(scratch))


def _private_scratch(folder: SharedFolder, task: PairTask) -> str:
    """A scratch folder for an analysis without a lease (called in-process, e.g. by the benchmarks)."""
    watch = os.path.join(folder.report_dir(task.run_id), WATCH_DIR)
    os.makedirs(watch, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{task.candidate}.private.", dir=watch)
    open(os.path.join(scratch, OWNER_MARK), "x").close()
    return scratch


def _check_mark(scratch: str) -> None:
    if not os.path.exists(os.path.join(scratch, OWNER_MARK)):
        raise LeaseLost(scratch)


def _publish(folder: SharedFolder, task: PairTask, scratch: str, outcome: PairOutcome) -> dict:
    if outcome.error is not None:
        return {"kind": "error", "label": outcome.label, "message": outcome.error.message,
                "path": write_error_report(folder, task.run_id, outcome.label, outcome.dump, outcome.error,
                                           outcome.reference, scratch=scratch)}
    report = outcome.report
    base = os.path.basename(task.report_base)
    try:
        names = [os.path.basename(p) for p in write_csv(report, scratch, stem=base)]
        write_html(report, os.path.join(scratch, base + ".html"))
        write_new_json(os.path.join(scratch, base + ".json"), report.to_dict())
        _check_mark(scratch)
        # from here on only renames and links out of the scratch folder: once a takeover deleted it, they fail
        report_dir = os.path.dirname(task.report_base)
        for name in names + [base + ".html"]:
            os.replace(os.path.join(scratch, name), os.path.join(report_dir, name))
        final = task.report_base + ".json"
        if not link_no_replace(os.path.join(scratch, base + ".json"), final):
            return {"kind": "duplicate", "path": final}
        os.unlink(os.path.join(scratch, base + ".json"))
    except FileNotFoundError:
        if os.path.exists(os.path.join(scratch, OWNER_MARK)):
            raise  # not a takeover: a bug, with its traceback
        raise LeaseLost(scratch) from None
    return {"kind": "report", "verdict": report.verdict, "first": describe_divergence(report.first_divergence),
            "path": final}


def describe_divergence(first) -> str:
    """A short text for a report's first divergence (a site name, or ``none``)."""
    if first is None:
        return "none"
    for attr in ("site", "key", "name"):
        value = getattr(first, attr, None) if not isinstance(first, dict) else first.get(attr)
        if value:
            return str(value)
    return str(first)
