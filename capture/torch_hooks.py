"""Forward pre/post hooks on a module tree that turn every input and output tensor into a dump record.

``torch_capture(model, sink, policy)`` installs the hooks for the duration of a ``with`` block (removed in a
``finally``, even when the forward raises). Keys are ``s<sample>/t<step>/<module path>:in|out[.<arg path>]#<call>``;
the caller moves the position with ``cap.at(sample, step)``. Each tensor is handled by the policy rule of its site:

- ``stats``: statistics with torch on the tensor's device; only the numbers move.
- ``full`` / ``slice`` / ``topk``: during a CPU forward with a torch thread on every core, the hook writes the
  (reduced) tensor to the dump itself, before returning (``RecordSink.write_inline``: no copy, and the writer thread
  does not compete with torch's threads). Otherwise the hook copies it (on CPU, a single-threaded numpy copy into a
  pooled buffer; on an accelerator, a non-blocking copy into pinned memory plus an event) and queues it; the writer
  thread waits for the event and converts to numpy. bfloat16 and fp8 go to the dump as their bit patterns. The
  statistics of a full record of a CPU tensor are computed by the DumpWriter from the data it writes (the same
  numbers), on a helper thread while the data is written; a reduced record needs the whole tensor's statistics, so
  its hook computes them.
- ``skip``: nothing.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from protocol import DumpWriter, RecordKey

from .call_structure import class_name, encode_call
from .flatten import flatten, is_cache_object
from .policy import RecordPolicy, Rule, applicable
from .sink import PendingRecord, RecordSink, Resolved
from .torch_buffers import HostBufferPool
from .torch_stats import torch_stats

_STATS_RECORD_BYTES = 128  # what a statistics-only record weighs in the writer's queue
_BIT_PATTERN_VIEW = {torch.bfloat16: (torch.int16, np.uint16)}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
    if hasattr(torch, _name):
        _BIT_PATTERN_VIEW[getattr(torch, _name)] = (torch.uint8, np.uint8)
_UNSUPPORTED = {torch.complex64, torch.complex128}


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def logical_dtype(dtype: torch.dtype) -> str:
    """The protocol's logical dtype name of a torch dtype (``torch.bfloat16`` -> ``bfloat16``)."""
    return str(dtype).replace("torch.", "")


@dataclass
class ModuleSelection:
    """Which modules get hooks.

    Attributes:
        include: a regex searched in the module path; only matching modules are hooked (None: all).
        exclude: a regex; matching modules are not hooked.
        module_types: class names to hook (None: all).
        max_depth: hook modules at most this deep (the root is 0, ``model`` 1, ``model.layers`` 2...).
        include_cache: also record key/value caches found in inputs and outputs.
    """

    include: str | None = None
    exclude: str | None = None
    module_types: tuple[str, ...] | None = None
    max_depth: int | None = None
    include_cache: bool = False

    def __post_init__(self):
        try:
            self._include = re.compile(self.include) if self.include else None
            self._exclude = re.compile(self.exclude) if self.exclude else None
        except re.error as exc:
            raise ValueError(f"invalid module regex: {exc}") from None

    def selects(self, path: str, module: torch.nn.Module) -> bool:
        """True when the module at ``path`` should be hooked."""
        if self._include is not None and not self._include.search(path):
            return False
        if self._exclude is not None and self._exclude.search(path):
            return False
        if self.module_types and type(module).__name__ not in self.module_types:
            return False
        depth = 0 if path == "" else path.count(".") + 1
        return self.max_depth is None or depth <= self.max_depth

    def to_dict(self) -> dict:
        """JSON form, for the manifest."""
        return {"include": self.include, "exclude": self.exclude,
                "module_types": list(self.module_types) if self.module_types else None,
                "max_depth": self.max_depth, "include_cache": self.include_cache}


@dataclass
class TorchCapture:
    """The live state of installed hooks: the current (sample, step), per-module call counters, what was seen.

    Use ``at(sample, step)`` before each forward; ``records`` counts the records queued so far.
    """

    sink: RecordSink
    policy: RecordPolicy
    selection: ModuleSelection
    sample: int = 0
    step: int = 0
    records: int = 0
    enabled: bool = True
    share_unchanged: bool = False
    _calls: dict = field(default_factory=dict)
    _open: dict = field(default_factory=dict)
    _seen: dict = field(default_factory=dict)
    _pool: HostBufferPool | None = None
    _cache_fresh: bool = True  # the step's root call received no cache holding earlier positions
    _root_seen: bool = False  # the root's pre-hook ran in this step

    def at(self, sample: int, step: int = 0) -> None:
        """Set the position of the next forward; resets call indices (they count calls within one step)."""
        self.sample, self.step = int(sample), int(step)
        self._calls.clear()
        self._open.clear()
        self._seen.clear()
        self._cache_fresh, self._root_seen = True, False

    # -- hooks -----------------------------------------------------------------------------------------------------

    def _pre_hook(self, path: str, module, args, kwargs) -> None:
        call = self._calls.get(path, 0)
        self._calls[path] = call + 1
        self._open.setdefault(path, []).append(call)
        if not self.enabled:
            return
        if path == "" and call == 0:
            self._root_seen = True
            self._cache_fresh = not any(_cache_length(v) for v in (*args, *kwargs.values()))
        # how the module was called, for a replay (protocol/calls.py): the tensors by their record paths
        signature = encode_call(args, kwargs, _is_tensor, cache_fresh=self._fresh)
        self.sink.call_log.add(path, class_name(module), self.sample, self.step, call, signature)
        mtype = type(module).__name__
        inc = self.selection.include_cache
        for arg, t in flatten(args, _is_tensor, "args", include_cache=inc):
            self._record(f"{path}:in.{arg}", call, t, mtype)
        for arg, t in flatten(kwargs, _is_tensor, "kwargs", include_cache=inc):
            self._record(f"{path}:in.{arg}", call, t, mtype)

    def _post_hook(self, path: str, module, args, kwargs, output) -> None:
        stack = self._open.get(path)
        call = stack.pop() if stack else max(self._calls.get(path, 1) - 1, 0)
        if not self.enabled:
            return
        mtype = type(module).__name__
        for arg, t in flatten(output, _is_tensor, "", include_cache=self.selection.include_cache):
            self._record(f"{path}:out.{arg}" if arg else f"{path}:out", call, t, mtype)

    def _fresh(self, cache) -> bool:
        # fresh: the root call of this step got no cache with earlier positions (a forward, a prefill); when the
        # root is not hooked, a cache that is still empty
        return self._cache_fresh if self._root_seen else _cache_length(cache) == 0

    # -- records ---------------------------------------------------------------------------------------------------

    def _record(self, site: str, call: int, t: torch.Tensor, module_type: str) -> None:
        rule = self.policy.decide(site)
        if rule.action == "skip" or t.dtype in _UNSUPPORTED or t.is_meta:
            return
        key = RecordKey(self.sample, self.step, site, call)
        dtype = logical_dtype(t.dtype)
        shape = tuple(t.shape)
        rule = applicable(rule, shape, t.dtype == torch.bool)
        seen = self._lookup(t)
        if rule.action != "stats":
            data, aux = _reduce(t.detach(), rule)
            nbytes = data.numel() * data.element_size() + (aux.numel() * aux.element_size() if aux is not None else 0)
            if self.sink.reserve(nbytes):
                stats = seen.stats if seen is not None else None
                if stats is None and not (rule.action == "full" and t.device.type == "cpu"):
                    stats = torch_stats(t)  # else None: the writer computes them from the data it writes
                shared = seen.resolve() if rule.action == "full" and seen is not None and seen.resolve else None
                # the very tensor was copied already and that copy still waits in the queue: share it
                resolve = shared or _copy_for_writer(data, aux, stats, self._pool, self.sink.writes_inline)
                self._remember(t, seen, stats, resolve if rule.action == "full" else None)
                self.sink.put(PendingRecord(key, dtype, shape, rule.action, nbytes, resolve, module_type,
                                            rule.reduction()))
                self.records += 1
                return
        stats = seen.stats if seen is not None and seen.stats is not None else torch_stats(t)
        self._remember(t, seen, stats, None)
        self.sink.put(PendingRecord(key, dtype, shape, "stats", _STATS_RECORD_BYTES, lambda: Resolved(stats),
                                    module_type))
        self.records += 1

    # -- one tensor, several sites ---------------------------------------------------------------------------------
    # A module's output is usually the next module's input (and q/k/v projections share one input): the same tensor
    # object reaches several sites. With ``share_unchanged``, its statistics (and full copy) are computed once per
    # step while it looks unchanged: same object (a weak reference, so nothing is kept alive) and same autograd
    # version counter. Off by default: writes that bypass the version counter (torch.distributed collectives,
    # custom kernels, ``.data``) would go unnoticed. Inference tensors have no version counter: never shared.

    def _lookup(self, t: torch.Tensor) -> "_Seen | None":
        if not self.share_unchanged:
            return None
        entry = self._seen.get(id(t))
        if entry is None or entry.ref() is not t or t.is_inference() or entry.version != t._version:
            return None
        return entry

    def _remember(self, t: torch.Tensor, seen: "_Seen | None", stats, resolve) -> None:
        if not self.share_unchanged or t.is_inference():
            return
        # the copy is held weakly: it lives while a queued record needs it, so sharing never holds extra memory
        if seen is None:
            self._seen[id(t)] = _Seen(weakref.ref(t), t._version, stats, weakref.ref(resolve) if resolve else None)
            return
        if seen.stats is None:
            seen.stats = stats
        if resolve is not None and (seen.resolve is None or seen.resolve() is None):
            seen.resolve = weakref.ref(resolve)


@dataclass
class _Seen:
    """What is known of a tensor already recorded in this step."""

    ref: weakref.ref
    version: int
    stats: object  # None while the writer has yet to compute them from the shared copy
    resolve: weakref.ref | None = None


def _cache_length(obj) -> int:
    """How many positions a key/value cache object holds (0 for anything that is not one)."""
    if not is_cache_object(obj):
        return 0
    try:
        return int(obj.get_seq_length())
    except Exception:  # a cache type without the method, or one that cannot tell: assume it holds something
        return 1


def _reduce(t: torch.Tensor, rule: Rule) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The part of ``t`` a rule keeps: all of it, a slice along a dim, or the top-k along the last dim."""
    if rule.action == "slice":  # rules reach here through policy.applicable: the dim exists
        dim = rule.params["dim"]
        return t[(slice(None),) * (dim % t.dim()) + (slice(rule.params["start"], rule.params["stop"]),)], None
    if rule.action == "topk":
        k = min(int(rule.params["k"]), t.shape[-1])
        values, indices = torch.topk(t, k, dim=-1)
        return values, indices
    return t, None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A host tensor as numpy; bfloat16/fp8 as their bit patterns (the record's dtype names the logical type)."""
    view = _BIT_PATTERN_VIEW.get(t.dtype)
    if view is not None:
        return t.view(view[0]).numpy().view(view[1])
    return t.numpy()


def _host_copy(data: torch.Tensor, pool: HostBufferPool) -> torch.Tensor:
    """A CPU tensor's copy in a pooled buffer, made by numpy: one thread, GIL released. torch's ``copy_`` splits a
    large copy over its OpenMP team, and on a busy machine waiting for that team costs ~10x the copy itself."""
    host = pool.empty_like(data)
    if data.is_conj() or data.is_neg() or data.numel() == 0:
        return host.copy_(data)
    np.copyto(_to_numpy(host), _to_numpy(data), casting="no")
    return host


def _copy_for_writer(data: torch.Tensor, aux: torch.Tensor | None, stats, pool: HostBufferPool, inline: bool):
    """Copy now (the tensor may be changed in place after the hook returns); convert later on the writer thread.
    A CPU tensor written inline (before the hook returns) needs no copy."""
    if data.device.type == "cpu" and inline:
        data, aux = data.resolve_neg(), aux.resolve_neg() if aux is not None else None  # .numpy() refuses the neg bit
        return lambda: Resolved(stats, _to_numpy(data), _to_numpy(aux) if aux is not None else None)
    if data.device.type == "cpu":
        # a top-k result is already a fresh tensor; anything else may be a view that the model changes later
        host = data if aux is not None else _host_copy(data, pool)
        host_aux = aux
        return lambda: Resolved(stats, _to_numpy(host), _to_numpy(host_aux) if host_aux is not None else None)
    host = pool.empty_like(data)
    host.copy_(data, non_blocking=True)
    host_aux = None
    if aux is not None:
        host_aux = pool.empty_like(aux)
        host_aux.copy_(aux, non_blocking=True)
    event = torch.Event(device=data.device) if hasattr(torch, "Event") else None
    if event is not None:
        # on the stream of the tensor's own device, where its copy was queued: a bare record() would use the
        # current device's stream, and for a model on cuda:1 (or spread by a device_map) the writer could read
        # the buffer before its copy lands
        event.record(torch.accelerator.current_stream(data.device))

    def resolve() -> Resolved:
        if event is not None:
            event.synchronize()
        else:
            torch.accelerator.synchronize()
        return Resolved(stats, _to_numpy(host), _to_numpy(host_aux) if host_aux is not None else None)
    return resolve


def _forward_fills_cores(model: torch.nn.Module) -> bool:
    """True when the model runs on the CPU with a torch thread on every core this process may use: then a writer
    thread would preempt one of those threads in every parallel region, so the hooks write inline (capture/sink.py)."""
    first = next(iter(model.parameters()), None)
    if first is not None and first.device.type != "cpu":
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return torch.get_num_threads() >= cores


def _inline_switches(sink: RecordSink) -> tuple:
    """A root pre-hook and post-hook that make the sink write inline from the outermost forward's start to its end
    (or error). The post-hook goes after the capture's own, so the root's outputs are written inline too."""
    depth = [0]

    def enter(module, args):
        depth[0] += 1
        if depth[0] == 1:
            sink.write_inline(True)

    def leave(module, args, output):
        depth[0] = max(depth[0] - 1, 0)
        if depth[0] == 0:
            sink.write_inline(False)
    return enter, leave


@contextlib.contextmanager
def torch_capture(model: torch.nn.Module, sink: RecordSink | DumpWriter, policy: RecordPolicy | None = None, *,
                  selection: ModuleSelection | None = None, sample: int = 0, step: int = 0,
                  max_queue_bytes: int = 256 << 20, share_unchanged: bool = False) -> Iterator[TorchCapture]:
    """Hook every selected module of ``model`` (the root included) for the duration of the block.

    Args:
        model: the module tree.
        sink: a RecordSink (owned by the caller), or a DumpWriter: then a sink is made for it, and the dump is
            finished when the block exits normally (aborted, leaving no file, when it raises).
        policy: what to keep of each site (default: every tensor in full).
        selection: which modules to hook (default: all).
        sample, step: the initial position; move it with ``cap.at(sample, step)`` before each forward.
        max_queue_bytes: queue bound of the sink made for a DumpWriter.
        share_unchanged: compute a tensor's statistics and copy once when it reaches several sites unchanged by
            its version counter (faster; unsafe when the model writes tensors behind autograd's back, e.g. with
            torch.distributed collectives in place).

    Yields:
        The TorchCapture holding the position and counters.

    Example:
        >>> with torch_capture(model, DumpWriter("x.h5", manifest)) as cap:  # doctest: +SKIP
        ...     for i, batch in enumerate(batches):
        ...         cap.at(sample=i)
        ...         model(**batch)
    """
    policy = policy or RecordPolicy()
    selection = selection or ModuleSelection()
    owns_sink = isinstance(sink, DumpWriter)
    real_sink = RecordSink(sink, max_queue_bytes=max_queue_bytes, byte_budget=policy.byte_budget) if owns_sink \
        else sink
    # page-locked staging only where a non-blocking device copy can use it: a CUDA model (pinning for a CPU capture
    # would create a CUDA context and lock host memory for nothing)
    pinned = torch.cuda.is_available() and any(p.is_cuda for p in itertools.islice(model.parameters(), 1))
    cap = TorchCapture(real_sink, policy, selection, sample, step, share_unchanged=share_unchanged,
                       _pool=HostBufferPool(real_sink.max_queue_bytes, pinned=pinned))
    handles = []
    try:
        inline = _inline_switches(real_sink) if _forward_fills_cores(model) else None
        if inline:
            handles.append(model.register_forward_pre_hook(inline[0], prepend=True))
        for path, module in model.named_modules():
            if not selection.selects(path, module):
                continue
            handles.append(module.register_forward_pre_hook(
                lambda m, a, kw, _p=path: cap._pre_hook(_p, m, a, kw), with_kwargs=True))
            handles.append(module.register_forward_hook(
                lambda m, a, kw, o, _p=path: cap._post_hook(_p, m, a, kw, o), with_kwargs=True))
        if inline:
            handles.append(model.register_forward_hook(inline[1], always_call=True))
        yield cap
    except BaseException:
        if owns_sink:
            real_sink.abort()
        raise
    else:
        if owns_sink:
            real_sink.close()
    finally:
        for handle in handles:
            handle.remove()
        real_sink.write_inline(False)
