"""The small base every capture backend shares (torch hooks, ONNX output injection, ORT GenAI).

``CaptureBackend.capture()`` does the checks, the manifest, the dump writer and the background sink, the logging
and the summary; each backend implements ``_describe()`` (model, framework, device, dtype for the manifest) and
``_capture_impl()`` (run the model over the input set and put records into the sink).
"""
from __future__ import annotations

import abc
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from protocol import CAPTURE_MODES, CaptureError, DumpWriter, InputSet, InputSetMismatchError, Manifest, open_dump

from .policy import RecordPolicy
from .sink import RecordSink

log = logging.getLogger(__name__)


@dataclass
class CaptureOptions:
    """What to capture and how, independent of the backend.

    Attributes:
        label, run_id: recorded in the manifest (the label names this capture, e.g. ``cpu-fp32``).
        mode: ``forward`` | ``generate`` | ``teacher-forced``.
        max_new_tokens: decode steps for the generate modes.
        reference: for ``teacher-forced``, the reference dump whose generated tokens are fed.
        policy: what to keep of each site.
        compression: dump compression (``none``, ``lz4``...).
        max_queue_bytes: bound of the background writer's queue.
        check_perturbation: also run without capture and record whether the final outputs are bit-identical.
        rank, world_size: for multi-rank captures (one dump per rank).
        max_samples: capture only the first N samples of the input set.
        extra: additions to the manifest's ``extra`` (the agent records there the claim that made the dump).
    """

    label: str = ""
    run_id: str = ""
    mode: str = "forward"
    max_new_tokens: int = 0
    reference: str | None = None
    policy: RecordPolicy = field(default_factory=RecordPolicy)
    compression: str = "none"
    max_queue_bytes: int = 256 << 20
    check_perturbation: bool = False
    rank: int = 0
    world_size: int = 1
    max_samples: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CaptureSummary:
    """What a capture produced: the dump, how many records and bytes, how long it took."""

    path: str
    records: int
    bytes: int
    seconds: float
    blocked_seconds: float

    def line(self) -> str:
        """The one-line summary printed by the CLI."""
        return (f"wrote {self.path}: {self.records} records, {self.bytes / 2**20:.1f} MiB in {self.seconds:.1f} s "
                f"(writer back-pressure {self.blocked_seconds:.1f} s)")


class CaptureBackend(abc.ABC):
    """Base of the capture backends. Subclasses set ``method`` and implement the two hooks below."""

    method: str = ""

    def capture(self, inputs: InputSet, output: str, options: CaptureOptions, *, progress=None) -> CaptureSummary:
        """Run the model over ``inputs`` and write a dump to ``output``.

        Args:
            inputs: the input set (its sha256 goes into the manifest).
            output: the dump path; must not exist (dumps are never overwritten).
            options: what to capture.
            progress: an object with ``advance()``/``update()`` (see common.console.progress), or None.

        Raises:
            CaptureError: a bad option, an unwritable output, a failing model, a failed write.
        """
        if options.mode not in CAPTURE_MODES:
            raise CaptureError(f"unknown mode {options.mode!r}", hint=f"use one of {', '.join(CAPTURE_MODES)}")
        if options.mode != "forward" and options.max_new_tokens < 1:
            raise CaptureError(f"mode {options.mode} needs --max-new-tokens of at least 1")
        if options.mode == "teacher-forced" and not options.reference:
            raise CaptureError("teacher-forced mode needs the reference dump whose tokens are fed (--reference)")
        folder = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(folder):
            raise CaptureError("the output folder does not exist", folder, "create it first")
        described = self._describe()
        manifest = Manifest(
            run_id=options.run_id, label=options.label, model=described.get("model", {}),
            framework=described.get("framework", {}), device=described.get("device", {}),
            dtype=described.get("dtype", ""), rank=options.rank, world_size=options.world_size,
            capture={"method": self.method, "mode": options.mode, "policy": options.policy.to_dict(),
                     "max_new_tokens": options.max_new_tokens, **described.get("capture", {})},
            inputs_sha256=inputs.sha256, extra=dict(options.extra))
        start = time.perf_counter()
        writer = DumpWriter(output, manifest, compression=options.compression)
        try:
            sink = RecordSink(writer, max_queue_bytes=options.max_queue_bytes, byte_budget=options.policy.byte_budget)
        except BaseException:  # e.g. a signal right here: leave no partial file behind
            writer.abort()
            raise
        with sink:
            extra = self._capture_impl(inputs, sink, options, progress) or {}
            if "perturbation_check" in extra:
                writer.manifest.perturbation_check = extra.pop("perturbation_check")
            writer.manifest.capture.update(extra.pop("capture", {}))
            writer.manifest.extra.update(extra)
        summary = CaptureSummary(output, sink.records, sink.written_bytes, time.perf_counter() - start,
                                 sink.blocked_seconds)
        log.info(summary.line())
        return summary

    @abc.abstractmethod
    def _describe(self) -> dict:
        """Manifest parts: ``{"model": {...}, "framework": {...}, "device": {...}, "dtype": str,
        "capture": {extra capture details}}``."""

    @abc.abstractmethod
    def _capture_impl(self, inputs: InputSet, sink: RecordSink, options: CaptureOptions, progress) -> dict | None:
        """Run the model and ``sink.put()`` every record. May return manifest additions:
        ``perturbation_check``, ``capture`` (merged into manifest.capture), anything else goes to ``extra``."""


def reference_tokens(reference: str, inputs: InputSet, count: int) -> list[np.ndarray]:
    """The generated tokens of the first ``count`` samples of a reference dump, for teacher forcing.

    Raises:
        InputSetMismatchError: the reference consumed another input set.
        CaptureError: the reference has no generated tokens for a sample (not a generate capture).
    """
    with open_dump(reference) as ref:
        if ref.manifest.inputs_sha256 != inputs.sha256:
            raise InputSetMismatchError(
                f"the reference dump consumed input set {ref.manifest.inputs_sha256[:12] or '(none)'}, not "
                f"{inputs.sha256[:12]}", reference, "teacher-force with the input set of the reference")
        names = set(ref.array_names())
        tokens = []
        for i in range(count):
            name = f"generated_tokens.s{i}"
            if name not in names:
                raise CaptureError(f"the reference dump has no {name} (was it a generate capture of at least "
                                   f"{count} samples?)", reference)
            fed = np.asarray(ref.array(name))  # [steps], or [batch, steps] for a batched torch sample
            tokens.append(fed.reshape(-1) if fed.ndim > 1 and fed.shape[0] == 1 else fed)
    return tokens
