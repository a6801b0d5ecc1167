"""Job and claim documents of the shared folder (SPEC.md section 13), and the claim protocol.

Both are plain JSON that a person may write or read by hand; both are validated strictly on every read, since a job
decides what an agent executes. A document of another MAJOR version is refused. Within our MAJOR, an unknown key is
refused when the document's MINOR is not newer than ours (it is a typo) and ignored when it is newer.

Job, ``ROOT/jobs/<run_id>.json`` (written once by ``parity submit`` or by hand):

=================  ==========================================================================================
field              meaning
=================  ==========================================================================================
format             ``"tensorparity.job"``
format_version     ``"1.0"`` (MAJOR.MINOR)
run_id             the run; 1-128 of ``[A-Za-z0-9_.-]``, no ``..``; equals the file name without ``.json``
created            ISO 8601 UTC time of submission
model              ``{"path": P}`` with P relative to ROOT and inside it, or ``{"id": "org/name"}`` (hub id)
backend            ``"torch"`` | ``"onnx"`` | ``"genai"``
inputs             sha256 of the input set; the file is ``ROOT/inputs/<sha256>.h5``
mode               ``"forward"`` | ``"generate"`` | ``"teacher-forced"``
max_new_tokens     decode steps (>= 1 unless mode is forward)
policy             the record policy, ``{"rules": [{"pattern", "action", "params"}], "default", "byte_budget"}``
labels             the labels to capture (each a name like run_id); one claim and one dump per label
reference          one of ``labels``: every other label is compared with it
targets            ``{label: {key: value}}``: per-label overrides of the agent's defaults; keys are ``device``,
                   ``dtype``, ``backend``, ``model`` (same form as above), ``attn_implementation``,
                   ``compression``, ``provider``
thresholds         path of a thresholds file relative to ROOT, or null
=================  ==========================================================================================

Claim, ``ROOT/claims/<run_id>/<label>.json`` (created exclusively by the agent that captures; rewritten only by it):

=================  ==========================================================================================
format             ``"tensorparity.claim"``
format_version     ``"1.0"``
run_id, label      what is claimed
status             ``"running"`` | ``"done"`` | ``"failed"``
agent              ``{"host", "pid", "id"}`` of the owner (id: random per agent process)
started            ISO 8601 UTC time the claim was made
heartbeat          ISO 8601 UTC time of the owner's last sign of life (refreshed while running)
finished           ISO 8601 UTC time of done/failed, else null
error              the error message when failed (``"abandoned"`` when the agent was stopped), else null
attempt            1 for the first claim; a takeover makes attempt n+1 and keeps attempt n as
                   ``<label>.attempt<n>.json`` beside it
dump               the dump's path relative to ROOT once done, else null
taken_over         null, or ``{"previous_claim", "previous_agent", "reason", "stale_files"}`` after a takeover;
                   stale_files lists what the previous attempt left, moved aside as ``*.stale-<n>`` (kept, never read)
=================  ==========================================================================================
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import socket
import threading
import uuid
from dataclasses import asdict, dataclass, field, fields

from .errors import JobError
from .folder import SharedFolder, atomic_write_json, check_name, create_exclusive_json, read_json, resolve_inside
from .manifest import CAPTURE_MODES
from .version import parse_version

JOB_FORMAT = "tensorparity.job"
CLAIM_FORMAT = "tensorparity.claim"
JOBS_FORMAT_VERSION = "1.0"
_MAJOR, _MINOR = parse_version(JOBS_FORMAT_VERSION)
BACKENDS = ("torch", "onnx", "genai")
CLAIM_STATES = ("running", "done", "failed")
TARGET_KEYS = ("device", "dtype", "backend", "model", "attn_implementation", "compression", "provider")
ABANDONED = "abandoned"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def utc_now() -> str:
    """The current time as ISO 8601 UTC with microseconds (how jobs and claims store times)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def seconds_since(stamp: str) -> float:
    """Seconds from an ISO 8601 time stored in a claim to now (hosts are assumed to keep their clocks in sync)."""
    then = _dt.datetime.fromisoformat(stamp)
    if then.tzinfo is None:
        then = then.replace(tzinfo=_dt.timezone.utc)
    return (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()


def _check_version(data: dict, expected_format: str, what: str, path: str | None) -> bool:
    """Check identity and version; returns True when the document is of a newer MINOR (unknown keys allowed)."""
    if data.get("format") != expected_format:
        raise JobError(f"not a {what} (format is {data.get('format')!r}, expected {expected_format!r})", path)
    try:
        major, minor = parse_version(data.get("format_version"))
    except ValueError:
        raise JobError(f"malformed format_version {data.get('format_version')!r} in this {what}", path,
                       f"write format_version {JOBS_FORMAT_VERSION!r}") from None
    if major != _MAJOR:
        raise JobError(f"{what} format version {data['format_version']} is not supported (this reader: "
                       f"{JOBS_FORMAT_VERSION})", path,
                       "upgrade tensorparity on this host" if major > _MAJOR else "submit the job again")
    return minor > _MINOR


def _check_keys(data: dict, known: set, newer: bool, what: str, path: str | None) -> None:
    unknown = sorted(set(data) - known)
    if unknown and not newer:
        raise JobError(f"unknown field(s) {unknown} in this {what}", path,
                       f"known fields are {sorted(known)}")


def check_relative_path(value, what: str, path: str | None = None) -> str:
    """A path inside ROOT written relative to it: refuse absolute paths and any ``..`` component (lexically).

    ``resolve_inside`` checks it again against the real folder (symbolic links) before use.
    """
    if not isinstance(value, str) or not value:
        raise JobError(f"{what} is missing or not a string", path)
    parts = re.split(r"[\\/]", value)
    if os.path.isabs(value) or value.startswith(("~", "\\")) or re.match(r"^[A-Za-z]:", value) or ".." in parts:
        raise JobError(f"{what} {value!r} escapes the shared folder", path,
                       "paths in a job are relative to ROOT and stay inside it")
    return value


def check_model(value, what: str, path: str | None = None) -> dict:
    """A model reference: exactly one of ``{"path": relative path}`` or ``{"id": hub id}``."""
    if not isinstance(value, dict) or len(value) != 1 or not set(value) <= {"path", "id"}:
        raise JobError(f"{what} must be {{\"path\": ...}} or {{\"id\": ...}}, not {value!r}", path)
    if "path" in value:
        check_relative_path(value["path"], f"{what} path", path)
    elif not isinstance(value["id"], str) or not _HUB_ID_RE.match(value["id"]) or ".." in value["id"]:
        raise JobError(f"{what} id {value['id']!r} is not a hub id (org/name)", path)
    return dict(value)


def _expect(cond: bool, what: str, path: str | None) -> None:
    if not cond:
        raise JobError(what, path)


@dataclass
class Job:
    """A capture job (see the table at the top of this module). Build with ``from_dict``, which validates."""

    run_id: str
    model: dict
    backend: str
    inputs: str
    labels: list
    reference: str
    mode: str = "forward"
    max_new_tokens: int = 0
    policy: dict = field(default_factory=lambda: {"rules": [], "default": "full", "byte_budget": None})
    targets: dict = field(default_factory=dict)
    thresholds: str | None = None
    created: str = field(default_factory=utc_now)
    format: str = JOB_FORMAT
    format_version: str = JOBS_FORMAT_VERSION

    def __post_init__(self):
        self.validate()

    def validate(self, path: str | None = None) -> "Job":
        """Check every field; the job's path (if known) is named in the error.

        Raises:
            JobError: what is wrong with which field.
        """
        check_name(self.run_id, "run id")
        _expect(isinstance(self.created, str), "created is not a string", path)
        check_model(self.model, "model", path)
        _expect(self.backend in BACKENDS, f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}",
                path)
        _expect(isinstance(self.inputs, str) and re.fullmatch(r"[0-9a-f]{64}", self.inputs) is not None,
                f"inputs {self.inputs!r} is not an input set's sha256 (64 hex digits)", path)
        _expect(self.mode in CAPTURE_MODES, f"unknown mode {self.mode!r}; use one of {', '.join(CAPTURE_MODES)}",
                path)
        _expect(isinstance(self.max_new_tokens, int) and not isinstance(self.max_new_tokens, bool)
                and self.max_new_tokens >= 0, f"max_new_tokens {self.max_new_tokens!r} is not an integer >= 0", path)
        _expect(self.mode == "forward" or self.max_new_tokens >= 1, f"mode {self.mode} needs max_new_tokens >= 1",
                path)
        self._validate_policy(path)
        _expect(isinstance(self.labels, list) and len(self.labels) > 0, "labels must be a non-empty list", path)
        for label in self.labels:
            check_name(label, "label")
        _expect(len(set(self.labels)) == len(self.labels), f"labels {self.labels} repeat a label", path)
        _expect(self.reference in self.labels, f"reference {self.reference!r} is not one of labels {self.labels}",
                path)
        _expect(isinstance(self.targets, dict), "targets must be an object {label: {...}}", path)
        for label, target in self.targets.items():
            _expect(label in self.labels, f"targets names label {label!r}, which is not in labels", path)
            _expect(isinstance(target, dict), f"targets[{label!r}] must be an object", path)
            bad = sorted(set(target) - set(TARGET_KEYS))
            _expect(not bad, f"targets[{label!r}] has unknown key(s) {bad}; known: {', '.join(TARGET_KEYS)}", path)
            for key, value in target.items():
                if key == "model":
                    check_model(value, f"targets[{label!r}].model", path)
                elif key == "backend":
                    _expect(value in BACKENDS, f"targets[{label!r}].backend {value!r} is not one of "
                                               f"{', '.join(BACKENDS)}", path)
                else:
                    _expect(isinstance(value, str) and value != "", f"targets[{label!r}].{key} must be a string",
                            path)
        if self.thresholds is not None:
            check_relative_path(self.thresholds, "thresholds", path)
        return self

    def _validate_policy(self, path: str | None) -> None:
        # Structure only: the actions' meaning belongs to capture.policy, which checks them again when it runs.
        p = self.policy
        _expect(isinstance(p, dict) and set(p) <= {"rules", "default", "byte_budget"},
                f"policy must be {{rules, default, byte_budget}}, not {p!r}", path)
        _expect(isinstance(p.get("rules", []), list), "policy.rules must be a list", path)
        for rule in p.get("rules", []):
            _expect(isinstance(rule, dict) and isinstance(rule.get("pattern"), str)
                    and isinstance(rule.get("action"), str) and isinstance(rule.get("params", {}), dict)
                    and set(rule) <= {"pattern", "action", "params"}, f"invalid policy rule {rule!r}", path)
        _expect(isinstance(p.get("default", "full"), str), "policy.default must be a string", path)
        budget = p.get("byte_budget")
        _expect(budget is None or (isinstance(budget, int) and not isinstance(budget, bool) and budget > 0),
                f"policy.byte_budget {budget!r} must be a positive integer or null", path)

    def target(self, label: str) -> dict:
        """The per-label overrides for ``label`` (empty when none)."""
        return dict(self.targets.get(label, {}))

    def to_dict(self) -> dict:
        """The JSON document."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data, path: str | None = None) -> "Job":
        """Validate a parsed job document.

        Raises:
            JobError: not a job, another MAJOR version, an unknown key, or an invalid field.
        """
        _expect(isinstance(data, dict), "a job must be a JSON object", path)
        newer = _check_version(data, JOB_FORMAT, "job", path)
        known = {f.name for f in fields(cls)}
        _check_keys(data, known, newer, "job", path)
        missing = sorted({"run_id", "model", "backend", "inputs", "labels", "reference"} - set(data))
        _expect(not missing, f"job lacks field(s) {missing}", path)
        job = cls.__new__(cls)
        for f in fields(cls):
            if f.name in data:
                setattr(job, f.name, data[f.name])
            else:
                setattr(job, f.name, f.default_factory() if callable(f.default_factory) else f.default)
        job.format_version = str(job.format_version)
        return job.validate(path)

    def check_files(self, folder: SharedFolder, label: str | None = None) -> dict:
        """Resolve and check the files this job (for ``label``) needs inside ROOT.

        Returns:
            ``{"inputs": path, "model": path or None, "model_id": id or None, "thresholds": path or None}``.

        Raises:
            JobError: a path escapes ROOT (also through symbolic links), or a file is missing.
        """
        model = self.target(label).get("model", self.model) if label else self.model
        out = {"inputs": folder.input_path(self.inputs), "model": None, "model_id": model.get("id"),
               "thresholds": None}
        if not os.path.isfile(out["inputs"]):
            raise JobError(f"job {self.run_id}: input set not found", out["inputs"],
                           "submit the job with 'parity submit', which copies the input set")
        if "path" in model:
            out["model"] = resolve_inside(folder.root, model["path"], "model path")
            if not os.path.exists(out["model"]):
                raise JobError(f"job {self.run_id}: model not found", out["model"],
                               "the model path is relative to the shared folder")
        if self.thresholds:
            out["thresholds"] = resolve_inside(folder.root, self.thresholds, "thresholds")
            if not os.path.isfile(out["thresholds"]):
                raise JobError(f"job {self.run_id}: thresholds file not found", out["thresholds"])
        return out


def read_job(path: str | os.PathLike) -> Job:
    """Read and validate ``ROOT/jobs/<run_id>.json``; the run id must match the file name.

    Raises:
        JobError: unreadable, invalid, or misnamed.
    """
    path = os.fspath(path)
    job = Job.from_dict(read_json(path, "job"), path)
    if os.path.basename(path) != f"{job.run_id}.json":
        raise JobError(f"job file name does not match its run id {job.run_id!r}", path,
                       f"name it {job.run_id}.json")
    return job


def write_job(folder: SharedFolder, job: Job) -> str:
    """Write a job under ROOT/jobs/ exclusively (a run id is never reused). Returns its path.

    Raises:
        JobError: a job of that run id exists already.
    """
    job.validate()
    path = folder.job_path(job.run_id)
    if not create_exclusive_json(path, job.to_dict()):
        raise JobError("a job with this run id exists already", path, "choose another --run-id")
    return path


@dataclass
class Claim:
    """An agent's claim on (run, label) (see the table at the top of this module)."""

    run_id: str
    label: str
    agent: dict
    status: str = "running"
    attempt: int = 1
    started: str = field(default_factory=utc_now)
    heartbeat: str = field(default_factory=utc_now)
    finished: str | None = None
    error: str | None = None
    dump: str | None = None
    taken_over: dict | None = None
    format: str = CLAIM_FORMAT
    format_version: str = JOBS_FORMAT_VERSION

    def validate(self, path: str | None = None) -> "Claim":
        """Raises JobError naming the field that is wrong."""
        check_name(self.run_id, "run id")
        check_name(self.label, "label")
        _expect(self.status in CLAIM_STATES, f"unknown claim status {self.status!r}", path)
        _expect(isinstance(self.agent, dict) and {"host", "pid", "id"} <= set(self.agent),
                "claim agent must be {host, pid, id}", path)
        _expect(isinstance(self.attempt, int) and not isinstance(self.attempt, bool) and self.attempt >= 1,
                f"claim attempt {self.attempt!r} is not an integer >= 1", path)
        for name in ("started", "heartbeat"):
            try:
                seconds_since(getattr(self, name))
            except (TypeError, ValueError):
                raise JobError(f"claim {name} {getattr(self, name)!r} is not an ISO 8601 time", path) from None
        for name in ("finished", "error", "dump"):
            _expect(getattr(self, name) is None or isinstance(getattr(self, name), str),
                    f"claim {name} must be a string or null", path)
        _expect(self.taken_over is None or isinstance(self.taken_over, dict), "taken_over must be an object", path)
        return self

    def owned_by(self, agent: dict) -> bool:
        """Whether ``agent`` (``{"host", "pid", "id"}``) made this claim."""
        return self.agent.get("id") == agent.get("id")

    def to_dict(self) -> dict:
        """The JSON document."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data, path: str | None = None) -> "Claim":
        """Validate a parsed claim document. Raises JobError."""
        _expect(isinstance(data, dict), "a claim must be a JSON object", path)
        newer = _check_version(data, CLAIM_FORMAT, "claim", path)
        known = {f.name for f in fields(cls)}
        _check_keys(data, known, newer, "claim", path)
        missing = sorted({"run_id", "label", "agent", "status"} - set(data))
        _expect(not missing, f"claim lacks field(s) {missing}", path)
        return cls(**{k: v for k, v in data.items() if k in known}).validate(path)


def read_claim(path: str | os.PathLike) -> Claim:
    """Read and validate a claim. Raises JobError (also when missing)."""
    path = os.fspath(path)
    return Claim.from_dict(read_json(path, "claim"), path)


def new_agent_identity() -> dict:
    """``{"host", "pid", "id"}`` of this process, the id random so that a restarted agent is a new owner."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex[:12]}


# -- the claim protocol --------------------------------------------------------------------------------------------

_write_lock = threading.Lock()  # atomic_write_json's temp name is per process: one writer at a time


def work_dump_name(label: str, attempt: int) -> str:
    """The name an attempt writes its dump under in dumps/<run_id>/ before publishing it as ``<label>.h5``.

    It starts with a dot, so it is never a dump name to the watcher, and it is unique per attempt, so a slow former
    owner can never publish the file of the agent that took over from it.
    """
    return f".{check_name(label, 'label')}.attempt{int(attempt)}.h5"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def stale_reason(claim: Claim, timeout: float, me: dict | None = None) -> str | None:
    """Why ``claim`` may be taken over, or None when it may not.

    A running claim is stale when its heartbeat is older than ``timeout`` seconds, or at once when it was made on
    this host by a process that no longer exists (a restarted agent resumes without waiting). A claim its agent
    abandoned (stopped by a signal) may be taken over too. Done claims and other failures are final.
    """
    if claim.status == "failed" and claim.error == ABANDONED:
        return "abandoned by its agent"
    if claim.status != "running":
        return None
    age = seconds_since(claim.heartbeat)
    if age > timeout:
        return f"heartbeat {age:.0f} s old (timeout {timeout:g} s)"
    me = me or {}
    pid = claim.agent.get("pid")
    if claim.agent.get("host") == socket.gethostname() and isinstance(pid, int) and claim.agent.get("id") != me.get(
            "id") and (pid == os.getpid() or not _pid_alive(pid)):
        return f"its agent (pid {pid} on this host) is gone"
    return None


def try_claim(folder: SharedFolder, run_id: str, label: str, agent: dict) -> Claim | None:
    """Claim (run, label) by exclusive creation. Returns the claim, or None when another agent holds it."""
    claim = Claim(run_id, label, dict(agent))
    return claim if create_exclusive_json(folder.claim_path(run_id, label), claim.to_dict()) else None


def take_over(folder: SharedFolder, seen: Claim, agent: dict, reason: str) -> Claim | None:
    """Take over a stale claim; among agents racing on the same stale claim exactly one wins.

    The winner is the one whose hard link of the claim to ``<label>.attempt<n>.json`` succeeds (a link refuses an
    existing name, also on NFS). It checks that what it linked is still the stale attempt it saw, removes the claim,
    moves what the previous attempt left in dumps/<run_id>/ aside (``<label>.h5.partial.stale-<n>``), and creates the
    new claim exclusively with attempt n+1.

    Returns:
        The new claim, or None when another agent won, the claim changed, or it is not stale any more.
    """
    path = folder.claim_path(seen.run_id, seen.label)
    aside = os.path.join(os.path.dirname(path), f"{seen.label}.attempt{seen.attempt}.json")
    try:
        os.link(path, aside)
    except (FileExistsError, FileNotFoundError):
        return None
    try:
        moved = read_claim(aside)
    except JobError:
        moved = None
    if moved is None or moved.to_dict() != seen.to_dict():
        os.unlink(aside)  # the claim changed since it was seen (its owner is alive): leave it alone
        return None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    stale_files = _move_attempt_files_aside(folder, seen)
    claim = Claim(seen.run_id, seen.label, dict(agent), attempt=seen.attempt + 1, taken_over={
        "previous_claim": os.path.basename(aside), "previous_agent": seen.agent, "reason": reason,
        "stale_files": stale_files})
    return claim if create_exclusive_json(path, claim.to_dict()) else None


def _move_attempt_files_aside(folder: SharedFolder, seen: Claim) -> list[str]:
    """Rename the previous attempt's work files (never read, never deleted); returns their new paths rel. ROOT."""
    dump_dir = os.path.dirname(folder.dump_path(seen.run_id, seen.label))
    work = os.path.join(dump_dir, work_dump_name(seen.label, seen.attempt))
    moved = []
    for src, kind in ((work + ".partial", "partial"), (work, "unpublished")):
        dst = os.path.join(dump_dir, f"{seen.label}.h5.{kind}.stale-{seen.attempt}")
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            continue
        moved.append(os.path.relpath(dst, folder.root))
    return moved


def update_claim(folder: SharedFolder, claim: Claim, **changes) -> bool:
    """Rewrite a claim as its owner (heartbeat, done, failed). Returns False, writing nothing, when the claim on
    disk is no longer this attempt of this agent (it was taken over)."""
    path = folder.claim_path(claim.run_id, claim.label)
    with _write_lock:
        try:
            current = read_claim(path)
        except JobError:
            return False
        if not current.owned_by(claim.agent) or current.attempt != claim.attempt:
            return False
        for name, value in changes.items():
            setattr(claim, name, value)
        claim.validate(path)
        atomic_write_json(path, claim.to_dict())
    return True
