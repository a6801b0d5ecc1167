"""The contract of a replayer: what the analysis gets back when a reference model's modules are called again on a
candidate dump's recorded inputs (docs/ARCHITECTURE.md section 6, "Replay").

A replayer is opened through the backend registry (``BackendSpec.replayer``, protocol/backends.py), so that
analyze/ uses it without importing capture/ or a framework::

    replayer = open_replayer("models/llama", dtype="float32")
    for call in replayer.replay(candidate_reader):   # one ReplayedCall per module call with full outputs
        ...
    replayer.close()

For every module call whose outputs the candidate holds in full, the replayer runs the reference's module alone on
the candidate's recorded inputs three times: in the reference's dtype, in float64 (exact for the purpose: its
rounding is ~1e-16), and in the dtype of the candidate's output (what the candidate's precision alone explains).
It reports what it could not rebuild instead of guessing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from .errors import CaptureError
from .records import RecordInfo


@dataclass
class ReplayedOutput:
    """One output tensor of a replayed call, beside the candidate's record of it.

    Attributes:
        info: the candidate's output record.
        reference: the reference module's output in the reference's dtype.
        exact: the same in float64.
        low: the same in the dtype of the candidate's record, or None when that is the reference's dtype (then
            ``reference`` is it).
    """

    info: RecordInfo
    reference: np.ndarray
    exact: np.ndarray
    low: np.ndarray | None = None


@dataclass
class ReplayedCall:
    """One module call (module path, call index, sample, step) of the candidate, replayed or not.

    Attributes:
        module, call, sample, step: the call.
        module_class: the reference module's class; candidate_class: the captured module's (when recorded).
        outputs: the replayed outputs (empty when skipped).
        skipped: why the call could not be replayed (None when it was).
        seconds: time spent replaying it.
    """

    module: str
    call: int
    sample: int
    step: int
    module_class: str = ""
    candidate_class: str | None = None
    outputs: list = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0


class Replayer(Protocol):
    """What ``open_replayer`` returns."""

    model_path: str
    dtype: str

    def replay(self, reader, *, modules: str | None = None) -> Iterator[ReplayedCall]:
        """Replay every module call of the candidate dump ``reader`` (a DumpReader) that has output records;
        ``modules``: a regex searched in module paths (others are left out)."""

    def close(self) -> None:
        """Free the model."""


def open_replayer(model: str, *, backend: str = "torch", dtype: str | None = None, device: str | None = None):
    """Open the replayer of ``backend`` on the reference model folder ``model``.

    Raises:
        CaptureError: the backend has no replayer, or what it needs is not installed, or the model cannot be loaded.
    """
    from .backends import BACKENDS, resolve
    spec = BACKENDS.get(backend)
    if spec is None or spec.replayer is None:
        raise CaptureError(f"the {backend} backend cannot replay modules",
                           hint="replay runs a PyTorch reference model: pass its folder")
    try:
        factory = resolve(spec.replayer)
    except (ImportError, AttributeError) as exc:
        raise CaptureError(f"replay is not available here ({exc})",
                           hint=f"install tensorparity[{spec.extra}] on the analysis host") from None
    return factory(model, dtype=dtype, device=device)
