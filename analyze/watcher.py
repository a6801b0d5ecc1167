"""The watcher daemon: compares each run's candidate dumps with its reference as soon as both are in place.

Design (docs/ARCHITECTURE.md section 3):
- Its state is what is on disk. A pair is done when ``ROOT/reports/<run>/<ref>__vs__<cand>.json`` exists (the CSV
  and HTML are moved into place first, the JSON last); a dump that cannot be used has ``<label>.error.json``. So a
  restarted watcher re-analyses exactly the pairs that have no JSON report yet.
- Several watchers may run on one ROOT: a pair is analysed only under its lease (analyze/watch_leases.py), which
  one watcher holds at a time and which is taken over when its watcher stops heartbeating; a pair another live
  watcher holds is looked at again after a heartbeat interval. Leftovers of killed watchers (scratch folders,
  leases of finished pairs, temporary files) are removed at start.
- At start the shared folder is probed (protocol/fsprobe.py): a folder without exclusive creation, hard links or
  atomic renames is refused.
- Events only mark a run "dirty"; a debounced scan of the dirty runs decides the work. Start-up marks every run
  dirty (the catch-up). A watchdog Observer (inotify) watches dumps/ and jobs/; ``polling`` uses the
  PollingObserver for network filesystems, where inotify sees no remote writes.
- Only final dump names count (``<label>.h5``, ``<label>.rank<r>.h5``); partial and work files never match them.
- Pairs run in a bounded pool of worker processes (forkserver or spawn: the observer runs threads, so no fork); a
  lease is taken when its pair is handed to the pool, never more than twice the workers ahead, so that a second
  watcher gets a share of the work. A dump is opened read-only and is never deleted or rewritten.
- With a Dask scheduler (``scheduler``), each pair's comparison runs on the cluster instead of the local pool
  (analyze/distributed.py), and its outcome comes back here, where it is published as from the local pool: under
  the same lease, the JSON moved into place last. In flight: twice the cluster's worker threads.
- One log line per report: verdict and first divergent site.
- A job with ``zoom`` (pass 1 of a two-pass capture) gets its pass-2 job ``<run>.zoom`` once one of its reports
  shows a divergence (analyze/watch_zoom.py), checked after each report and at each scan of the run (the catch-up
  of a watcher that stopped in between).
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
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

from protocol import JobError, ParityError, SharedFolder, parse_dump_name
from protocol.claims import Claim, holds, new_agent_identity, update_claim
from protocol.fsprobe import probe_folder
from protocol.jobs import utc_now

from .errors import ClusterError
from .thresholds import as_thresholds
from .watch_leases import acquire_lease, lease_site, pair_done, release_lease, sweep_leftovers
from .watch_pairs import (ERROR_FORMAT, ERROR_FORMAT_VERSION, PairTask, analyze_pair, compute_pair,
                          describe_divergence, plan_run, publish_pair)
from .watch_zoom import submit_zoom_job

log = logging.getLogger(__name__)

__all__ = ["ERROR_FORMAT", "ERROR_FORMAT_VERSION", "PairTask", "WatchSettings", "Watcher", "analyze_pair",
           "describe_divergence", "plan_run"]


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
        heartbeat_timeout: a pair's lease whose heartbeat is older than this is taken over (another watcher died).
        heartbeat_interval: seconds between heartbeats (default: a quarter of the timeout, at most 10 s).
        scheduler: a Dask scheduler's address: pairs are compared on its workers, not in local processes
            (``workers`` is then unused; the workers must see ``root`` at the same path).
        connect_timeout: seconds to reach the scheduler.
        replay: replay candidates' modules on the job's reference model when it is a PyTorch folder in ROOT.
    """

    root: str
    thresholds: str | None = None
    workers: int = 2
    polling: bool = False
    debounce: float = 0.25
    poll_interval: float = 1.0
    once: bool = False
    heartbeat_timeout: float = 120.0
    heartbeat_interval: float | None = None
    scheduler: str | None = None
    connect_timeout: float = 10.0
    replay: bool = True


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
        self.folder_report = probe_folder(settings.root)  # before anything is written: refuse an unfit folder
        self.settings = settings
        self.folder = SharedFolder(settings.root).ensure_layout()
        if settings.thresholds:
            as_thresholds(settings.thresholds)  # a bad file stops the watcher now, not in every analysis
        self.identity = new_agent_identity()
        self.reports = self.errors = 0
        self._stop = threading.Event()
        self._dirty: "queue.Queue[str]" = queue.Queue()
        self._pending: dict[str, PairTask] = {}  # report base -> planned pair, not yet handed to the pool
        self._in_flight: dict[str, tuple[cf.Future, PairTask]] = {}
        self._leases: dict[str, Claim] = {}  # report base -> the lease this watcher holds on it
        self._elsewhere: dict[str, float] = {}  # run id -> when to look again at pairs another watcher holds
        self._attempts: dict[str, int] = {}
        self._unpairable: dict[str, str] = {}  # run id -> last message logged about it
        self._beat_interval = settings.heartbeat_interval or min(10.0, settings.heartbeat_timeout / 4)
        self._next_beat = 0.0

    def stop(self, *_args) -> None:
        """Ask the watcher to stop (a signal handler, or from another thread)."""
        self._stop.set()
        # wake the loop from another thread: a signal handler runs in the main thread, which may hold the queue's
        # lock right then (in get), and a put here would wait for it forever
        threading.Thread(target=self._dirty.put, args=("",), daemon=True).start()

    def run(self) -> int:
        """Catch up, then follow events until stopped. Returns the number of reports written."""
        s = self.settings
        removed = sweep_leftovers(self.folder, self.identity, s.heartbeat_timeout)
        if removed:
            log.info("removed %d leftover(s) of stopped watchers from %s", removed, self.folder.sub("reports"))
        if self.folder_report.warning():
            log.warning("%s", self.folder_report.warning())
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
            where = f"{s.workers} workers" if s.scheduler is None else \
                f"Dask scheduler {s.scheduler}, {pool.capacity()} worker thread(s)"
            log.info("watching %s (%s, %s, %s): catching up on %d run(s)", self.folder.root,
                     self.folder_report.filesystem, "polling" if s.polling else "inotify", where, len(runs))
            self._schedule(runs)
            self._fill(pool)
            while not self._stop.is_set():
                if s.once and not self._in_flight and not self._pending:
                    break
                runs = self._gather(timeout=0.2 if self._in_flight else 1.0)
                pool = self._reap(pool)
                self._heartbeat()
                runs |= self._due_elsewhere()
                if runs:
                    self._schedule(runs)
                self._fill(pool)
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=10)
            pool.shutdown(wait=True, cancel_futures=True)
            self._reap_finished()
            self._release_all()
        log.info("watcher stopped: %d report(s), %d error report(s)", self.reports, self.errors)
        return self.reports

    def _gather(self, timeout: float) -> set[str]:
        """Run ids marked dirty, waiting up to ``timeout`` for the first, then ``debounce`` for more. An empty
        string (a finished analysis, a stop) wakes the loop at once."""
        runs: set[str] = set()
        try:
            first = self._dirty.get(timeout=timeout)
        except queue.Empty:
            return runs
        if not first:
            return runs
        runs.add(first)
        deadline = time.monotonic() + self.settings.debounce
        while (left := deadline - time.monotonic()) > 0 and not self._stop.is_set():
            try:
                runs.add(self._dirty.get(timeout=left))
            except queue.Empty:
                break
        runs.discard("")
        return runs

    def _schedule(self, runs) -> None:
        """Plan the dirty runs: pairs without a report become pending."""
        for run_id in sorted(runs):
            try:
                tasks = plan_run(self.folder, run_id, self.settings.thresholds, replay=self.settings.replay)
                self._unpairable.pop(run_id, None)
            except ParityError as exc:
                if self._unpairable.get(run_id) != exc.message:
                    self._unpairable[run_id] = exc.message
                    log.warning("run %s: cannot pair its dumps yet: %s", run_id, exc.message)
                continue
            self._zoom(run_id)
            for task in tasks:
                if task.report_base not in self._in_flight and self._attempts.get(task.report_base, 0) < 2:
                    self._pending.setdefault(task.report_base, task)

    def _zoom(self, run_id: str) -> None:
        """Submit the run's pass-2 job if it is due (a job file created exclusively: once among watchers)."""
        try:
            submit_zoom_job(self.folder, run_id)
        except ParityError as exc:
            log.error("run %s: cannot submit its pass-2 (zoom) job: %s", run_id, exc.message)

    def _fill(self, pool: cf.ProcessPoolExecutor) -> None:
        """Hand pending pairs to the pool, each under its lease, while fewer than twice the workers are in flight."""
        limit = 2 * (max(1, self.settings.workers) if self.settings.scheduler is None else pool.capacity())
        while self._pending and len(self._in_flight) < limit and not self._stop.is_set():
            base, task = next(iter(self._pending.items()))
            del self._pending[base]
            site = lease_site(self.folder, task.run_id, task.candidate)
            lease = self._leases.get(base)
            if lease is not None and not holds(site, lease):
                del self._leases[base]  # taken over while this watcher was not looking
                lease = None
            if lease is None:
                try:
                    lease, holder = acquire_lease(site, self.identity, self.settings.heartbeat_timeout)
                except OSError as exc:  # e.g. the report folder cannot be written: this pair waits for a rescan
                    log.error("run %s: %s vs %s: cannot take its lease: %s", task.run_id, task.candidate,
                              task.reference, exc)
                    continue
                if lease is None:
                    if holder is not None:
                        log.debug("run %s: %s vs %s is with the watcher %s", task.run_id, task.candidate,
                                  task.reference, holder)
                    self._elsewhere.setdefault(task.run_id, time.monotonic() + self._beat_interval)
                    continue
                self._leases[base] = lease
                if lease.taken_over:
                    log.warning("run %s: %s: took over the lease of attempt %d (%s)", task.run_id, task.candidate,
                                lease.attempt - 1, lease.taken_over["reason"])
            if pair_done(self.folder, task.run_id, task.reference, task.candidate):  # done meanwhile, elsewhere
                self._release(base)
                continue
            task = dataclasses.replace(task, scratch=site.work_dir(lease))
            if self.settings.scheduler is None:
                future = pool.submit(analyze_pair, self.folder.root, task)
            else:  # compared on the cluster, published here
                future = pool.submit(self.folder.root, task)
            future.add_done_callback(lambda _f: self._dirty.put(""))  # wake the loop to reap it
            self._in_flight[base] = (future, task)

    def _due_elsewhere(self) -> set[str]:
        """Runs with pairs another watcher held, due to be looked at again (their holder may have died)."""
        now = time.monotonic()
        due = {run_id for run_id, when in self._elsewhere.items() if when <= now}
        for run_id in due:
            del self._elsewhere[run_id]
        return due

    def _heartbeat(self) -> None:
        """Refresh the heartbeat of every lease held, once per interval; forget the ones taken over."""
        now = time.monotonic()
        if now < self._next_beat:
            return
        self._next_beat = now + self._beat_interval
        for base, lease in list(self._leases.items()):
            site = lease_site(self.folder, lease.run_id, lease.label)
            if not update_claim(site, lease, heartbeat=utc_now()):
                del self._leases[base]
                log.warning("run %s: %s: the lease was taken over by another watcher", lease.run_id, lease.label)

    def _release(self, base: str) -> None:
        lease = self._leases.pop(base, None)
        if lease is None:
            return
        site = lease_site(self.folder, lease.run_id, lease.label)
        if holds(site, lease):  # never remove a lease another watcher took over
            release_lease(site, lease)

    def _release_all(self) -> None:
        for base in list(self._leases):
            self._release(base)

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
                self._dirty.put(task.run_id)  # the lease is kept: the retry runs under it
                continue
            except cf.CancelledError:
                continue
            except ClusterError as exc:  # the cluster lost it (its workers kept dying) or cannot see the folder
                self._attempts[base] = self._attempts.get(base, 0) + 1
                log.error("run %s: %s vs %s: %s (attempt %d)", task.run_id, task.candidate, task.reference,
                          exc.message, self._attempts[base])
                if self._attempts[base] >= 2:
                    self._release(base)
                else:
                    self._dirty.put(task.run_id)  # the lease is kept: the retry runs under it
                continue
            except Exception:  # a bug in the analysis: keep serving the other pairs; a restart retries it
                self._attempts[base] = 2
                self._release(base)
                log.exception("run %s: %s vs %s: analysis failed", task.run_id, task.candidate, task.reference)
                continue
            self._log_outcome(task, outcome)
            self._release(base)  # unless taken over: then the lease is the new holder's and nothing is removed
        if broken:
            pool.shutdown(wait=False, cancel_futures=True)
            pool = self._new_pool()
            for base, (_future, task) in list(self._in_flight.items()):  # the broken pool's futures are lost
                self._dirty.put(task.run_id)
                del self._in_flight[base]
        return pool

    def _reap_finished(self) -> None:
        """After the pool stopped: log (and count) the analyses that finished while the watcher was stopping."""
        for base, (future, task) in list(self._in_flight.items()):
            del self._in_flight[base]
            if future.done() and not future.cancelled() and future.exception() is None:
                self._log_outcome(task, future.result())
                self._release(base)

    def _log_outcome(self, task: PairTask, outcome: dict) -> None:
        kind = outcome["kind"]
        if kind == "report":
            self.reports += 1
            log.info("run %s: %s vs %s: %s, first divergence: %s -> %s", task.run_id, task.candidate,
                     task.reference, outcome["verdict"], outcome["first"],
                     os.path.relpath(outcome["path"], self.folder.root))
            if outcome["verdict"] == "diverged":
                self._zoom(task.run_id)
        elif kind == "error":
            self.errors += 1
            log.error("run %s: %s unusable: %s -> %s", task.run_id, outcome["label"], outcome["message"],
                      os.path.relpath(outcome["path"], self.folder.root))
        elif kind == "lost":
            log.warning("run %s: %s vs %s: the lease was taken over by another watcher; nothing published",
                        task.run_id, task.candidate, task.reference)
        else:
            log.warning("run %s: %s vs %s: a report appeared meanwhile and is kept: %s", task.run_id, task.candidate,
                        task.reference, os.path.relpath(outcome["path"], self.folder.root))

    def _new_pool(self):
        if self.settings.scheduler is not None:  # one client for the watcher's life: a cluster never "breaks"
            from .distributed import ClusterPairPool, ClusterSettings
            pool = ClusterPairPool(ClusterSettings(self.settings.scheduler,
                                                   connect_timeout=self.settings.connect_timeout),
                                   compute_pair, publish_pair)
            for warning in pool.warnings:
                log.warning("%s", warning)
            if not pool.client.nthreads():
                log.warning("no worker has joined the Dask scheduler %s yet: the pairs wait for one",
                            self.settings.scheduler)
            return pool
        # forkserver/spawn, never fork: the observer's threads would be copied in an unknown state
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        return cf.ProcessPoolExecutor(max_workers=max(1, self.settings.workers),
                                      mp_context=multiprocessing.get_context(method), initializer=_worker_init)
