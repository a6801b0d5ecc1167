"""The capture agent: runs on each hardware host, claims the jobs of a shared folder that name its label, captures.

At start it probes the shared folder (protocol.fsprobe) and refuses one that lacks exclusive creation, hard links
or atomic renames. One agent runs one job at a time. For each job it claims (run, label) exclusively
(protocol.claims.try_claim), or takes over a stale claim (protocol.claims.take_over), heartbeats from a thread while
the capture runs, writes the dump in its attempt's own work folder, publishes it as ``ROOT/dumps/<run>/<label>.h5``
(a hard link, which never replaces a file; a takeover has moved the work folder aside, so a former owner's link
fails), and marks its attempt done or failed with the error. It logs one line per job. A stop request (SIGTERM)
abandons the running capture at once: its partial file is removed by the writer and the claim is marked failed with
``abandoned``, which any agent of the label (or this one, restarted) takes over.

Backends are imported lazily by name through the registry (protocol/backends.py: ``torch``, ``onnx``, ``genai``);
a backend that is not installed or not built fails its job with a clear error instead of stopping the agent.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass

from protocol import CaptureError, JobError, ParityError, SharedFolder, check_name, read_input_set, read_json
from protocol.claims import (
    ABANDONED, Claim, ClaimSite, discard_work_dir, new_agent_identity, publish_work, read_current_claim,
    stale_reason, take_over, try_claim, update_claim,
)
from protocol.backends import BACKENDS, OPTIONS, PLACEMENT_OPTIONS, resolve
from protocol.fsprobe import probe_folder
from protocol.jobs import Job, read_job, utc_now, write_job

from .base import CaptureOptions
from .policy import RecordPolicy

log = logging.getLogger(__name__)


class AgentStopped(BaseException):
    """Raised in the main thread by the stop signal while a capture runs (a BaseException, so that no
    ``except Exception`` in a backend swallows it)."""


class _StopCheck:
    """The progress object an agent gives its backend: backends call ``advance()`` after every sample and decode
    step, and once a stop signal has asked to abandon the capture, it raises AgentStopped there.

    The signal handler raises AgentStopped at once, wherever the main thread is. Should that exception be lost
    (raised inside code that swallows every exception, a finaliser for one) while the samples run, the capture still
    ends after the current sample or decode step instead of running to its end."""

    def __init__(self, agent: "Agent"):
        self._agent = agent

    def advance(self, n: int = 1) -> None:
        if self._agent._abandon_signal is not None:
            raise AgentStopped(self._agent._abandon_signal)
        beat = self._agent._beat
        if beat is not None and beat.lost:  # taken over while paused: stop instead of finishing a doomed capture
            raise CaptureError("the claim was taken over by another agent while this capture ran")

    def update(self, description: str) -> None:
        pass


@dataclass
class AgentSettings:
    """How an agent runs. A job's ``targets[label]`` overrides device, dtype, backend, provider,
    attn_implementation, device_map, max_memory and compression; the agent's ``backend`` (when set) overrides the
    job's default backend.

    Attributes:
        root: the shared folder.
        label: the label this agent captures (e.g. ``cpu-fp32``).
        device, dtype, backend, provider, attn_implementation, compression: defaults for the captures.
        device_map, max_memory, offload_folder: how a torch model is spread over this host's devices, memory and
            disk (protocol/backends.py PLACEMENT_OPTIONS); a device map replaces ``device``.
        poll_interval: seconds between scans of ROOT/jobs when idle.
        heartbeat_timeout: a running claim whose heartbeat is older than this is taken over.
        heartbeat_interval: seconds between heartbeats (default: a quarter of the timeout, at most 10 s).
        once: process what can be claimed now, then return.
    """

    root: str
    label: str
    device: str = "cpu"
    dtype: str = "float32"
    backend: str | None = None
    provider: str | None = None
    attn_implementation: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_folder: str | None = None
    compression: str = "none"
    poll_interval: float = 2.0
    heartbeat_timeout: float = 120.0
    heartbeat_interval: float | None = None
    once: bool = False


class _Heartbeat(threading.Thread):
    """Refreshes a claim's heartbeat (in its own attempt's file) until stopped; notices when it was taken over."""

    def __init__(self, site: ClaimSite, claim: Claim, interval: float):
        super().__init__(name=f"heartbeat-{claim.run_id}-{claim.label}", daemon=True)
        self.site, self.claim, self.interval = site, claim, interval
        self.lost = False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            if not update_claim(self.site, self.claim, heartbeat=utc_now()):
                self.lost = True
                return

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()


class Agent:
    """A capture agent on one shared folder (see the module docstring).

    Args:
        settings: how to run.
    """

    def __init__(self, settings: AgentSettings):
        check_name(settings.label, "label")
        if not os.path.isdir(settings.root):
            raise JobError("shared folder not found", settings.root, "create it, or mount it on this host")
        self.folder_report = probe_folder(settings.root)  # before anything is written: refuse an unfit folder
        self.settings = settings
        self.folder = SharedFolder(settings.root).ensure_layout()
        self.identity = new_agent_identity()
        self.processed = self.failed = 0
        self._stop = threading.Event()
        self._busy = False
        self._abandon_signal: int | None = None  # the stop signal that came while a capture ran
        self._beat: _Heartbeat | None = None  # the running capture's heartbeat
        self._refused: dict[str, float] = {}  # job path -> mtime already reported as invalid

    # -- control -------------------------------------------------------------------------------------------------

    def handle_signal(self, signum, frame) -> None:
        """Signal handler (SIGTERM, SIGINT): stop; abandon the running capture, if any."""
        self._stop.set()
        if self._busy:
            self._busy = False
            self._abandon_signal = signum
            raise AgentStopped(signum)

    def stop(self) -> None:
        """Ask the agent to stop after the current job (usable from another thread)."""
        self._stop.set()

    def run(self) -> int:
        """Process jobs until stopped (or, with ``once``, until nothing can be claimed). Returns the jobs done."""
        log.info("agent %s on %s: label %s, shared folder %s (%s)", self.identity["id"], self.identity["host"],
                 self.settings.label, self.folder.root, self.folder_report.filesystem)
        if self.folder_report.warning():
            log.warning("%s", self.folder_report.warning())
        try:
            while not self._stop.is_set():
                worked = self.process_next()
                if self.settings.once and not worked:
                    break
                if not worked:
                    self._stop.wait(self.settings.poll_interval)
        except AgentStopped:
            pass
        return self.processed

    # -- one job -------------------------------------------------------------------------------------------------

    def process_next(self) -> bool:
        """Claim and run the first claimable job. Returns False when there was none."""
        jobs_dir = self.folder.sub("jobs")
        for name in sorted(os.listdir(jobs_dir)):
            if self._stop.is_set():
                return False
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(jobs_dir, name)
            try:
                job = read_job(path)
            except JobError as exc:
                if self._refuse_invalid_job(path, exc):
                    return True
                continue
            claim = self._claim(job)
            if claim is not None:
                self._execute(job, claim)
                return True
        return False

    def _claim(self, job: Job) -> Claim | None:
        label = self.settings.label
        if label not in job.labels:
            return None
        if job.mode == "teacher-forced" and label != job.reference and not os.path.exists(
                self.folder.dump_path(job.run_id, job.reference)):
            return None  # it needs the reference's generated tokens: wait for the reference dump
        site = ClaimSite.capture(self.folder, job.run_id, label)
        try:
            seen = read_current_claim(site)
        except JobError:
            return None  # damaged: status shows it
        if seen is None:
            return try_claim(site, self.identity)
        reason = stale_reason(seen, self.settings.heartbeat_timeout, self.identity)
        if reason is None:
            return None
        try:
            claim = take_over(site, seen, self.identity, reason)
        except JobError as exc:  # the previous attempt's work folder cannot be moved aside: not taken over
            log.error("job %s label %s: cannot take over attempt %d: %s", job.run_id, label, seen.attempt,
                      exc.message)
            return None
        if claim is not None:
            log.warning("job %s label %s: took over attempt %d (%s)", job.run_id, label, seen.attempt, reason)
        return claim

    def _refuse_invalid_job(self, path: str, exc: JobError) -> bool:
        """Record an invalid job once: as a failed claim when it names this label, else as a log line."""
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            return False
        if self._refused.get(path) == mtime:
            return False
        self._refused[path] = mtime
        run_id = os.path.basename(path)[:-len(".json")]
        try:
            data = read_json(path, "job")
            names_me = isinstance(data, dict) and self.settings.label in (data.get("labels") or [])
            claim = try_claim(ClaimSite.capture(self.folder, run_id, self.settings.label), self.identity,
                              failed=f"invalid job: {exc.message}") if names_me else None
        except (JobError, TypeError):
            claim = None
        if claim is None:
            log.error("job %s refused: %s", path, exc.message)
            return False
        self.failed += 1
        log.error("job %s label %s: refused, not executed: %s", run_id, self.settings.label, exc.message)
        return True

    def _execute(self, job: Job, claim: Claim) -> None:
        start = time.perf_counter()
        site = ClaimSite.capture(self.folder, job.run_id, claim.label)
        final = self.folder.dump_path(job.run_id, claim.label)
        rel = os.path.relpath(final, self.folder.root)
        if os.path.exists(final):  # an earlier attempt published it and stopped before marking its claim done
            discard_work_dir(site, claim)
            update_claim(site, claim, status="done", dump=rel, finished=utc_now(), heartbeat=utc_now())
            log.info("job %s label %s: done (dump was already published) %s", job.run_id, claim.label, rel)
            self.processed += 1
            return
        interval = self.settings.heartbeat_interval or min(10.0, self.settings.heartbeat_timeout / 4)
        beat = self._beat = _Heartbeat(site, claim, interval)
        beat.start()
        work = os.path.join(site.work_dir(claim), os.path.basename(final))
        try:
            self._busy = True
            try:
                summary = self._capture(job, claim, work)
            finally:
                self._busy = False
            beat.stop()
            if beat.lost or not publish_work(site, claim, os.path.basename(final), final):
                self._lost(job, site, claim)
                return
            update_claim(site, claim, status="done", dump=rel, finished=utc_now(), heartbeat=utc_now())
            self.processed += 1
            log.info("job %s label %s: done in %.1f s, %d records, %.1f MiB -> %s (attempt %d)", job.run_id,
                     claim.label, time.perf_counter() - start, summary.records, summary.bytes / 2**20, rel,
                     claim.attempt)
        except AgentStopped:
            beat.stop()
            try:  # the writer removes its partial file; this covers a stop that came before it could
                os.unlink(work + ".partial")
            except FileNotFoundError:
                pass
            discard_work_dir(site, claim)
            update_claim(site, claim, status="failed", error=ABANDONED, finished=utc_now())
            log.warning("job %s label %s: abandoned (agent stopped); another agent or a restart resumes it",
                        job.run_id, claim.label)
            raise
        except ParityError as exc:
            self._fail(job, site, claim, beat, exc.message, start)
        except Exception as exc:  # a backend's bug or a model that cannot run: record it, keep serving
            log.debug("job %s label %s failed", job.run_id, claim.label, exc_info=True)
            self._fail(job, site, claim, beat, f"{type(exc).__name__}: {exc}", start)
        finally:
            self._beat = None

    def _fail(self, job: Job, site: ClaimSite, claim: Claim, beat: _Heartbeat, message: str, start: float) -> None:
        beat.stop()
        if not os.path.isdir(site.work_dir(claim)):  # moved aside by a takeover: the failure is its consequence
            self._lost(job, site, claim, message)
            return
        discard_work_dir(site, claim)  # only when empty: a finished capture that could not be published stays
        if not update_claim(site, claim, status="failed", error=message, finished=utc_now()):
            self._lost(job, site, claim, message)
            return
        self.failed += 1
        log.error("job %s label %s: failed after %.1f s: %s", job.run_id, claim.label, time.perf_counter() - start,
                  message)

    def _lost(self, job: Job, site: ClaimSite, claim: Claim, message: str | None = None) -> None:
        """The attempt cannot publish: it was taken over, or its work folder was moved aside."""
        latest = site.latest_attempt()
        if latest > claim.attempt:
            log.error("job %s label %s: attempt %d was taken over by another agent (attempt %d); nothing published%s",
                      job.run_id, claim.label, claim.attempt, latest, f" ({message})" if message else "")
            return
        # moved aside by an agent that stopped before it made the next attempt: give the claim up so that another
        # agent (or this one) takes it over at once
        update_claim(site, claim, status="failed", error=ABANDONED, finished=utc_now())
        log.error("job %s label %s: attempt %d's work folder was moved aside by a takeover that did not finish; "
                  "nothing published, claim given up%s", job.run_id, claim.label, claim.attempt,
                  f" ({message})" if message else "")

    # -- the capture ---------------------------------------------------------------------------------------------

    def _capture(self, job: Job, claim: Claim, output: str):
        """Run the job's capture for the claim's label into ``output`` with the backend the job and agent choose."""
        label = claim.label
        s, target = self.settings, job.target(label)
        files = job.check_files(self.folder, label)
        try:
            policy = RecordPolicy.from_dict(job.policy)
        except (ValueError, KeyError, TypeError) as exc:
            raise JobError(f"job {job.run_id}: invalid policy ({exc})") from None
        mode, reference = job.mode, None
        if mode == "teacher-forced":
            if label == job.reference:
                mode = "generate"  # the reference generates; candidates are fed its tokens
            else:
                reference = self.folder.dump_path(job.run_id, job.reference)
        options = CaptureOptions(label=label, run_id=job.run_id, mode=mode, max_new_tokens=job.max_new_tokens,
                                 reference=reference, policy=policy,
                                 compression=target.get("compression", s.compression),
                                 extra={"claim": {"attempt": claim.attempt, "agent": claim.agent["id"],
                                                  "host": claim.agent["host"]}})
        backend = load_backend(target.get("backend") or s.backend or job.backend,
                               files["model"] or files["model_id"], target=target,
                               defaults={"device": s.device, "dtype": s.dtype, "provider": s.provider,
                                         "attn_implementation": s.attn_implementation, "device_map": s.device_map,
                                         "max_memory": s.max_memory, "offload_folder": s.offload_folder})
        return backend.capture(read_input_set(files["inputs"]), output, options, progress=_StopCheck(self))


def load_backend(name: str, model: str, *, target: dict | None = None, defaults: dict | None = None):
    """Open ``model`` with backend ``name`` of the registry (protocol/backends.py), by its factory.

    Args:
        target: the job's options for this label (``device``, ``dtype``, ``provider``, ``attn_implementation``):
            each is passed, and a backend that cannot honour one refuses it (never dropped).
        defaults: the agent's own defaults (its command line): passed only where the backend honours them, since
            they describe the host, not the job. A device map (the job's or the host's) replaces the host's
            default device, which would otherwise contradict it (a device the job names is kept, and refused by
            the backend beside a device map); without a device map the host's max_memory and offload_folder have
            nothing to apply to and are not passed.

    Raises:
        CaptureError: the backend is unknown, not available on this host (not installed, or not built yet), or
            cannot honour an option of the job.
    """
    spec = BACKENDS.get(name)
    if spec is None:
        raise CaptureError(f"unknown backend {name!r}", hint=f"use one of {', '.join(BACKENDS)}")
    try:
        factory = resolve(spec.factory)
    except (ImportError, AttributeError) as exc:
        raise CaptureError(f"backend {name!r} is not available on this agent ({exc})",
                           hint=f"install tensorparity[{spec.extra}] on this host, or run this label elsewhere") \
            from None
    target, defaults = target or {}, defaults or {}
    options = {k: target[k] if k in target else (defaults.get(k) if k in spec.honours else None) for k in OPTIONS}
    if options.get("device_map") is not None:
        if "device" not in target:
            options["device"] = None
    else:  # a host's memory limits and offload folder are for jobs that spread a model; idle otherwise
        options.update({k: None for k in PLACEMENT_OPTIONS if k not in target})
    return factory(model, **options)


def submit_job(root: str, job: Job, inputs_path: str) -> str:
    """Copy an input set into ROOT/inputs/<sha256>.h5 (once) and write the job atomically under ROOT/jobs/.

    Args:
        root: the shared folder (its sub-folders are created when missing).
        job: the job; its ``inputs`` is replaced by the input set's sha256.
        inputs_path: the input set file (its hash is verified while reading it).

    Returns:
        The job file's path.

    Raises:
        JobError: the job is invalid, its files are missing or outside ROOT, or the run id is taken.
        ParityError: the input set is unreadable.
    """
    folder = SharedFolder(root).ensure_layout()
    job.inputs = read_input_set(inputs_path).sha256
    job.validate()
    target = folder.input_path(job.inputs)
    if not os.path.exists(target):
        tmp = os.path.join(os.path.dirname(target), f".{job.inputs}.{os.getpid()}.tmp")
        shutil.copyfile(inputs_path, tmp)
        try:
            os.link(tmp, target)  # content-addressed: whoever links first wins, the copies are identical
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    for label in job.labels:
        job.check_files(folder, label)
    try:
        RecordPolicy.from_dict(job.policy)
    except (ValueError, KeyError, TypeError) as exc:
        raise JobError(f"invalid policy ({exc})") from None
    return write_job(folder, job)
