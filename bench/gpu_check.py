"""GPU check: the accelerator paths of the capture that a CPU-only machine cannot run, in one command.

    python -m bench.gpu_check              # on a machine with CUDA: five checks, one PASS/FAIL/SKIP/INFO line each
    python -m bench.gpu_check --device cpu  # developer dry run: the same checks on the CPU (see below)

Without a CUDA device (``torch.cuda.is_available()`` false) it prints what it found and
``no CUDA device: nothing to check (exit 0)``, and exits 0. With one, it runs five checks, each under a time budget
(their sum is 6.5 minutes, under the 8 allowed; the whole CPU dry run takes 40-60 s on 2 busy cores, and the GPU run
is expected to take 1-2 minutes, most of it the ONNX export and P2's disk writes; not measured: no GPU here):

- ``copies``: the hooks' device-to-host path (capture/torch_hooks.py ``_copy_for_writer``: a ``non_blocking`` copy
  into a buffer of ``HostBufferPool(pinned=True)``, an event recorded after it, the writer thread waiting on the
  event). Directly: a reused pinned buffer is refilled by an asynchronous copy queued behind ~1 TFLOP of matmuls,
  the source is zeroed right after, and the resolved bytes must be the source's (not the buffer's previous content,
  not the zeros), with the stream still busy when the copy call returned; with two or more GPUs, the same on a GPU
  that is not the current one (the event must be recorded on the stream of the tensor's device, not the current
  device's). Through ``TorchBackend`` on
  the tiny Llama: a full capture must hold bit for bit what synchronous ``.to("cpu")`` copies of the same forward
  hold, and equal a second capture; every host buffer the capture took must be pinned.
- ``stats``: the on-device statistics (capture/torch_stats.py ``device_stats``) of a statistics-only capture, of
  the full capture's index, and of edge-case tensors (NaN/Inf, bf16, fp16, ints, bool, empty, 0-d, strided, several
  blocks, a large mean) against protocol/stats.py's float64 ``compute_stats`` of the same tensor on the host.
- ``compare``: tiny Llama and tiny BERT captured on the CPU in float32 and on CUDA in float32 and bfloat16, compared
  by ``analyze.compare``: keys must pair one to one; CUDA-fp32 logits (BERT: last hidden state) within rel_l2 1e-3.
- ``ort``: the tiny Llama exported by ``torch.onnx.export(dynamo=True)``, captured by ``OnnxBackend`` with
  ``ep="cuda"`` (provider option ``use_tf32=0``: ORT's CUDA EP computes float32 MatMul in TF32 by default) and
  ``ep="cpu"``: keys pair one to one, logits rel_l2 < 1e-4; the default TF32 capture's rel_l2 is printed too (SKIP
  without CUDAExecutionProvider: the plain ``onnxruntime`` wheel is CPU-only; ``onnxruntime-gpu`` provides it).
- ``overhead``: P1 (statistics-only capture / bare forward, target <= 1.3x) and P2 ((full capture - bare) / raw h5py
  write of the same bytes, target <= 1.4x) of bench/capture_overhead.py's random Llama on the GPU, medians of
  interleaved rounds with ``torch.cuda.synchronize()`` around every timed region: figures (INFO), not PASS/FAIL.

The exit code is 1 when a check FAILs (an exception or a check over its budget is a FAIL), else 0. One JSON line
with every figure is appended to bench/results.jsonl (``bench.record``; BENCH_RESULTS redirects it).

``--device cpu`` is a developer dry run on a machine without a GPU: every check runs on the CPU (CUDA-vs-CPU
becomes CPU-vs-CPU, the ORT candidate uses the CPU provider, P1/P2 a smaller model), which exercises the logic and
every API call but none of the accelerator code paths; nothing is appended to results.jsonl unless BENCH_RESULTS is
set. This module has no ``main()`` on purpose: ``python -m bench`` (``make bench``) does not run it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import inspect
import io
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

BENCH = "gpu_check"
SEQ = 16  # tokens per sample of the tiny models' input set (the ONNX export is static at this length)
SAMPLES = 2
#: Seconds each check may take before it is stopped and counts as a FAIL (sum: 390 s, under the 8 minutes).
BUDGETS = {"copies": 45, "stats": 45, "compare": 75, "ort": 105, "overhead": 120}
TOTAL_LIMIT_S = 480
#: ``device_stats`` accumulates in float64 on the device (``x.to(float64).sum()`` for the mean, the sum of squared
#: centred float64 values for m2, Chan's combination of 2**17-element blocks in Python floats; min/max by
#: ``aminmax`` in the tensor's own dtype, exact). protocol.compute_stats is float64 too, over the same blocks; the
#: two differ only in summation order (~log2(n) * 1.1e-16 relative: ~2e-15) and in protocol's one-pass
#: m2 = s2 - s1*mean, which it takes only while std/rms > 1e-2 (numpy path; 0.1 compiled), so the error of std is
#: at most ~2e-15 * rms / (2 std) < ~1e-13 of the rms. Hence mean and std are compared on the scale of the rms of the
#: finite values, l2 relatively, with 1e-11: 100x over that bound (measured on the CPU: <= 5e-16). A float32
#: accumulation errs by 2e-10 even with torch's cascade sums (tried: 20x over) and ~1e-7 naively. min, max,
#: abs_max, numel and the NaN/Inf counts must be exact.
STATS_RTOL = 1e-11
LOGITS_REL_L2_TORCH = 1e-3  # CUDA fp32 vs CPU fp32 (different kernels, same dtype): FAIL above this
LOGITS_REL_L2_ORT = 1e-4  # ORT CUDA EP vs CPU EP, fp32


class CheckFailed(AssertionError):
    """A check's expectation does not hold (the message says which, with the figures)."""


class OverBudget(Exception):
    """Raised (by SIGALRM) in the main thread when a check runs past its time budget."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Outcome:
    """One check's result line."""

    name: str
    status: str  # PASS | FAIL | SKIP | INFO
    detail: str
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)


@dataclass
class Context:
    """What the checks share: the device under test, the scratch folder, the tiny models and their input set."""

    device: torch.device
    dry_run: bool
    work: str
    llama_dir: str = ""
    bert_dir: str = ""
    inputs_path: str = ""
    args: argparse.Namespace | None = None
    caught: list = field(default_factory=list)  # warnings raised during the current check
    _reference: dict | None = None  # synchronous host copies of the tiny Llama's forward, by key text

    @property
    def dev(self) -> str:
        """The device's short label in file names and messages (``cuda``; ``cpu`` in a dry run)."""
        return self.device.type

    def path(self, name: str) -> str:
        return os.path.join(self.work, name)


# -- helpers ------------------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _bits(t: torch.Tensor) -> np.ndarray:
    """A host tensor's bytes as numpy, as the dump stores them (bfloat16 as uint16 bit patterns, fp8 as uint8)."""
    t = t.detach().resolve_conj().resolve_neg().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.element_size() == 1 and t.is_floating_point():  # float8 kinds
        return t.view(torch.uint8).numpy()
    return t.numpy()


def _values(t: torch.Tensor) -> np.ndarray:
    """A host tensor's values as numpy for ``compute_stats`` (bfloat16 and fp8 widened to float32: exact)."""
    t = t.detach().resolve_conj().resolve_neg()
    if t.dtype == torch.bfloat16 or (t.is_floating_point() and t.element_size() == 1):
        t = t.to(torch.float32)
    return t.numpy()


def _stats_mismatch(got, ref) -> str | None:
    """Why two TensorStats disagree beyond STATS_RTOL (see its comment), or None."""
    def same(a: float, b: float) -> bool:
        return (math.isnan(a) and math.isnan(b)) or a == b
    for name in ("numel", "nan_count", "inf_count"):
        if getattr(got, name) != getattr(ref, name):
            return f"{name} {getattr(got, name)} != {getattr(ref, name)}"
    for name in ("min", "max", "abs_max"):
        if not same(getattr(got, name), getattr(ref, name)):
            return f"{name} {getattr(got, name)!r} != {getattr(ref, name)!r}"
    finite = ref.numel - ref.nan_count - ref.inf_count
    if finite == 0:
        bad = [n for n in ("mean", "std", "l2") if not math.isnan(getattr(got, n))]
        return f"{bad} not NaN for a tensor without finite values" if bad else None
    rms = ref.l2 / math.sqrt(finite)  # the scale of the values: errors of mean and std are relative to it
    for name, scale in (("mean", rms), ("std", rms), ("l2", ref.l2)):
        a, b = getattr(got, name), getattr(ref, name)
        if not (abs(a - b) <= STATS_RTOL * scale or a == b):
            return f"{name} {a!r} vs {b!r} (|diff| {abs(a - b):.3g} > {STATS_RTOL:g} x {scale:.3g})"
    return None


def _rel_errors(got, ref) -> dict:
    """Relative errors of mean, std and l2 (on the scales of _stats_mismatch), for the figures."""
    finite = ref.numel - ref.nan_count - ref.inf_count
    if finite == 0 or not ref.l2:
        return {}
    rms = ref.l2 / math.sqrt(finite)
    return {"mean": abs(got.mean - ref.mean) / rms, "std": abs(got.std - ref.std) / rms,
            "l2": abs(got.l2 - ref.l2) / ref.l2}


def _torch_backend(ctx: Context, folder: str, device: str, dtype: str = "float32"):
    from capture.torch_backend import TorchBackend
    return TorchBackend.from_pretrained(folder, device=device, dtype=dtype, attn_implementation="eager")


def _capture(backend, ctx: Context, name: str, policy: str = "full") -> str:
    """A forward capture of the input set through the backend's own ``capture()``; returns the dump's path."""
    from capture.base import CaptureOptions
    from capture.policy import RecordPolicy
    from protocol import read_input_set
    path = ctx.path(name)
    backend.capture(read_input_set(ctx.inputs_path), path,
                    CaptureOptions(label=name.removesuffix(".h5"), policy=RecordPolicy(default=policy)))
    return path


def _read_dump(path: str) -> tuple[dict, list]:
    """``({key text: (RecordInfo, raw stored array or None)}, [key text in seq order])``."""
    from protocol import open_dump
    with open_dump(path) as dump:
        infos = dump.records()
        recs = {str(r.key): (r, dump.read(r, raw=True) if r.has_data else None) for r in infos}
    return recs, [str(r.key) for r in infos]


@contextlib.contextmanager
def _deterministic():
    """Deterministic kernels where torch has them (warn only where it has not: the check then counts the
    warnings), cuDNN's deterministic algorithms, IEEE float32 matmuls (no TF32); restored afterwards, so that P1/P2
    time the defaults. cuBLAS needs CUBLAS_WORKSPACE_CONFIG, which ``cli()`` sets before CUDA starts."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.get_float32_matmul_precision())
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        torch.set_float32_matmul_precision(saved[4])


def _sync_reference(ctx: Context, backend) -> dict:
    """The tiny Llama's forward over the input set with every hooked tensor copied synchronously to the host
    (``torch.cuda.synchronize()`` then a blocking ``.to("cpu", copy=True)``), keyed exactly as the capture keys them.

    The capture's own hooks and key logic are reused (``torch_capture``, with ``TorchCapture._record`` replaced on
    this one instance), so the keys are the capture's by construction; nothing goes through the sink, the pool or
    ``_copy_for_writer``. The forward is the one ``TorchBackend`` runs (same feed, no_grad, ``use_cache=False``).
    """
    from capture.torch_hooks import torch_capture
    from protocol import DumpWriter, Manifest, RecordKey, read_input_set
    model = backend.model
    params = inspect.signature(model.forward).parameters
    refs: dict[str, torch.Tensor] = {}
    scratch = ctx.path("sync-reference-scratch.h5")
    with torch.no_grad(), torch_capture(model, DumpWriter(scratch, Manifest(label="scratch"))) as cap:
        expect(callable(getattr(cap, "_record", None)), "TorchCapture has no _record(site, call, t, module_type)")

        def record_sync(site: str, call: int, t: torch.Tensor, module_type: str) -> None:
            if t.dtype in (torch.complex64, torch.complex128) or t.is_meta:
                return  # the capture skips these too
            _sync(t.device)
            refs[str(RecordKey(cap.sample, cap.step, site, call))] = t.detach().to("cpu", copy=True)
        cap._record = record_sync
        for i, sample in enumerate(read_input_set(ctx.inputs_path).samples):
            feed = {name: torch.from_numpy(np.ascontiguousarray(arr)).to(torch.long).to(backend.device)
                    for name, arr in sample.arrays.items() if name in params}
            cap.at(i, 0)
            model(**feed, **({"use_cache": False} if "use_cache" in params else {}))
        _sync(backend.device)
    os.unlink(scratch)
    return refs


def _reference(ctx: Context, backend=None) -> dict:
    """ctx's cached synchronous reference of the tiny Llama (made on first use)."""
    if ctx._reference is None:
        with _deterministic():
            ctx._reference = _sync_reference(ctx, backend or _torch_backend(ctx, ctx.llama_dir, str(ctx.device)))
    return ctx._reference


# -- a. pinned buffers and asynchronous copies ----------------------------------------------------------------------

def _direct_copy(dev: torch.device) -> dict:
    """``_copy_for_writer`` on its own: a pooled buffer, first filled with -1, is refilled by the copy of a random
    tensor queued behind ~1 TFLOP of matmuls (CUDA); the source is zeroed right after the call. The resolved bytes
    must be the random ones: -1s mean the writer read before the copy landed (no wait, or a wait on the wrong
    stream), zeros that the copy ran after later work. Returns the figures."""
    from capture import torch_hooks
    from capture.torch_buffers import HostBufferPool
    cuda = dev.type == "cuda"
    pool = HostBufferPool(64 << 20, pinned=cuda)  # as torch_capture makes it for a CUDA model
    n = 4 << 20  # 16 MiB of float32
    sentinel = torch.full((n,), -1.0, device=dev)
    first = torch_hooks._copy_for_writer(sentinel, None, None, pool, False)
    got = first().data
    expect(got.shape == (n,) and bool((got == -1.0).all()),
           f"{dev}: the first copy does not hold its source ({int((got != -1.0).sum())} of {n} elements differ: "
           "read before the copy landed?)")
    del first, got  # the host buffer goes back to the pool (weakref.finalize on its tensor)
    expect(pool.idle_bytes == 4 * n, f"{dev}: the buffer did not return to the pool (idle {pool.idle_bytes} bytes)")
    x = torch.randn(n, generator=torch.Generator(device=dev).manual_seed(1), device=dev)
    expected = x.to("cpu", copy=True).numpy()
    side = 4096 if cuda else 256
    a = torch.randn(side, side, device=dev) / math.sqrt(side)
    b = torch.empty_like(a)
    _sync(dev)
    for _ in range(8 if cuda else 2):  # 8 x 137 GFLOP on CUDA ahead of the copy in x's stream
        torch.matmul(a, a, out=b)
    reused = pool.reused
    t0 = time.perf_counter()
    resolve = torch_hooks._copy_for_writer(x, None, None, pool, False)
    enqueue_s = time.perf_counter() - t0
    pending = (not torch.cuda.current_stream(dev).query()) if cuda else None
    x.zero_()  # queued after the copy: must not reach the copied bytes
    t0 = time.perf_counter()
    res = resolve()
    wait_s = time.perf_counter() - t0
    expect(pool.reused == reused + 1, f"{dev}: the copy did not reuse the pooled buffer (the test needs it)")
    ok = res.data.dtype == np.float32 and res.data.tobytes() == expected.tobytes()
    stale = int((res.data == -1.0).sum())
    zeros = int((res.data == 0.0).sum())
    expect(ok, f"{dev}: resolved bytes differ from the source: {stale} of {n} elements still hold the buffer's "
               f"previous content (-1: read before the copy landed), {zeros} the zeros written after the copy")
    _sync(dev)
    expect(float(x.abs().max()) == 0.0, f"{dev}: x.zero_() did not run")
    probe = pool.empty_like(torch.empty(16, device=dev))
    figures = {"enqueue_ms": round(enqueue_s * 1e3, 3), "wait_ms": round(wait_s * 1e3, 3), "stream_busy": pending,
               "pool_pinned": pool.pinned, "buffer_pinned": bool(probe.is_pinned())}
    if cuda:
        expect(pool.pinned and figures["buffer_pinned"], f"{dev}: HostBufferPool(pinned=True) gave an unpinned buffer")
        expect(pending, f"{dev}: the stream was idle when the copy call returned ({enqueue_s * 1e3:.2f} ms): the "
                        "device copy was not asynchronous (unpinned memory, or the matmuls were too short)")
    else:
        expect(not figures["buffer_pinned"], "a CPU pool gave pinned memory")
    return figures


def check_copies(ctx: Context) -> Outcome:
    from capture import torch_hooks
    from capture.torch_buffers import HostBufferPool
    dev, cuda = ctx.device, ctx.device.type == "cuda"
    # 1. _copy_for_writer directly, on the device under test (the current CUDA device)
    direct = _direct_copy(dev)
    figures: dict = {"direct": direct}
    enqueue_s, wait_s, pending = direct["enqueue_ms"] / 1e3, direct["wait_ms"] / 1e3, direct["stream_busy"]
    # ... and on another GPU than the current one: the event of _copy_for_writer is torch.Event(device=...)
    # .record() without a stream, which records on the *current* device's stream (torch/csrc/Event.cpp), while
    # the copy runs on the tensor's device: a model on cuda:1 (or spread by device_map) with cuda:0 current
    cross = "one GPU: cross-device copy not tried"
    if cuda and torch.cuda.device_count() > 1:
        other = torch.device("cuda", (dev.index + 1) % torch.cuda.device_count())
        figures["cross_device"] = _direct_copy(other)  # the current device stays dev (cli() set it)
        cross = f"{other} while {dev} is current: refilled correctly too"
    # 2. through TorchBackend: the capture's bytes against synchronous copies of the same forward, and a second run
    counts = {"device_copies": 0, "host_copies": 0, "inline": 0, "buffers": 0, "pinned_buffers": 0}
    orig_copy, orig_empty = torch_hooks._copy_for_writer, HostBufferPool.empty_like

    def counting_copy(data, aux, stats, pool, inline):
        kind = "inline" if data.device.type == "cpu" and inline else (
            "host_copies" if data.device.type == "cpu" else "device_copies")
        counts[kind] += 1
        return orig_copy(data, aux, stats, pool, inline)

    def counting_empty(self, t):
        host = orig_empty(self, t)
        counts["buffers"] += 1
        counts["pinned_buffers"] += bool(host.is_pinned())
        return host
    # on the CPU (dry run) the first capture leaves a core free, so that its hooks queue numpy copies in pooled
    # buffers for the writer thread (the pipeline a CUDA capture uses) instead of writing inline, as the second does
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    queued = not cuda and cores > 1 and threads >= cores
    with _deterministic():
        backend = _torch_backend(ctx, ctx.llama_dir, str(dev))
        torch_hooks._copy_for_writer, HostBufferPool.empty_like = counting_copy, counting_empty
        try:
            if queued:
                torch.set_num_threads(cores - 1)
            first_dump = _capture(backend, ctx, f"copies-{ctx.dev}-a.h5")
        finally:
            torch_hooks._copy_for_writer, HostBufferPool.empty_like = orig_copy, orig_empty
            torch.set_num_threads(threads)
        second_dump = _capture(backend, ctx, f"copies-{ctx.dev}-b.h5")
        refs = _reference(ctx, backend)
    nondeterministic = sum("deterministic" in str(w.message) for w in ctx.caught)
    ra, order_a = _read_dump(first_dump)
    rb, order_b = _read_dump(second_dump)
    expect(order_a == order_b, f"the two captures differ in their keys or order ({len(order_a)} vs {len(order_b)})")
    expect(set(ra) == set(refs), f"capture and synchronous reference differ in keys: "
                                 f"{len(set(ra) - set(refs))} only captured, {len(set(refs) - set(ra))} only copied")
    vs_ref, vs_second, first_bad = 0, 0, None
    for key in order_a:
        info, data = ra[key]
        ref = _bits(refs[key])
        if data is None or data.shape != ref.shape or data.tobytes() != ref.tobytes():
            vs_ref += 1
            first_bad = first_bad or key
        again = rb[key][1]
        if again is None or data is None or again.tobytes() != data.tobytes():
            vs_second += 1
    figures.update(records=len(order_a), differ_from_sync=vs_ref, differ_between_runs=vs_second,
                   nondeterministic_warnings=nondeterministic, **counts)
    hint = f" ({nondeterministic} warnings of ops without a deterministic implementation)" if nondeterministic else ""
    expect(vs_ref == 0, f"{vs_ref} of {len(order_a)} records differ from synchronous copies of the same forward "
                        f"(first {first_bad}){hint}")
    expect(vs_second == 0, f"{vs_second} of {len(order_a)} records differ between two captures{hint}")
    if cuda:  # every record is a CUDA tensor, except any tensor the model keeps on the host (numpy-copied)
        expect(counts["device_copies"] > 0 and counts["device_copies"] + counts["host_copies"] == len(order_a),
               f"{counts['device_copies']} device and {counts['host_copies']} host copies for {len(order_a)} records")
        expect(counts["buffers"] >= len(order_a) and counts["pinned_buffers"] == counts["buffers"],
               f"{counts['pinned_buffers']} of {counts['buffers']} host buffers pinned")
        how = (f"{counts['device_copies']} non_blocking device copies (+{counts['host_copies']} host tensors) into "
               f"{counts['pinned_buffers']} pinned pooled buffers, waited by event on the writer thread")
    else:
        expect(counts["pinned_buffers"] == 0 and counts["device_copies"] == 0, "a CPU capture pinned host memory")
        if queued:
            expect(counts["host_copies"] == counts["buffers"] == len(order_a),
                   f"{counts['host_copies']} queued copies in {counts['buffers']} buffers for {len(order_a)} records")
        how = (f"first capture with {cores - 1 if queued else threads} torch threads: {counts['inline']} records "
               f"written inline, {counts['host_copies']} numpy copies queued in {counts['buffers']} unpinned pooled "
               f"buffers; second with {threads}: inline (no device copies on the CPU)")
    busy = f", stream busy after the call: {pending}" if cuda else ""
    detail = (f"{len(order_a)} records bit-identical to synchronous copies and across two captures; {how}; direct: "
              f"reused buffer refilled correctly (enqueue {enqueue_s * 1e3:.2f} ms, wait {wait_s * 1e3:.1f} ms"
              f"{busy}){'; ' + cross if cuda else ''}")
    return Outcome("copies", "PASS", detail, figures=figures)


# -- b. on-device statistics ----------------------------------------------------------------------------------------

def _edge_tensors(device: torch.device) -> dict:
    """Tensors that take every branch of device_stats: several blocks, a large mean, NaN/Inf, no finite value,
    empty, 0-d, strided, and each dtype family."""
    gen = torch.Generator(device="cpu").manual_seed(2)
    big = torch.randn(300_001, generator=gen)  # 3 blocks of 2**17, the last one partial
    holes = torch.randn(200_000, generator=gen)
    holes[[5, 17, 150_000]] = float("nan")
    holes[[9, 140_000]] = float("inf")
    holes[11] = float("-inf")
    cases = {
        "float32 3 blocks": big,
        "float32 mean 1e4 std 1": big + 1e4,
        "float32 NaN/Inf": holes,
        "float32 all NaN": torch.full((1000,), float("nan")),
        "float32 empty": torch.empty(0, 3),
        "float32 0-d": torch.tensor(-2.5),
        "float32 strided": torch.randn(300, 500, generator=gen),  # viewed as .t()[::2] on the device, below
        "float64": torch.randn(150_000, generator=gen, dtype=torch.float64) * 1e-3,
        "bfloat16": (torch.randn(200_000, generator=gen) * 3).to(torch.bfloat16),
        "bfloat16 Inf": torch.tensor([1.0, float("inf"), -2.0]).to(torch.bfloat16),
        "float16": torch.randn(140_000, generator=gen).to(torch.float16),
        "int64": torch.arange(-70_000, 70_000, dtype=torch.int64) * 3,
        "int32": torch.randint(-1000, 1000, (1000,), generator=gen, dtype=torch.int32),
        "uint8": torch.randint(0, 256, (5000,), generator=gen, dtype=torch.uint8),
        "bool": torch.rand(140_000, generator=gen) > 0.3,
    }
    out = {name: t.to(device) for name, t in cases.items()}
    out["float32 strided"] = out["float32 strided"].t()[::2]  # (250, 300), neither contiguous nor dense
    return out


def check_stats(ctx: Context) -> Outcome:
    from capture.torch_stats import device_stats
    from protocol import compute_stats
    worst = {"mean": 0.0, "std": 0.0, "l2": 0.0}

    def against(got, host: torch.Tensor, what: str) -> None:
        ref = compute_stats(_values(host))
        why = _stats_mismatch(got, ref)
        expect(why is None, f"{what}: {why}")
        for k, v in _rel_errors(got, ref).items():
            worst[k] = max(worst[k], v)
    # edge cases, through device_stats itself (on the CPU too: the dry run exercises the device algorithm)
    edges = _edge_tensors(ctx.device)
    for name, t in edges.items():
        against(device_stats(t), t.to("cpu"), f"device_stats of {name}")
    # the statistics-only capture (the real path: torch_stats in the hooks) against the synchronous host copies
    full = ctx.path(f"copies-{ctx.dev}-a.h5")  # the copies check's full capture, made here if it did not run
    with _deterministic():
        backend = _torch_backend(ctx, ctx.llama_dir, str(ctx.device))
        stats_dump = _capture(backend, ctx, f"stats-{ctx.dev}.h5", policy="stats")
        if not os.path.exists(full):
            full = _capture(backend, ctx, f"stats-full-{ctx.dev}.h5")
        refs = _reference(ctx, backend)
    recs, order = _read_dump(stats_dump)
    expect(set(recs) == set(refs), f"statistics capture and reference differ in keys: {len(set(recs) - set(refs))} "
                                   f"only captured, {len(set(refs) - set(recs))} only copied")
    for key in order:
        info = recs[key][0]
        expect(info.storage == "stats", f"{key} is a {info.storage} record in a statistics-only capture")
        against(info.stats, refs[key], f"statistics-only record {key}")
    # the full capture's index: on CUDA computed on the device in the hooks; on the CPU by the writer
    from protocol import decode
    frecs, forder = _read_dump(full)
    for key in forder:
        info, raw = frecs[key]
        why = _stats_mismatch(info.stats, compute_stats(decode(raw, info.dtype)))
        expect(why is None, f"full record {key}: index statistics {why}")
    full_checked = len(forder)
    figures = {"edge_tensors": len(edges), "stats_records": len(order), "full_records": full_checked,
               "max_rel_err": {k: float(f"{v:.3g}") for k, v in worst.items()}, "rtol": STATS_RTOL}
    detail = (f"{len(order)} statistics-only records, {full_checked} full records' index statistics and "
              f"{len(edges)} edge-case tensors match float64 compute_stats: min/max/abs_max/counts exact, max rel "
              f"error mean {worst['mean']:.1e} std {worst['std']:.1e} l2 {worst['l2']:.1e} (tolerance "
              f"{STATS_RTOL:g})")
    return Outcome("stats", "PASS", detail, figures=figures)


# -- c. CUDA vs CPU capture and compare -------------------------------------------------------------------------------

def _compare(ctx: Context, ref: str, cand: str, final: str) -> dict:
    """analyze.compare of two dumps: pairing, the final output's rel_l2, the worst site and the first divergence."""
    from analyze.compare import compare
    from protocol import open_dump
    report = compare(ref, cand, inputs=ctx.inputs_path, show_progress=False)
    with open_dump(ref) as a, open_dump(cand) as b:
        n_ref, n_cand = len(a), len(b)
    sites = [(s.worst.get("rel_l2"), s.name) for s in report.sites if s.worst.get("rel_l2") is not None]
    worst = max(sites, default=(0.0, None))
    try:
        final_rel = report.site(final).worst.get("rel_l2")
    except KeyError:
        final_rel = None
    first = report.first_divergence
    if first is not None:
        first = f"{first['site']} ({first['metric']} {_num(first['value'])} over {_num(first['tolerance'])})"
    return {"verdict": report.verdict, "records_ref": n_ref, "records_cand": n_cand,
            "paired": report.totals.get("records"), "reference_only": len(report.unmatched["reference_only"]),
            "candidate_only": len(report.unmatched["candidate_only"]), "errors": len(report.errors),
            "error_example": report.errors[0]["error"] if report.errors else None,
            "max_rel_l2": worst[0], "max_rel_l2_site": worst[1], "final_rel_l2": final_rel,
            "first_divergence": first}


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _worst_text(c: dict) -> str:
    return f"max {c['max_rel_l2']:.2g} at {c['max_rel_l2_site']}" if c["max_rel_l2"] else "rel_l2 0 at every site"


def _pairs_one_to_one(c: dict) -> bool:
    return (c["reference_only"] == c["candidate_only"] == c["errors"] == 0
            and c["records_ref"] == c["records_cand"] == c["paired"])


def _pairing_text(c: dict) -> str:
    return (f"{c['paired']} paired of {c['records_ref']}/{c['records_cand']} records, {c['reference_only']} "
            f"reference-only, {c['candidate_only']} candidate-only, {c['errors']} uncomparable"
            + (f" (e.g. {c['error_example']})" if c["error_example"] else ""))


def check_compare(ctx: Context) -> Outcome:
    figures: dict = {}
    parts = []
    with _deterministic():
        for kind, folder, final in (("llama", ctx.llama_dir, ":out.logits"),
                                    ("bert", ctx.bert_dir, ":out.last_hidden_state")):
            dumps = {}  # the reference on the CPU; the candidates on the device under test (the CPU in a dry run)
            for role, device, dtype in (("ref", "cpu", "float32"), ("fp32", str(ctx.device), "float32"),
                                        ("bf16", str(ctx.device), "bfloat16")):
                backend = _torch_backend(ctx, folder, device, dtype)
                label = f"{torch.device(device).type}-{dtype.replace('float', 'fp').replace('bfloat', 'bf')}"
                dumps[role] = _capture(backend, ctx, f"compare-{kind}-{role}-{label}.h5")
                del backend
            fp32 = _compare(ctx, dumps["ref"], dumps["fp32"], final)
            bf16 = _compare(ctx, dumps["ref"], dumps["bf16"], final)
            figures[kind] = {"fp32": fp32, "bf16": bf16}
            expect(_pairs_one_to_one(fp32), f"{kind} cpu-fp32 vs {ctx.dev}-fp32: keys do not pair one to one: "
                                            f"{_pairing_text(fp32)}")
            expect(fp32["final_rel_l2"] is not None, f"{kind}: no {final} record compared")
            expect(fp32["final_rel_l2"] <= LOGITS_REL_L2_TORCH,
                   f"{kind} {final} rel_l2 {fp32['final_rel_l2']:.3g} > {LOGITS_REL_L2_TORCH:g} "
                   f"(first divergence {fp32['first_divergence']})")
            expect(_pairs_one_to_one(bf16), f"{kind} cpu-fp32 vs {ctx.dev}-bf16: keys do not pair one to one: "
                                            f"{_pairing_text(bf16)}")
            parts.append(f"{kind}: {fp32['paired']} pairs, fp32 {fp32['verdict']} ({final} rel_l2 "
                         f"{fp32['final_rel_l2']:.2g}, {_worst_text(fp32)}, first divergence "
                         f"{fp32['first_divergence'] or 'none'}); bf16 pairs one to one ({final} rel_l2 "
                         f"{_num(bf16['final_rel_l2'])})")
            _free(ctx.device)
    return Outcome("compare", "PASS", "; ".join(parts), figures=figures)


# -- d. ORT's CUDA execution provider -------------------------------------------------------------------------------

def _export_llama(ctx: Context, path: str) -> None:
    """The tiny Llama exported by the dynamo exporter with a plain (input_ids, attention_mask) -> logits signature
    (as tests/capture/onnx_fixtures.py exports it), static at SEQ tokens."""
    import transformers
    model = transformers.LlamaForCausalLM.from_pretrained(ctx.llama_dir, attn_implementation="eager").eval()
    cls_forward = type(model).forward

    def forward(self, input_ids, attention_mask):
        return cls_forward(self, input_ids=input_ids, attention_mask=attention_mask, use_cache=False)["logits"]
    model.forward = types.MethodType(forward, model)
    ids = torch.arange(5, 5 + SEQ).reshape(1, SEQ)
    chatter = io.StringIO()
    onnx_log = logging.getLogger("torch.onnx")  # "torchvision is not installed" warnings of the exporter
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (ids, torch.ones_like(ids)), path, dynamo=True,
                              input_names=["input_ids", "attention_mask"], output_names=["logits"], verbose=False)
    except Exception as exc:
        raise CheckFailed(f"torch.onnx.export(dynamo=True) failed: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''} "
                          f"(exporter output: ...{chatter.getvalue()[-500:]!r})") from exc
    finally:
        onnx_log.setLevel(level)


def check_ort(ctx: Context) -> Outcome:
    import onnxruntime as ort
    from capture.base import CaptureOptions
    from capture.onnx_backend import OnnxBackend
    from protocol import read_input_set
    providers = ort.get_available_providers()
    if ctx.dry_run:
        cand_ep = "cpu"  # the stand-in candidate of the dry run
    elif "CUDAExecutionProvider" in providers:
        cand_ep = "cuda"
    else:
        return Outcome("ort", "SKIP", f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
                                      f"{', '.join(providers)}): this is the CPU-only wheel; the onnxruntime-gpu "
                                      "package (installed instead of onnxruntime) provides it")
    folder = ctx.path("onnx-llama")
    os.makedirs(folder, exist_ok=True)
    model_path = os.path.join(folder, "model.onnx")
    t0 = time.perf_counter()
    _export_llama(ctx, model_path)
    export_s = time.perf_counter() - t0
    # ORT's CUDA EP computes float32 MatMul/Gemm in TF32 by default (provider option use_tf32, default 1, on
    # Ampere and newer): the parity criterion is taken with IEEE float32 (use_tf32=0); the default is measured too
    runs = [("cpu", "cpu", {})]
    if cand_ep == "cuda":
        gpu = {"device_id": str(ctx.device.index)}  # the device under test (ORT's default is GPU 0)
        runs += [("cuda", "cuda-ieee-fp32", {**gpu, "use_tf32": "0"}), ("cuda", "cuda-default-tf32", gpu)]
    else:
        runs += [("cpu", "cpu-again", {})]
    dumps = {}
    inputs = read_input_set(ctx.inputs_path)
    for ep, label, options in runs:
        out = ctx.path(f"ort-{label}.h5")
        OnnxBackend(model_path, ep=ep, provider_options=options).capture(inputs, out, CaptureOptions(label=label))
        dumps[label] = out
    c = _compare(ctx, dumps["cpu"], dumps[runs[1][1]], ":out.logits")
    figures = {"export_s": round(export_s, 2), "candidate_ep": cand_ep, "candidate": runs[1][1], **c}
    tf32 = ""
    if len(runs) > 2:
        d = _compare(ctx, dumps["cpu"], dumps[runs[2][1]], ":out.logits")
        figures["default_tf32"] = d
        tf32 = (f"; with ORT's default use_tf32=1: logits rel_l2 {_num(d['final_rel_l2'])}, "
                f"{'pairs one to one' if _pairs_one_to_one(d) else 'PAIRING BROKEN: ' + _pairing_text(d)} (info)")
    expect(_pairs_one_to_one(c), f"ORT cpu vs {cand_ep}: keys do not pair one to one: {_pairing_text(c)}")
    expect(c["final_rel_l2"] is not None, "no :out.logits record compared")
    expect(c["final_rel_l2"] < LOGITS_REL_L2_ORT, f"logits rel_l2 {c['final_rel_l2']:.3g} >= {LOGITS_REL_L2_ORT:g} "
                                                  f"(first divergence {c['first_divergence']})")
    stand_in = " (dry run: a second CPUExecutionProvider run stands in for CUDA)" if ctx.dry_run else \
        " (use_tf32=0)"
    detail = (f"dynamo export {export_s:.1f} s; ORT {cand_ep} vs cpu{stand_in}: {c['paired']} pairs one to one, "
              f"logits rel_l2 {c['final_rel_l2']:.2g} (< {LOGITS_REL_L2_ORT:g}), {_worst_text(c)}, verdict "
              f"{c['verdict']}{tf32}")
    return Outcome("ort", "PASS", detail, figures=figures)


# -- e. P1 and P2 on the device --------------------------------------------------------------------------------------

def check_overhead(ctx: Context) -> Outcome:
    """bench/capture_overhead.py's P1/P2, adapted to a device: its ``_bare``/``_captured`` take no device and do not
    synchronize (a CUDA forward returns before its kernels end), so the timed regions here are bracketed by
    ``torch.cuda.synchronize()``; its model builder and the raw-write baseline are reused."""
    from bench.capture_overhead import build_model
    from bench.protocol_io import raw_write
    from capture.policy import RecordPolicy
    from capture.sink import RecordSink
    from capture.torch_hooks import torch_capture
    from protocol import DumpWriter, Manifest, open_dump
    a = ctx.args
    dev = ctx.device
    model = build_model(a.layers, a.hidden, a.vocab).to(dev)
    ids = torch.randint(4, a.vocab, (1, a.seq), generator=torch.Generator().manual_seed(0)).to(dev)
    feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
    folder = ctx.path("overhead")
    os.makedirs(folder, exist_ok=True)
    counter = iter(range(1 << 30))

    def bare() -> float:
        _sync(dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(**feed)
        _sync(dev)
        return time.perf_counter() - t0

    def captured(default: str) -> tuple[float, str, int, int]:
        path = os.path.join(folder, f"{default}{next(counter)}.h5")
        _sync(dev)
        t0 = time.perf_counter()
        with RecordSink(DumpWriter(path, Manifest(label=default)), max_queue_bytes=256 << 20) as sink, \
                torch.no_grad(), torch_capture(model, sink, RecordPolicy(default=default)) as cap:
            cap.at(0)
            model(**feed)
        _sync(dev)  # the sink's close has waited for every copy's event already; this covers the rest
        return time.perf_counter() - t0, path, sink.records, sink.written_bytes

    bare()  # warm-up: allocator, kernels, cuBLAS
    os.unlink(captured("stats")[1])
    _, kept, _, _ = captured("full")
    with open_dump(kept) as dump:  # the very arrays of the dump, as stored: the raw write's bytes
        arrays = [np.ascontiguousarray(dump.read(r, raw=True)) for r in dump.records() if r.has_data]
    os.unlink(kept)
    raw_path = os.path.join(folder, "raw.h5")

    def raw() -> float:
        if os.path.exists(raw_path):
            os.unlink(raw_path)
        return raw_write(raw_path, arrays, "none")
    bares, stats_runs, full_runs, raws = [], [], [], []
    records = nbytes = stats_records = 0
    for _ in range(a.repeat):  # interleaved rounds: drift and disk writeback hit every variant alike
        bares.append(bare())
        s, path, stats_records, _ = captured("stats")
        stats_runs.append(s)
        os.unlink(path)
        f, path, records, nbytes = captured("full")
        full_runs.append(f)
        os.unlink(path)
        raws.append(raw())
    del arrays
    os.unlink(raw_path)
    b, s, f, r = (statistics.median(v) for v in (bares, stats_runs, full_runs, raws))
    p1, p2 = s / b, (f - b) / r
    figures = {"P1": round(p1, 3), "P2": round(p2, 3), "bare_s": round(b, 5), "stats_s": round(s, 5),
               "full_s": round(f, 5), "raw_write_s": round(r, 5), "best_P1": round(min(stats_runs) / min(bares), 3),
               "best_P2": round((min(full_runs) - min(bares)) / min(raws), 3), "rounds": a.repeat,
               "layers": a.layers, "hidden": a.hidden, "seq": a.seq, "vocab": a.vocab, "records": records,
               "stats_records": stats_records, "bytes": nbytes, "device": str(dev)}
    del model
    _free(dev)
    detail = (f"P1 {p1:.2f}x (target <= 1.3x: {s * 1e3:.1f} ms stats capture vs {b * 1e3:.1f} ms bare), "
              f"P2 {p2:.2f}x (target <= 1.4x: full {f * 1e3:.0f} ms - bare vs raw h5py {r * 1e3:.0f} ms of "
              f"{nbytes / 1e6:.0f} MB); medians of {a.repeat} rounds, Llama hidden {a.hidden} x {a.layers} layers, "
              f"seq {a.seq}, {stats_records} records")
    return Outcome("overhead", "INFO", detail, figures=figures)


def _free(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


CHECKS = {"copies": check_copies, "stats": check_stats, "compare": check_compare, "ort": check_ort,
          "overhead": check_overhead}


# -- running -------------------------------------------------------------------------------------------------------

def _on_alarm(signum, frame):
    raise OverBudget()


def run_check(ctx: Context, name: str, budget: float) -> Outcome:
    """One check under its budget (SIGALRM where the platform has it); any exception is a FAIL."""
    timer = hasattr(signal, "setitimer") and budget > 0
    if timer:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, budget)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ctx.caught = caught
            out = CHECKS[name](ctx)
    except OverBudget:
        out = Outcome(name, "FAIL", f"stopped at its budget of {budget:g} s")
    except CheckFailed as exc:
        out = Outcome(name, "FAIL", str(exc))
    except Exception as exc:  # a broken API or an unexpected error: a FAIL with where it happened
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        out = Outcome(name, "FAIL", f"{type(exc).__name__}: {text} ({os.path.basename(tb.filename)}:{tb.lineno})")
        traceback.print_exc(file=sys.stderr)
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        ctx.caught = []
    out.seconds = time.perf_counter() - t0
    return out


def describe(device: torch.device | None) -> tuple[list[str], dict]:
    """Lines saying what was found (device, versions, providers) and the same as a dict."""
    try:
        import onnxruntime as ort
        ort_version, providers = ort.__version__, ort.get_available_providers()
    except ImportError:
        ort_version, providers = None, []
    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "onnxruntime": ort_version, "ort_providers": providers,
            "genai": {d: _dist_version(d) for d in ("onnxruntime-genai", "onnxruntime-genai-cuda",
                                                    "onnxruntime-genai-directml")},
            "onnxruntime_dists": {d: _dist_version(d) for d in ("onnxruntime", "onnxruntime-gpu")}}
    lines = []
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(total / 2**30, 1),
                    free_gib=round(free / 2**30, 1), multiprocessors=getattr(props, "multi_processor_count", None),
                    device_count=torch.cuda.device_count())
        lines.append(f"device: {props.name} ({device}, {info['device_count']} visible), capability "
                     f"{info['capability']}, {info['memory_gib']} GiB ({info['free_gib']} free), "
                     f"{info['multiprocessors']} multiprocessors")
    elif device is not None:
        info.update(device="cpu (dry run)", threads=torch.get_num_threads(), cpu_count=os.cpu_count())
        lines.append(f"device: cpu (developer dry run: no accelerator path is exercised), {torch.get_num_threads()} "
                     f"torch threads on {os.cpu_count()} cores")
    if device is None:
        lines.append("device: none with CUDA (torch.cuda.is_available() is False)")
    lines.append(f"torch {info['torch']} (CUDA {info['torch_cuda'] or 'none: a CPU-only build'}, cuDNN "
                 f"{info['cudnn']}), onnxruntime {info['onnxruntime']} providers {info['ort_providers']}")
    genai = ", ".join(f"{d} {v}" for d, v in info["genai"].items() if v) or "none installed"
    lines.append(f"onnxruntime distributions: " + ", ".join(f"{d} {v}" for d, v in info["onnxruntime_dists"].items()
                                                           if v) + f"; ORT GenAI: {genai}")
    return lines, info


def setup(ctx: Context) -> None:
    """The tiny Llama and BERT (capture/tiny_models.py, no tokenizer: the inputs are token ids) and the input set."""
    from capture.tiny_models import build_tiny_bert, build_tiny_llama
    from protocol import InputSample, write_input_set
    ctx.llama_dir = build_tiny_llama(ctx.path("tiny-llama"), tokenizer=False)
    ctx.bert_dir = build_tiny_bert(ctx.path("tiny-bert"), tokenizer=False)
    rng = np.random.default_rng(0)
    samples = [InputSample({"input_ids": rng.integers(4, 1000, size=(1, SEQ), dtype=np.int64),
                            "attention_mask": np.ones((1, SEQ), dtype=np.int64)}) for _ in range(SAMPLES)]
    ctx.inputs_path = ctx.path("inputs.h5")
    write_input_set(ctx.inputs_path, samples, {"source": "bench.gpu_check"})


def cli(argv: list[str] | None = None) -> int:
    """Parse the options, run the checks; returns the exit code (0: no FAIL, or no CUDA device)."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda",
                   help="the device under test: cuda (default), cuda:N; 'cpu' is the developer DRY RUN (the same "
                        "checks on the CPU: logic and API calls, no accelerator path)")
    p.add_argument("--only", nargs="+", choices=list(CHECKS), help="run only these checks")
    p.add_argument("--layers", type=int, help="P1/P2 model layers (default 8; dry run 2)")
    p.add_argument("--hidden", type=int, help="P1/P2 model width (default 512; dry run 256)")
    p.add_argument("--seq", type=int, help="P1/P2 sequence length (default 512; dry run 128)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=5, help="P1/P2 interleaved rounds (median)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every check's time budget (0: no budgets), e.g. for a dry run on a busy machine")
    p.add_argument("--dir", help="where the scratch folder is made (default: the system's temporary folder); it "
                                 "is removed at the end unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (dumps, exported model)")
    a = p.parse_args(argv)
    # cuBLAS' deterministic mode needs a fixed workspace, read when CUDA creates its cuBLAS handle (later than here)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        dry_run = torch.device(a.device).type == "cpu"
    except (RuntimeError, ValueError) as exc:
        print(f"--device {a.device}: {exc}", file=sys.stderr)
        return 2
    if not dry_run and not torch.cuda.is_available():
        for line in describe(None)[0]:
            print(line)
        print("no CUDA device: nothing to check (exit 0)")
        return 0
    device = torch.device(a.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        try:
            torch.cuda.set_device(device)  # torch.Event.record() without a stream uses the current device's stream
        except (RuntimeError, AssertionError, ValueError) as exc:
            print(f"--device {a.device}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
            return 2
    elif not dry_run:
        print(f"--device {a.device}: only cuda[:N] or cpu (dry run) are checked here", file=sys.stderr)
        return 2
    small = dry_run
    a.layers = a.layers or (2 if small else 8)
    a.hidden = a.hidden or (256 if small else 512)
    a.seq = a.seq or (128 if small else 512)
    lines, info = describe(device)
    print("== tensorparity GPU check" + (" -- DRY RUN ON THE CPU (--device cpu): no accelerator path runs" if dry_run
                                        else ""))
    for line in lines:
        print(line)
    if a.dir:
        os.makedirs(a.dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tensorparity-gpu-check-", dir=a.dir)
    ctx = Context(device=device, dry_run=dry_run, work=work, args=a)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr
    t_all = time.perf_counter()
    outcomes: list[Outcome] = []
    try:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                setup(ctx)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            print(f"FAIL setup      {time.perf_counter() - t0:6.1f} s  {type(exc).__name__}: {exc}")
            return 1
        print(f"     setup      {time.perf_counter() - t0:6.1f} s  tiny Llama and BERT built, input set of "
              f"{SAMPLES} x {SEQ} tokens, scratch {work}", flush=True)
        for name in [n for n in CHECKS if not a.only or n in a.only]:  # in order: stats reads copies' dump
            out = run_check(ctx, name, BUDGETS[name] * a.budget_scale)
            outcomes.append(out)
            print(f"{out.status:<4} {name:<10} {out.seconds:6.1f} s  {out.detail}", flush=True)
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_all
    tally = {s: sum(o.status == s for o in outcomes) for s in ("PASS", "FAIL", "SKIP", "INFO")}
    print(f"== {tally['PASS']} PASS, {tally['FAIL']} FAIL, {tally['SKIP']} SKIP, {tally['INFO']} INFO in "
          f"{total:.0f} s (limit {TOTAL_LIMIT_S} s{', EXCEEDED' if total > TOTAL_LIMIT_S else ''})"
          + (" -- dry run on the CPU" if dry_run else ""), flush=True)
    if not dry_run or os.environ.get("BENCH_RESULTS"):
        from bench import record
        record(BENCH, "gpu_check" + ("_dry_run_cpu" if dry_run else ""), total, "s",
               extra={"found": info, "dry_run": dry_run, "exit_code": int(tally["FAIL"] > 0),
                      "checks": {o.name: {"status": o.status, "seconds": round(o.seconds, 2), "detail": o.detail,
                                          **o.figures} for o in outcomes}})
    else:
        print("dry run: no line appended to bench/results.jsonl (set BENCH_RESULTS to write one)")
    return 1 if tally["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
