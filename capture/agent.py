"""The capture agent: runs on each hardware host, claims the jobs of a shared folder that name its label, captures.

One agent runs one job at a time. For each job it claims (run, label) exclusively (protocol.jobs.try_claim), or
takes over a stale claim (protocol.jobs.take_over), heartbeats from a thread while the capture runs, writes the dump
under a name private to its attempt, publishes it as ``ROOT/dumps/<run>/<label>.h5`` (a hard link, which never
replaces a file) only while it still owns the claim, and marks the claim done or failed with the error. It logs one
line per job. A stop request (SIGTERM) abandons the running capture at once: its partial file is removed by the
writer and the claim is marked failed with ``abandoned``, which any agent of the label (or this one, restarted)
takes over.

Backends are imported lazily by name (``torch``, ``onnx``, ``genai``); a backend that is not installed or not built
fails its job with a clear error instead of stopping the agent.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass

from protocol import (
    CaptureError, JobError, ParityError, SharedFolder, check_name, read_input_set,
    read_json,
)
from protocol.jobs import (
    ABANDONED, Claim, Job, new_agent_identity, read_claim, read_job, stale_reason, take_over, try_claim,
    update_claim, utc_now, work_dump_name, write_job,
)

from .base import CaptureOptions
from .policy import RecordPolicy

log = logging.getLogger(__name__)

#: backend name -> (module, class); each class has ``from_pretrained(model, device=, dtype=, **options)``.
BACKEND_CLASSES = {
    "torch": ("capture.torch_backend", "TorchBackend"),
    "onnx": ("capture.onnx_backend", "OnnxBackend"),
    "genai": ("capture.genai_backend", "GenaiBackend"),
}


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

    def update(self, description: str) -> None:
        pass


@dataclass
class AgentSettings:
    """How an agent runs. A job's ``targets[label]`` overrides device, dtype, backend, provider,
    attn_implementation and compression; the agent's ``backend`` (when set) overrides the job's default backend.

    Attributes:
        root: the shared folder.
        label: the label this agent captures (e.g. ``cpu-fp32``).
        device, dtype, backend, provider, attn_implementation, compression: defaults for the captures.
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
    compression: str = "none"
    poll_interval: float = 2.0
    heartbeat_timeout: float = 120.0
    heartbeat_interval: float | None = None
    once: bool = False


class _Heartbeat(threading.Thread):
    """Refreshes a claim's heartbeat until stopped; notices when the claim was taken over."""

    def __init__(self, folder: SharedFolder, claim: Claim, interval: float):
        super().__init__(name=f"heartbeat-{claim.run_id}-{claim.label}", daemon=True)
        self.folder, self.claim, self.interval = folder, claim, interval
        self.lost = False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            if not update_claim(self.folder, self.claim, heartbeat=utc_now()):
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
        self.settings = settings
        self.folder = SharedFolder(settings.root).ensure_layout()
        self.identity = new_agent_identity()
        self.processed = self.failed = 0
        self._stop = threading.Event()
        self._busy = False
        self._abandon_signal: int | None = None  # the stop signal that came while a capture ran
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
        log.info("agent %s on %s: label %s, shared folder %s", self.identity["id"], self.identity["host"],
                 self.settings.label, self.folder.root)
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
        path = self.folder.claim_path(job.run_id, label)
        if not os.path.exists(path):
            return try_claim(self.folder, job.run_id, label, self.identity)
        try:
            seen = read_claim(path)
        except JobError:
            return None  # being replaced right now, or damaged: status shows it
        reason = stale_reason(seen, self.settings.heartbeat_timeout, self.identity)
        if reason is None:
            return None
        claim = take_over(self.folder, seen, self.identity, reason)
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
            claim = try_claim(self.folder, run_id, self.settings.label, self.identity) if names_me else None
        except (JobError, TypeError):
            claim = None
        if claim is None:
            log.error("job %s refused: %s", path, exc.message)
            return False
        update_claim(self.folder, claim, status="failed", error=f"invalid job: {exc.message}", finished=utc_now())
        self.failed += 1
        log.error("job %s label %s: refused, not executed: %s", run_id, self.settings.label, exc.message)
        return True

    def _execute(self, job: Job, claim: Claim) -> None:
        start = time.perf_counter()
        final = self.folder.dump_path(job.run_id, claim.label)
        rel = os.path.relpath(final, self.folder.root)
        if os.path.exists(final):  # an earlier attempt published it and stopped before marking the claim done
            update_claim(self.folder, claim, status="done", dump=rel, finished=utc_now(), heartbeat=utc_now())
            log.info("job %s label %s: done (dump was already published) %s", job.run_id, claim.label, rel)
            self.processed += 1
            return
        interval = self.settings.heartbeat_interval or min(10.0, self.settings.heartbeat_timeout / 4)
        beat = _Heartbeat(self.folder, claim, interval)
        beat.start()
        work = os.path.join(os.path.dirname(final), work_dump_name(claim.label, claim.attempt))
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            self._busy = True
            try:
                summary = self._capture(job, claim.label, work)
            finally:
                self._busy = False
            beat.stop()
            if beat.lost or not self._publish(work, final):
                log.error("job %s label %s: claim was taken over by another agent; dump kept as %s",
                          job.run_id, claim.label, work)
                return
            update_claim(self.folder, claim, status="done", dump=rel, finished=utc_now(), heartbeat=utc_now())
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
            update_claim(self.folder, claim, status="failed", error=ABANDONED, finished=utc_now())
            log.warning("job %s label %s: abandoned (agent stopped); another agent or a restart resumes it",
                        job.run_id, claim.label)
            raise
        except ParityError as exc:
            self._fail(job, claim, beat, exc.message, start)
        except Exception as exc:  # a backend's bug or a model that cannot run: record it, keep serving
            log.debug("job %s label %s failed", job.run_id, claim.label, exc_info=True)
            self._fail(job, claim, beat, f"{type(exc).__name__}: {exc}", start)

    def _fail(self, job: Job, claim: Claim, beat: _Heartbeat, message: str, start: float) -> None:
        beat.stop()
        update_claim(self.folder, claim, status="failed", error=message, finished=utc_now())
        self.failed += 1
        log.error("job %s label %s: failed after %.1f s: %s", job.run_id, claim.label, time.perf_counter() - start,
                  message)

    def _publish(self, work: str, final: str) -> bool:
        """Link the finished work file to the dump's final name (never replacing one) and drop the work name."""
        try:
            os.link(work, final)
        except FileExistsError:
            raise CaptureError("a dump of this label exists already; this capture is kept aside", work) from None
        os.unlink(work)
        return True

    # -- the capture ---------------------------------------------------------------------------------------------

    def _capture(self, job: Job, label: str, output: str):
        """Run the job's capture for ``label`` into ``output`` with the backend the job and agent choose."""
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
                                 compression=target.get("compression", s.compression))
        backend = load_backend(target.get("backend") or s.backend or job.backend,
                               files["model"] or files["model_id"], device=target.get("device", s.device),
                               dtype=target.get("dtype", s.dtype),
                               attn_implementation=target.get("attn_implementation", s.attn_implementation),
                               provider=target.get("provider", s.provider))
        return backend.capture(read_input_set(files["inputs"]), output, options, progress=_StopCheck(self))


def load_backend(name: str, model: str, *, device: str, dtype: str, attn_implementation: str | None = None,
                 provider: str | None = None):
    """Import the backend ``name`` and open ``model`` with it.

    The torch backend takes device and dtype; the ONNX backends take an execution provider (``provider``, or
    ``cuda``/``cpu`` from the device) and run the dtype their graph was built with. Each backend receives the
    options its factory accepts.

    Raises:
        CaptureError: the backend is unknown or not available on this host (not installed, or not built yet).
    """
    if name not in BACKEND_CLASSES:
        raise CaptureError(f"unknown backend {name!r}", hint=f"use one of {', '.join(BACKEND_CLASSES)}")
    module_name, class_name = BACKEND_CLASSES[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise CaptureError(f"backend {name!r} is not available on this agent ({exc})",
                           hint=f"install tensorparity[{name}] on this host, or run this label elsewhere") from None
    factory = getattr(cls, "from_pretrained", None) or cls
    ep = provider or ("cuda" if device.startswith("cuda") else "cpu")
    options = {"device": device, "dtype": dtype, "attn_implementation": attn_implementation,
               "trust_remote_code": False, "ep": ep, "provider": ep}
    params = inspect.signature(factory).parameters
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return factory(model, **{k: v for k, v in options.items() if v is not None and (any_keyword or k in params)})

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
