"""The watcher daemon: compares each run's candidate dumps with its reference as soon as both are in place.

Design (ARCHITECTURE.md section 3):
- Its state is what is on disk. A pair is done when ``ROOT/reports/<run>/<ref>__vs__<cand>.json`` exists (the CSV
  and HTML are written first, the JSON last and atomically); a dump that cannot be used has
  ``<label>.error.json``. So a restarted watcher re-analyses exactly the pairs that have no JSON report yet.
- Events only mark a run "dirty"; a debounced scan of the dirty runs decides the work. Start-up marks every run
  dirty (the catch-up). A watchdog Observer (inotify) watches dumps/ and jobs/; ``polling`` uses the
  PollingObserver for network filesystems, where inotify sees no remote writes.
- Only final dump names count (``<label>.h5``, ``<label>.rank<r>.h5``); partial and work files never match them.
- Pairs run in a bounded pool of worker processes (forkserver or spawn: the observer runs threads, so no fork).
  A dump is opened read-only and is never deleted or rewritten.
- One log line per report: verdict and first divergent site.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from protocol import JobError, ParityError, SharedFolder, atomic_write_json, open_dump, parse_dump_name
from protocol.jobs import read_job

from .compare import compare
from .html_report import write_html
from .thresholds import as_thresholds

log = logging.getLogger(__name__)

ERROR_FORMAT = "tensorparity.watch-error"
ERROR_FORMAT_VERSION = "1.0"


@dataclass
class WatchSettings:
    """How the watcher runs.

    Attributes:
        root: the shared folder.
        thresholds: a thresholds file for every run (a job's own ``thresholds`` wins for its run).
        workers: analyses running at once (worker processes).
        polling: use the polling observer (network filesystems).
        debounce: seconds to gather events before scanning the runs they touched.
        poll_interval: seconds between the polling observer's scans.
        once: catch up, wait for the analyses, and return (no observer).
    """

    root: str
    thresholds: str | None = None
    workers: int = 2
    polling: bool = False
    debounce: float = 0.25
    poll_interval: float = 1.0
    once: bool = False


@dataclass(frozen=True)
class PairTask:
    """One analysis: a candidate dump against its run's reference dump (paths absolute)."""

    run_id: str
    reference: str
    candidate: str
    ref_path: str
    cand_path: str
    report_base: str
    inputs_path: str | None
    thresholds: str | None


def plan_run(folder: SharedFolder, run_id: str, default_thresholds: str | None = None) -> list[PairTask]:
    """The pairs of a run that still need a report, from what is on disk.

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
                              inputs if os.path.isfile(inputs) else None, thresholds))
    return tasks


def write_error_report(folder: SharedFolder, run_id: str, label: str, dump_path: str, exc: ParityError,
                       reference: str | None = None) -> str:
    """Write ``<label>.error.json`` once (an existing one is kept). Returns its path."""
    path = folder.error_report_path(run_id, label)
    if not os.path.exists(path):
        atomic_write_json(path, {
            "format": ERROR_FORMAT, "format_version": ERROR_FORMAT_VERSION, "run_id": run_id, "label": label,
            "dump": os.path.relpath(dump_path, folder.root), "reference": reference,
            "error_type": type(exc).__name__, "error": exc.message,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return path


def analyze_pair(root: str, task: PairTask) -> dict:
    """Compare one pair and write its reports (CSV, HTML, then the JSON atomically). Runs in a worker process.

    A dump that cannot be opened gets ``<label>.error.json``; a pair that cannot be compared (different input
    sets, nothing in common) gets ``<candidate>.error.json`` naming the reference.

    Returns:
        ``{"kind": "report", "verdict", "first", "path"}`` or ``{"kind": "error", "label", "message", "path"}``.
    """
    folder = SharedFolder(root)
    for label, path in ((task.reference, task.ref_path), (task.candidate, task.cand_path)):
        try:
            open_dump(path).close()
        except ParityError as exc:
            return {"kind": "error", "label": label, "message": exc.message,
                    "path": write_error_report(folder, task.run_id, label, path, exc)}
    kwargs = {"inputs": task.inputs_path}
    if task.thresholds:
        kwargs["thresholds"] = task.thresholds
    try:
        report = compare(task.ref_path, task.cand_path, **kwargs)
    except ParityError as exc:
        return {"kind": "error", "label": task.candidate, "message": exc.message,
                "path": write_error_report(folder, task.run_id, task.candidate, task.cand_path, exc, task.reference)}
    os.makedirs(os.path.dirname(task.report_base), exist_ok=True)
    _write_csv_files(report, task.report_base)
    write_html(report, task.report_base + ".html")
    final = task.report_base + ".json"
    report.write_json(final)  # last, and atomic: its presence means the pair is done
    return {"kind": "report", "verdict": report.verdict, "first": describe_divergence(report.first_divergence),
            "path": final}


def _write_csv_files(report, base: str) -> None:
    """Write the report's CSV tables as ``<base>.csv`` (per site) and ``<base>.<table>.csv`` (records, logits,
    unmatched): Report.write_csv writes fixed names into a folder, so write them into a private folder first."""
    scratch = os.path.join(os.path.dirname(base), f".{os.path.basename(base)}.csv.{os.getpid()}")
    os.makedirs(scratch, exist_ok=True)
    try:
        for path in report.write_csv(scratch):
            table = os.path.basename(path)[:-len(".csv")]
            os.replace(path, f"{base}.csv" if table == "sites" else f"{base}.{table}.csv")
    finally:
        for name in os.listdir(scratch):
            os.unlink(os.path.join(scratch, name))
        os.rmdir(scratch)


def describe_divergence(first) -> str:
    """A short text for a report's first divergence (a site name, or ``none``)."""
    if first is None:
        return "none"
    for attr in ("site", "key", "name"):
        value = getattr(first, attr, None) if not isinstance(first, dict) else first.get(attr)
        if value:
            return str(value)
    return str(first)


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops the pool


class _DirtyRuns(FileSystemEventHandler):
    """Turns file events into run ids to rescan; ignores everything but final dump names and job files."""

    def __init__(self, folder: SharedFolder, sink: "queue.Queue[str]"):
        self.dumps, self.jobs, self.sink = folder.sub("dumps"), folder.sub("jobs"), sink

    def on_any_event(self, event) -> None:
        if event.event_type in ("opened", "closed_no_write", "deleted"):
            return
        for path in (getattr(event, "dest_path", ""), event.src_path):
            path = os.fsdecode(path or "")
            parent, name = os.path.split(path)
            if parent == self.jobs and name.endswith(".json") and not name.startswith("."):
                self.sink.put(name[:-len(".json")])
            elif parent == self.dumps and event.is_directory:
                self.sink.put(name)
            elif os.path.dirname(parent) == self.dumps and not event.is_directory and parse_dump_name(name):
                self.sink.put(os.path.basename(parent))


class Watcher:
    """The watcher daemon on one shared folder (see the module docstring)."""

    def __init__(self, settings: WatchSettings):
        if not os.path.isdir(settings.root):
            raise JobError("shared folder not found", settings.root, "create it, or mount it on this host")
        if settings.thresholds and not os.path.isfile(settings.thresholds):
            raise JobError("thresholds file not found", settings.thresholds)
        self.settings = settings
        self.folder = SharedFolder(settings.root).ensure_layout()
        if settings.thresholds:
            as_thresholds(settings.thresholds)  # a bad file stops the watcher now, not in every analysis
        self.reports = self.errors = 0
        self._stop = threading.Event()
        self._dirty: "queue.Queue[str]" = queue.Queue()
        self._in_flight: dict[str, tuple[cf.Future, PairTask]] = {}
        self._attempts: dict[str, int] = {}
        self._unpairable: dict[str, str] = {}  # run id -> last message logged about it

    def stop(self, *_args) -> None:
        """Ask the watcher to stop (a signal handler, or from another thread)."""
        self._stop.set()
        self._dirty.put("")  # wake the loop

    def run(self) -> int:
        """Catch up, then follow events until stopped. Returns the number of reports written."""
        s = self.settings
        pool = self._new_pool()
        observer = None
        try:
            if not s.once:
                observer = PollingObserver(timeout=s.poll_interval) if s.polling else Observer()
                handler = _DirtyRuns(self.folder, self._dirty)
                observer.schedule(handler, self.folder.sub("dumps"), recursive=True)
                observer.schedule(handler, self.folder.sub("jobs"), recursive=False)
                observer.start()
            runs = sorted(os.listdir(self.folder.sub("dumps")))
            log.info("watching %s (%s, %d workers): catching up on %d run(s)", self.folder.root,
                     "polling" if s.polling else "inotify", s.workers, len(runs))
            self._schedule(pool, runs)
            while not self._stop.is_set():
                if s.once and not self._in_flight:
                    break
                runs = self._gather(timeout=0.2 if self._in_flight else 1.0)
                pool = self._reap(pool)
                if runs:
                    self._schedule(pool, runs)
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=10)
            pool.shutdown(wait=True, cancel_futures=True)
        log.info("watcher stopped: %d report(s), %d error report(s)", self.reports, self.errors)
        return self.reports

    def _gather(self, timeout: float) -> set[str]:
        """Run ids marked dirty, waiting up to ``timeout`` for the first, then ``debounce`` for more."""
        runs: set[str] = set()
        try:
            runs.add(self._dirty.get(timeout=timeout))
        except queue.Empty:
            return runs
        deadline = time.monotonic() + self.settings.debounce
        while (left := deadline - time.monotonic()) > 0 and not self._stop.is_set():
            try:
                runs.add(self._dirty.get(timeout=left))
            except queue.Empty:
                break
        runs.discard("")
        return runs

    def _schedule(self, pool: cf.ProcessPoolExecutor, runs) -> None:
        for run_id in runs:
            try:
                tasks = plan_run(self.folder, run_id, self.settings.thresholds)
                self._unpairable.pop(run_id, None)
            except ParityError as exc:
                if self._unpairable.get(run_id) != exc.message:
                    self._unpairable[run_id] = exc.message
                    log.warning("run %s: cannot pair its dumps yet: %s", run_id, exc.message)
                continue
            for task in tasks:
                if task.report_base not in self._in_flight and self._attempts.get(task.report_base, 0) < 2:
                    self._in_flight[task.report_base] = (pool.submit(analyze_pair, self.folder.root, task), task)

    def _reap(self, pool: cf.ProcessPoolExecutor) -> cf.ProcessPoolExecutor:
        broken = False
        for base, (future, task) in list(self._in_flight.items()):
            if not future.done():
                continue
            del self._in_flight[base]
            try:
                outcome = future.result()
            except cf.process.BrokenProcessPool:
                broken = True
                self._attempts[base] = self._attempts.get(base, 0) + 1
                log.error("run %s: %s vs %s: a worker process died (attempt %d)", task.run_id, task.candidate,
                          task.reference, self._attempts[base])
                self._dirty.put(task.run_id)
                continue
            except cf.CancelledError:
                continue
            except Exception:  # a bug in the analysis: keep serving the other pairs; a restart retries it
                self._attempts[base] = 2
                log.exception("run %s: %s vs %s: analysis failed", task.run_id, task.candidate, task.reference)
                continue
            if outcome["kind"] == "report":
                self.reports += 1
                log.info("run %s: %s vs %s: %s, first divergence: %s -> %s", task.run_id, task.candidate,
                         task.reference, outcome["verdict"], outcome["first"],
                         os.path.relpath(outcome["path"], self.folder.root))
            else:
                self.errors += 1
                log.error("run %s: %s unusable: %s -> %s", task.run_id, outcome["label"], outcome["message"],
                          os.path.relpath(outcome["path"], self.folder.root))
        if broken:
            pool.shutdown(wait=False, cancel_futures=True)
            pool = self._new_pool()
            for base, (_future, task) in list(self._in_flight.items()):  # the broken pool's futures are lost
                self._dirty.put(task.run_id)
                del self._in_flight[base]
        return pool

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        # forkserver/spawn, never fork: the observer's threads would be copied in an unknown state
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        return cf.ProcessPoolExecutor(max_workers=max(1, self.settings.workers),
                                      mp_context=multiprocessing.get_context(method), initializer=_worker_init)

