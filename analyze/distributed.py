"""Analysis on an existing Dask cluster: ``parity compare --scheduler`` and ``parity watch --scheduler``.

docs/ARCHITECTURE.md section 7. Only paths and plain data cross the wire: a worker opens the dumps itself, by the
absolute paths this host sees (the shared folder mounted at the same point on every host), and sends back plain
results: the ``RecordResult`` and ``LogitRecordResult`` of a batch of record pairs, or a whole pair's outcome for
the watcher. This host merges them in the local run's order and writes every file itself, so a report is the local
run's (its timings aside), and the watcher's exactly-once publication (leases, the JSON moved into place last) is
the same as with its local pool.

- ``compare``: the record pairs of each rank are cut into contiguous batches of about equal cost (a few per worker
  thread); each batch is one task; the results are taken in batch order.
- ``watch``: each pair is one task (the pair's whole comparison, on one worker); the watcher publishes its outcome.
- A worker that dies mid-task: the scheduler gives the task to another worker (up to Dask's
  ``distributed.scheduler.allowed-failures``, then ``KilledWorker``). A task's result is taken once, so nothing is
  counted or published twice.

This module imports ``distributed`` at its top, so it is imported only when a scheduler is given (``import analyze``
never loads dask). It imports no other analysis stage: the functions that run on the workers are passed in
(pickled by reference), which keeps analyze/ free of import loops.
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import ctypes.util
import logging
import os
import platform
import threading
import time
import uuid
from dataclasses import dataclass

from distributed import Client, KilledWorker, get_worker
from distributed.client import FutureCancelledError
from distributed.comm.addressing import parse_address, parse_host_port

from protocol import open_dump, read_input_set

from .errors import ClusterError

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_WORKER_TIMEOUT = 60.0
#: Elements a record costs beyond its data (opening it, its index row, the per-record metric set-up).
RECORD_OVERHEAD = 1 << 16
_SCHEMES = ("tcp", "tls", "ws", "wss")


@dataclass(frozen=True)
class ClusterSettings:
    """Which cluster to use and how.

    Attributes:
        address: the scheduler's address (``tcp://HOST:PORT`` as ``dask scheduler`` prints it, or ``HOST:PORT``).
        connect_timeout: seconds to reach the scheduler before giving up.
        worker_timeout: ``compare`` only: seconds to wait for a first worker when none has joined yet.
        batches_per_thread: ``compare`` only: batches per worker thread (more balance the load better, each costs
            a task and an opening of both dumps).
        max_batch_elements: ``compare`` only: elements (both sides) above which a batch is cut anyway, so that a
            worker's death costs at most this much work again.
    """

    address: str
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT
    batches_per_thread: int = 3
    max_batch_elements: int = 1 << 28


def as_settings(scheduler) -> ClusterSettings:
    """``ClusterSettings`` from an address or settings."""
    return scheduler if isinstance(scheduler, ClusterSettings) else ClusterSettings(str(scheduler))


def connect(settings: ClusterSettings) -> Client:
    """A client of the scheduler at ``settings.address`` (not made dask's default client).

    Raises:
        ClusterError: the address is malformed or the scheduler does not answer within ``connect_timeout``.
    """
    address = settings.address.strip()
    try:
        scheme, location = parse_address(address)
        if scheme not in _SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}")
        parse_host_port(location)
    except ValueError as exc:
        raise ClusterError(f"{settings.address!r} is not a Dask scheduler address ({exc})", None,
                           "give tcp://HOST:PORT, the address 'dask scheduler' prints") from None
    try:
        return Client(address, timeout=settings.connect_timeout, set_as_default=False)
    except OSError as exc:  # refused, unreachable, or no answer in time (TimeoutError is an OSError)
        raise ClusterError(f"cannot reach the Dask scheduler at {address} ({exc})", None,
                           "start one ('dask scheduler', next to the shared folder) or check the address") from None


def wait_for_workers(client: Client, timeout: float) -> None:
    """Wait until at least one worker has joined.

    Raises:
        ClusterError: none joined within ``timeout`` seconds.
    """
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise ClusterError(f"no worker has joined the Dask scheduler at {client.scheduler.address} within "
                           f"{timeout:g} s", None, "start workers on the analysis hosts: dask worker ADDRESS") from None


def _environment_probe():
    """A function that reports what decides a worker's numbers. Made here as a closure, so that cloudpickle sends
    it by value: it runs (and reports) on a worker that cannot import tensorparity."""
    def facts() -> dict:
        import importlib.metadata as md

        def version(name):
            try:
                return md.version(name)
            except md.PackageNotFoundError:
                return None
        found = {"tensorparity": version("tensorparity"), "numpy": version("numpy"), "numba": version("numba"),
                 "cpu": None}
        if found["numba"]:
            try:  # the compiled sums are reassociated into vector lanes: their last digits follow the CPU
                import llvmlite.binding as llvm
                found["cpu"] = llvm.get_host_cpu_name()
            except Exception:
                pass
        return found
    return facts


def check_workers(client: Client) -> list[str]:
    """Check that the workers joined so far compute what this host computes.

    Returns:
        Warnings about workers whose numpy, numba or CPU differ from this host's (their numbers may then differ
        from a local run's in the last digits).

    Raises:
        ClusterError: a worker runs another tensorparity version, or none.
    """
    probe = _environment_probe()
    here = probe()
    warnings = []
    for worker, facts in sorted(client.run(probe, on_error="return").items()):
        if isinstance(facts, BaseException):
            raise ClusterError(f"the Dask worker {worker} cannot run the environment check ({facts})")
        if facts["tensorparity"] != here["tensorparity"]:
            raise ClusterError(f"the Dask worker {worker} runs tensorparity {facts['tensorparity'] or '(none)'}, "
                               f"this host {here['tensorparity']}", None,
                               "install the same tensorparity on every worker (pip install '.[fast,distributed]')")
        diffs = [f"{name} {facts[name] or '(none)'} (here {here[name] or '(none)'})"
                 for name in ("numpy", "numba", "cpu") if facts[name] != here[name]]
        if diffs:
            warnings.append(f"the Dask worker {worker} computes with {', '.join(diffs)}: its numbers may differ "
                            "from a local run's in the last digits")
    return warnings


# ---- compare: batches of record pairs ------------------------------------------------------------------------------

def measure_on_cluster(measure, work, ref, cand, inputset, *, scheduler, options: dict):
    """Measure the record pairs of every rank on a Dask cluster; yields what the local loop yields, in its order.

    Args:
        measure: the function that measures one record pair on a worker (``analyze.compare.measure_pair``).
        work: per rank, in rank order: ``(pairing, logit_flags)``, a flag per record pair (a logits record).
        ref, cand: the open sides (``pairing.DumpSide``); only their paths and fingerprints are sent.
        inputset: the input set (its path is sent), or None.
        scheduler: an address, ``ClusterSettings``, or a ``distributed.Client`` (left open).
        options: keyword arguments of ``measure`` (atol, rtol, table, topk, chunk_elements).

    Yields:
        ``(pairing, ri, ci, RecordResult, LogitRecordResult | None)`` per record pair.

    Raises:
        ClusterError: the scheduler cannot be reached, no worker joined, a worker does not see a file, or the
            workers running a batch kept dying.
    """
    owned = not isinstance(scheduler, Client)
    settings = as_settings(scheduler) if owned else ClusterSettings(scheduler.scheduler.address)
    client = connect(settings) if owned else scheduler
    futures = []
    try:
        wait_for_workers(client, settings.worker_timeout)
        if owned:  # a client passed in is its owner's to check
            for warning in check_workers(client):
                log.warning("%s", warning)
        threads = max(1, sum(client.nthreads().values()))
        costs = [[_cost(ri, ci, flag) for (ri, ci), flag in zip(p.pairs, flags)] for p, flags in work]
        target = max(1, min(settings.max_batch_elements,
                            sum(map(sum, costs)) // (settings.batches_per_thread * threads)))
        inputs = _inputs_spec(inputset)
        version = _tensorparity_version()
        token = uuid.uuid4().hex[:12]
        plan = []
        for (p, flags), rd, cd, rank_costs in zip(work, ref.readers, cand.readers, costs):
            for part in _cut(rank_costs, target):
                logits = any(flags[part])
                plan.append((p, part))
                futures.append(client.submit(
                    _measure_batch, measure, version, _dump_spec(rd), _dump_spec(cd), p.rank, p.pairs[part],
                    flags[part], inputs if logits else None, options, key=f"parity-records-{token}-{len(futures)}",
                    pure=False))
        for (p, part), future in zip(plan, futures):
            for (ri, ci), (rec, logit) in zip(p.pairs[part], _result(future, "a batch of records")):
                yield p, ri, ci, rec, logit
    finally:
        unfinished = [f for f in futures if not f.done()]
        if unfinished:
            client.cancel(unfinished)
        if owned:
            client.close()


def _cost(ri, ci, logit: bool) -> int:
    data = (ri.numel if ri.has_data else 0) + (ci.numel if ci.has_data else 0)
    return RECORD_OVERHEAD + data * (2 if logit else 1)  # the logit metrics cost about twice the tensor metrics


def _cut(costs: list[int], target: int) -> list[slice]:
    """Contiguous slices of about ``target`` cost each (a record is never split)."""
    parts, start, acc = [], 0, 0
    for i, c in enumerate(costs):
        acc += c
        if acc >= target:
            parts.append(slice(start, i + 1))
            start, acc = i + 1, 0
    if start < len(costs):
        parts.append(slice(start, len(costs)))
    return parts


def _dump_spec(reader) -> tuple:
    """What a worker needs to open a dump and to know it opened the same one: path, size, label, created."""
    path = os.path.abspath(reader.path)
    return path, os.path.getsize(path), reader.manifest.label, reader.manifest.created


def _inputs_spec(inputset):
    if inputset is None:
        return None
    if inputset.path is None:
        return inputset  # an input set held only in memory travels whole
    path = os.path.abspath(inputset.path)
    return path, os.path.getsize(path)


def _result(future, what: str):
    try:
        return future.result()
    except KilledWorker as exc:
        raise ClusterError(f"{what} was lost: every worker that ran it died ({exc})", None,
                           "look at the workers' logs (a memory limit, a crash)") from None
    except FutureCancelledError:  # the client lost the scheduler (stopped, restarted, unreachable) and gave up
        raise ClusterError(f"{what} was lost with the connection to the Dask scheduler", None,
                           "check that the scheduler is running, then run again") from None


def _worker_name() -> str:
    try:
        return f"Dask worker {get_worker().address}"
    except ValueError:  # called outside a worker (tests, a local client)
        return f"process {os.getpid()}"


def _tensorparity_version() -> str | None:
    """The tensorparity installed in this process (None when it runs from a tree that is not installed)."""
    import importlib.metadata as md
    try:
        return md.version("tensorparity")
    except md.PackageNotFoundError:
        return None


def _same_tensorparity(expected: str | None) -> None:
    """On a worker, before any work: refuse to compute with another tensorparity than the client's. The client
    checks the workers present when it connects; this catches one that joined later (or was restarted on a host
    upgraded in between)."""
    found = _tensorparity_version()
    if found != expected:
        raise ClusterError(f"the {_worker_name()} runs tensorparity {found or '(none)'}, the client "
                           f"{expected or '(none)'}", None,
                           "install the same tensorparity on every worker (pip install '.[fast,distributed]')")


def _visible(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise ClusterError(f"the {_worker_name()} does not see this {what}", path,
                           "mount the shared folder at the same path on every host")


_READERS = threading.local()  # per worker thread: the dumps it has open (a DumpReader is not shared by threads)
_READERS_KEPT = 4  # two comparisons' worth of dumps: opening one costs its index, tens of ms, once per thread


def _open_checked(spec: tuple):
    """The dump of ``spec``, opened once per worker thread and kept for the next batches of the comparison (dumps
    are never rewritten; a file replaced at that path has another size or manifest, hence another spec)."""
    cache = getattr(_READERS, "open", None)
    if cache is None:
        cache = _READERS.open = {}
    reader = cache.pop(spec, None)
    path, size, label, created = spec
    if reader is None:
        _visible(path, "dump")
        reader = open_dump(path)
        m = reader.manifest
        if os.path.getsize(path) != size or m.label != label or m.created != created:
            reader.close()
            raise ClusterError(f"the {_worker_name()} sees another file at this path", path,
                               "mount the same shared folder at the same path on every host")
    cache[spec] = reader  # most recently used last
    while len(cache) > _READERS_KEPT:
        cache.pop(next(iter(cache))).close()
    return reader


_INPUT_SETS: dict = {}  # (path, size, mtime) -> InputSet: one read per worker process, not per batch
_INPUT_SETS_LOCK = threading.Lock()


def _input_set(spec):
    if spec is None or not isinstance(spec, tuple):
        return spec
    path, size = spec
    _visible(path, "input set")
    key = (path, size, os.stat(path).st_mtime_ns)
    with _INPUT_SETS_LOCK:
        found = _INPUT_SETS.get(key)
    if found is None:
        found = read_input_set(path)
        with _INPUT_SETS_LOCK:
            if len(_INPUT_SETS) >= 4:
                _INPUT_SETS.clear()
            _INPUT_SETS[key] = found
    return found


_MALLOC_TUNED = False


def _keep_freed_blocks() -> None:
    """Once per worker process: let glibc's malloc keep the freed blocks of the streamed metrics for reuse.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes the mmap threshold at
    128 KiB: every block buffer and float64 tile is then mapped afresh and page-faulted in, which made a comparison
    on a worker take twice as long as the same one run here (BENCHMARKS.md). The thresholds set here (blocks up to
    64 MiB come from the heap; freed memory past 256 MiB is still returned) keep it at the local speed.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc after all: its own defaults stay
        pass


def _measure_batch(measure, version, ref_spec, cand_spec, rank, pairs, flags, inputs_spec, options) -> list:
    """On a worker: measure a batch of record pairs of one rank, opening both dumps by path (``version``: the
    client's tensorparity, which the worker must run too)."""
    _same_tensorparity(version)
    _keep_freed_blocks()
    inputset = _input_set(inputs_spec)
    rd, cd = _open_checked(ref_spec), _open_checked(cand_spec)
    return [measure(rd, cd, ri, ci, rank=rank, logit=flag, inputset=inputset, **options)
            for (ri, ci), flag in zip(pairs, flags)]


# ---- watch: one task per pair ---------------------------------------------------------------------------------------

def _compute_on_worker(compute, version, root: str, task):
    """On a worker: one pair's whole analysis (``compute(task)``), once the shared folder is seen to be there and
    the worker found to run the client's tensorparity (``version``)."""
    _same_tensorparity(version)
    _visible(root, "shared folder")
    _keep_freed_blocks()
    return compute(task)


class ClusterPairPool:
    """The watcher's pool on a Dask cluster, in place of its local process pool.

    ``submit(root, task)`` runs ``compute(task)`` on a worker, then ``publish(root, task, outcome)`` in this
    process (in a small thread pool, never in Dask's callback thread), and returns a ``concurrent.futures.Future``
    of what ``publish`` returns. A task the cluster could not finish (its workers kept dying, the scheduler dropped
    it, a worker does not see the folder) fails with ``ClusterError``.

    Args:
        settings: the cluster.
        compute: ``compute(task) -> outcome``, run on a worker (pickled by reference).
        publish: ``publish(root, task, outcome) -> dict``, run here.
        publishers: threads that publish outcomes.

    Raises:
        ClusterError: the scheduler cannot be reached, or a worker runs another tensorparity.
    """

    def __init__(self, settings: ClusterSettings, compute, publish, *, publishers: int = 2):
        self.settings = settings
        self.client = connect(settings)
        try:
            self.warnings = check_workers(self.client)
        except BaseException:
            self.client.close()
            raise
        self._compute, self._publish = compute, publish
        self._version = _tensorparity_version()  # what each task checks its worker runs
        self._local = cf.ThreadPoolExecutor(publishers, thread_name_prefix="parity-publish")
        self._lock = threading.Lock()
        self._tasks: dict[str, tuple] = {}  # dask key -> (dask future, our future)
        self._closed = False
        self._threads, self._threads_at = 0, -1e9

    def capacity(self) -> int:
        """The cluster's worker threads (at least 1), asked of the scheduler at most every 5 seconds."""
        now = time.monotonic()
        if now - self._threads_at > 5.0:
            try:
                self._threads = sum(self.client.nthreads().values())
            except OSError:  # the scheduler is away for a moment: keep the last count
                pass
            self._threads_at = now
        return max(1, self._threads)

    def submit(self, root: str, task) -> cf.Future:
        """Analyse one pair on the cluster, publish it here; a future of ``publish``'s result."""
        result: cf.Future = cf.Future()
        key = f"parity-pair-{uuid.uuid4().hex}"
        with self._lock:
            if self._closed:
                raise RuntimeError("the cluster pool is shut down")
            remote = self.client.submit(_compute_on_worker, self._compute, self._version, root, task, key=key,
                                        pure=False)
            self._tasks[key] = (remote, result, root, task)
        remote.add_done_callback(self._landed)
        return result

    def _landed(self, remote) -> None:
        with self._lock:  # under the lock: shutdown either sees this entry or the work already queued
            entry = self._tasks.pop(remote.key, None)
            if entry is not None and not self._closed:
                self._local.submit(self._finish, *entry)

    def _finish(self, remote, result: cf.Future, root: str, task) -> None:
        if not result.set_running_or_notify_cancel():
            return
        try:
            outcome = _result(remote, "the pair's analysis")
            result.set_result(self._publish(root, task, outcome))
        except BaseException as exc:  # the analysis' own error (a bug keeps its remote traceback) or ClusterError
            result.set_exception(exc)

    def shutdown(self, wait: bool = True, cancel_futures: bool = True) -> None:
        """Stop: analyses still on the cluster are cancelled (their pairs stay without a report, for a restart);
        outcomes already back are published first when ``wait``."""
        with self._lock:
            self._closed = True
            pending = list(self._tasks.values())
            self._tasks.clear()
        for _remote, result, _root, _task in pending:
            result.cancel()
        if pending:
            try:
                self.client.cancel([remote for remote, *_ in pending])
            except Exception:  # the scheduler is gone: nothing left to cancel there
                pass
        self._local.shutdown(wait=wait, cancel_futures=not wait)
        self.client.close()
