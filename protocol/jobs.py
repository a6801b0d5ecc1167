"""Job documents of the shared folder (SPEC.md section 13.1), and the validation helpers that claims share.

Jobs and claims are plain JSON that a person may write or read by hand; both are validated strictly on every read,
since a job decides what an agent executes. A document of another MAJOR version is refused. Within our MAJOR, an
unknown key is refused when the document's MINOR is not newer than ours (it is a typo) and ignored when it is newer.

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
                   ``compression``, ``provider``, ``device_map``, ``max_memory`` (the offload folder is the
                   agent's own: a path on its host)
thresholds         path of a thresholds file relative to ROOT, or null
zoom               optional: a window (integer >= 0). The job is pass 1 of a two-pass capture: after its first
                   pair report with a divergence, the watcher submits the pass-2 job ``<run_id>.zoom`` once
                   (same model, inputs, labels; the policy of ``parity zoom --window N``). Absent or null: none
=================  ==========================================================================================

Claims (who captures which label of a job) are in protocol/claims.py.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import asdict, dataclass, field, fields

from .backends import BACKEND_NAMES, describe_honoured, unhonoured
from .errors import JobError
from .folder import SharedFolder, check_name, create_exclusive_json, read_json, resolve_inside
from .manifest import CAPTURE_MODES
from .version import parse_version

JOB_FORMAT = "tensorparity.job"
JOBS_FORMAT_VERSION = "1.1"  # 1.1 added zoom (a 1.0 reader ignores it: a newer MINOR)
BACKENDS = BACKEND_NAMES  # the registry's (protocol/backends.py)
TARGET_KEYS = ("device", "dtype", "backend", "model", "attn_implementation", "compression", "provider", "device_map",
               "max_memory")
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


def _check_version(data: dict, expected_format: str, what: str, path: str | None,
                   ours: str = JOBS_FORMAT_VERSION) -> bool:
    """Check identity and version against ``ours``; returns True when the document is of a newer MINOR (unknown
    keys allowed)."""
    if data.get("format") != expected_format:
        raise JobError(f"not a {what} (format is {data.get('format')!r}, expected {expected_format!r})", path)
    our_major, our_minor = parse_version(ours)
    try:
        major, minor = parse_version(data.get("format_version"))
    except ValueError:
        raise JobError(f"malformed format_version {data.get('format_version')!r} in this {what}", path,
                       f"write format_version {ours!r}") from None
    if major != our_major:
        raise JobError(f"{what} format version {data['format_version']} is not supported (this reader: "
                       f"{ours})", path,
                       "upgrade tensorparity on this host" if major > our_major else "submit the job again")
    return minor > our_minor


def _check_keys(data: dict, known: set, newer: bool, what: str, path: str | None) -> None:
    unknown = sorted(set(data) - known)
    if unknown and not newer:
        raise JobError(f"unknown field(s) {unknown} in this {what}", path,
                       f"known fields are {sorted(known)}")


def validate_policy_document(p, path: str | None = None) -> None:
    """Check the structure of a record policy document ``{rules: [{pattern, action, params}], default, byte_budget}``
    (a job's ``policy``, a ``--policy-file``). Structure only: the actions' meaning belongs to capture.policy, which
    checks them again when it runs.

    Raises:
        JobError: what is wrong, naming ``path``.
    """
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
    zoom: int | None = None
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
            backend = target.get("backend", self.backend)
            bad = unhonoured(backend, target)
            _expect(not bad, f"targets[{label!r}] sets {', '.join(bad)}, which the {backend} backend cannot honour "
                             f"(it takes {describe_honoured(backend)})", path)
        if self.thresholds is not None:
            check_relative_path(self.thresholds, "thresholds", path)
        _expect(self.zoom is None or (isinstance(self.zoom, int) and not isinstance(self.zoom, bool)
                                      and self.zoom >= 0), f"zoom {self.zoom!r} must be a window (integer >= 0) "
                                                           f"or null", path)
        return self

    def _validate_policy(self, path: str | None) -> None:
        validate_policy_document(self.policy, path)

    def target(self, label: str) -> dict:
        """The per-label overrides for ``label`` (empty when none)."""
        return dict(self.targets.get(label, {}))

    def to_dict(self) -> dict:
        """The JSON document (without ``zoom`` when it is null: such a job stays readable by readers that
        predate the field, which refuse unknown keys of their own format version)."""
        doc = asdict(self)
        if doc["zoom"] is None:
            del doc["zoom"]
        return doc

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
