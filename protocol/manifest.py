"""The dump manifest (SPEC.md section 4): who captured what, how, on which device, from which inputs."""
from __future__ import annotations

import datetime as _dt
import json
import socket
from dataclasses import asdict, dataclass, field, fields

from .backends import CAPTURE_METHODS  # one per backend of the registry, and "external"
CAPTURE_MODES = ("forward", "generate", "teacher-forced")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """Everything a dump says about how it was made. Unknown keys read from newer files land in ``extra``.

    Attributes:
        run_id: the run this dump belongs to (free text; in a shared folder, the job's run id).
        label: the capture's label, e.g. ``cpu-fp32`` or ``a100-bf16``.
        model: ``{"path" or "id", "hash", "hash_method", ...}``.
        framework: ``{"name", "version", ...}`` of the backend that ran the model, plus other relevant versions.
        device: ``{"type", "name", "index"}``.
        dtype: the dtype policy (e.g. ``float32``, ``bfloat16``, ``int4``).
        capture: ``{"method", "mode", "policy", ...}``; method in CAPTURE_METHODS, mode in CAPTURE_MODES.
        inputs_sha256: sha256 of the input set consumed (empty when the capture used no input set).
        perturbation_check: ``None`` when not run, else ``{"bit_identical": bool, ...}``.
    """

    run_id: str = ""
    label: str = ""
    producer: dict = field(default_factory=lambda: {"name": "tensorparity", "version": _producer_version()})
    created: str = field(default_factory=_now)
    host: str = field(default_factory=socket.gethostname)
    model: dict = field(default_factory=dict)
    framework: dict = field(default_factory=dict)
    device: dict = field(default_factory=lambda: {"type": "cpu", "name": "cpu", "index": None})
    dtype: str = ""
    rank: int = 0
    world_size: int = 1
    capture: dict = field(default_factory=lambda: {"method": "external", "mode": "forward", "policy": {}})
    inputs_sha256: str = ""
    perturbation_check: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (0 <= self.rank < self.world_size):
            raise ValueError(f"rank {self.rank} is not within world size {self.world_size}")
        method = self.capture.get("method")
        if method not in CAPTURE_METHODS:
            raise ValueError(f"capture method {method!r} is not one of {CAPTURE_METHODS}")
        mode = self.capture.get("mode")
        if mode not in CAPTURE_MODES:
            raise ValueError(f"capture mode {mode!r} is not one of {CAPTURE_MODES}")

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys) as stored in the dump."""
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        """Parse stored JSON; keys this version does not know are kept in ``extra`` (forward compatibility).

        Raises:
            ValueError: not a JSON object, or a known field of the wrong kind.
        """
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        """Build from a parsed JSON object (see ``from_json``)."""
        if not isinstance(data, dict):
            raise ValueError("manifest is not a JSON object")
        known = {f.name for f in fields(cls)}
        extra = dict(data.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        kwargs = {k: v for k, v in data.items() if k in known and k != "extra"}
        for name in ("model", "framework", "device", "capture", "producer"):
            if name in kwargs and not isinstance(kwargs[name], dict):
                raise ValueError(f"manifest field {name!r} is not an object")
        for name in ("rank", "world_size"):
            if name in kwargs and (not isinstance(kwargs[name], int) or isinstance(kwargs[name], bool)):
                raise ValueError(f"manifest field {name!r} is not an integer")
        return cls(**kwargs, extra=extra)


def _producer_version() -> str:
    try:
        from importlib.metadata import version
        return version("tensorparity")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"
