"""Analysis on a Dask cluster (analyze/distributed.py, ``--scheduler``) against the local run, on loopback.

A real ``dask scheduler`` and ``dask worker`` processes (one thread each, under their nannies) on this machine;
figures are the best of interleaved rounds, the local run in the same rounds.

Figures:
- ``compare_local``: ``analyze.compare`` of one dump pair in this process (default 2 x 512 MiB of float32 in 32
  records per side, plus two logits records of 256 x 32,000 per side; reads from the page cache).
- ``compare_dask_1w`` / ``compare_dask_2w``: the same comparison with ``scheduler=`` an open client, on 1 then 2
  workers. ``overhead`` is 1 worker / local (what sending batches, opening the dumps on the worker and sending the
  results back cost); ``scaling`` is 1 worker / 2 workers (2 would be perfect; this machine has 2 cores, shared
  with the client and the scheduler).
- ``connect``: what ``parity compare --scheduler`` adds once per run: connecting, waiting for a worker, checking
  the workers' environment; ``import_distributed``: importing analyze/distributed.py (dask, distributed) in a
  fresh interpreter that has imported ``analyze`` (what the command adds before that).
- ``watch_local_1w`` / ``watch_local_2w`` / ``watch_dask_1w`` / ``watch_dask_2w``: ``Watcher(once=True).run()``
  (what ``parity watch --once`` does) on a run of ``--pairs`` candidates, with the local pool of 1 and 2 processes,
  then on the cluster with 1 and 2 workers (the reports written by the watcher process in both cases).

Run: ``python -m bench distributed_overhead`` or ``python -m bench.distributed_overhead --mb 256 --pairs 8``.
Environment overrides: BENCH_DIST_MB, BENCH_DIST_PAIRS, BENCH_DIST_REPEAT, BENCH_DIST_DIR.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import record
from protocol import DumpWriter, Manifest, RecordKey, SharedFolder
from protocol.jobs import Job, write_job

BENCH = "distributed_overhead"
DASK = os.path.join(os.path.dirname(sys.executable), "dask")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_pair(folder: str, total_mb: int, records: int = 32, run_id: str = "r", labels=("ref", "cand"),
               logits: bool = True) -> list:
    """Dumps (one per label) of ``records`` float32 tensors [rows, 4096], ``total_mb`` MiB each, and with
    ``logits`` two logits records [1, 256, 32000]; every label after the first adds noise."""
    rows = max(total_mb * (1 << 20) // records // 4 // 4096, 1)
    paths = []
    for n, label in enumerate(labels):
        noise = np.random.default_rng(100 + n)
        path = os.path.join(folder, f"{label}.h5")
        with DumpWriter(path, Manifest(run_id=run_id, label=label, inputs_sha256="cd" * 32)) as w:
            for i in range(records):
                x = np.random.default_rng(i).standard_normal((rows, 4096), dtype=np.float32)
                if n:
                    x += noise.standard_normal(x.shape, dtype=np.float32) * np.float32(1e-3)
                w.add(RecordKey(0, 0, f"model.layers.{i}:out"), x)
            for s in range(2 if logits else 0):
                lg = 3 * np.random.default_rng(1000 + s).standard_normal((1, 256, 32000), dtype=np.float32)
                if n:
                    lg += noise.standard_normal(lg.shape, dtype=np.float32) * np.float32(1e-2)
                w.add(RecordKey(s, 0, ":out.logits"), lg)
        paths.append(path)
    return paths


class Cluster:
    """A scheduler and workers as process groups of their own."""

    def __init__(self, folder: str):
        self.folder, self.procs, self.client = folder, [], None

    def _start(self, *args: str) -> None:
        log = open(os.path.join(self.folder, f"dask-{len(self.procs)}.log"), "ab")
        self.procs.append(subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, env=ENV,
                                           cwd=self.folder, start_new_session=True))
        log.close()

    def start_scheduler(self) -> str:
        from distributed import Client
        path = os.path.join(self.folder, "scheduler.json")
        self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", path)
        deadline = time.monotonic() + 60
        while not (os.path.exists(path) and os.path.getsize(path)):
            if time.monotonic() > deadline:
                raise RuntimeError("the scheduler did not start")
            time.sleep(0.1)
        time.sleep(0.1)
        with open(path, encoding="utf-8") as fh:
            self.address = json.load(fh)["address"]
        self.client = Client(self.address, timeout=30, set_as_default=False)
        return self.address

    def add_worker(self) -> None:
        n = len(self.client.nthreads())
        self._start("worker", self.address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1")
        self.client.wait_for_workers(n + 1, timeout=60)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for proc in reversed(self.procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    continue


def _import_seconds() -> float:
    """Best of 3: seconds to import analyze.distributed in a fresh interpreter after ``import analyze``."""
    code = ("import time, analyze\nt = time.perf_counter()\nimport analyze.distributed\n"
            "print(time.perf_counter() - t)")
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env=ENV).stdout) for _ in range(3))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _watch_run(root: str, pairs: int, mb: int) -> None:
    folder = SharedFolder(root).ensure_layout()
    labels = ["ref"] + [f"c{i}" for i in range(pairs)]
    write_job(folder, Job(run_id="w", model={"path": "models/none"}, backend="torch", inputs="cd" * 32,
                          labels=labels, reference="ref"))
    dump_dir = os.path.join(root, "dumps", "w")
    os.makedirs(dump_dir, exist_ok=True)
    write_pair(dump_dir, mb, records=16, run_id="w", labels=labels, logits=False)


def _watch_once(root: str, pairs: int, **settings) -> float:
    """Seconds for a watcher with ``settings`` to catch up on the run (its reports removed first)."""
    from analyze.watcher import Watcher, WatchSettings
    shutil.rmtree(os.path.join(root, "reports", "w"), ignore_errors=True)
    t = _timed(lambda: Watcher(WatchSettings(root=root, once=True, debounce=0.0, **settings)).run())
    done = [n for n in os.listdir(os.path.join(root, "reports", "w")) if n.endswith(".json")]
    if len(done) != pairs:
        raise RuntimeError(f"the watcher wrote {len(done)} of {pairs} reports")
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=int(os.environ.get("BENCH_DIST_MB", 512)))
    parser.add_argument("--pairs", type=int, default=int(os.environ.get("BENCH_DIST_PAIRS", 8)))
    parser.add_argument("--pair-mb", type=int, default=32, help="tensor data per dump of the watcher's run")
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_DIST_REPEAT", 3)))
    parser.add_argument("--dir", default=os.environ.get("BENCH_DIST_DIR"))
    args = parser.parse_args(argv or [])
    import analyze
    from analyze.distributed import ClusterSettings, check_workers, connect, wait_for_workers
    folder = tempfile.mkdtemp(prefix="bench-dist-", dir=args.dir)
    cluster = Cluster(folder)
    try:
        ref, cand = write_pair(folder, args.mb)
        root = os.path.join(folder, "shared")
        _watch_run(root, args.pairs, args.pair_mb)
        address = cluster.start_scheduler()
        extra = {"pair_bytes": os.path.getsize(ref) + os.path.getsize(cand), "watch_pairs": args.pairs,
                 "watch_pair_bytes": 2 * os.path.getsize(os.path.join(root, "dumps", "w", "ref.h5"))}
        local = {"compare": math.inf, "watch1": math.inf, "watch2": math.inf}
        dask = {}
        analyze.compare(ref, cand)  # the page cache and this process' compiled kernels
        for workers in (1, 2):
            cluster.add_worker()
            analyze.compare(ref, cand, scheduler=cluster.client)  # the new worker's compiled kernels
            _watch_once(root, args.pairs, scheduler=address)
            best = {"compare": math.inf, "watch": math.inf, "connect": math.inf}
            for _ in range(args.repeat):  # interleaved: the machine is shared and noisy
                local["compare"] = min(local["compare"], _timed(lambda: analyze.compare(ref, cand)))
                best["compare"] = min(best["compare"],
                                      _timed(lambda: analyze.compare(ref, cand, scheduler=cluster.client)))
                local[f"watch{workers}"] = min(local[f"watch{workers}"],
                                               _watch_once(root, args.pairs, workers=workers))
                best["watch"] = min(best["watch"], _watch_once(root, args.pairs, scheduler=address))

                def connect_once():
                    client = connect(ClusterSettings(address))
                    wait_for_workers(client, 60)
                    check_workers(client)
                    client.close()
                best["connect"] = min(best["connect"], _timed(connect_once))
            dask[workers] = best
        gb = extra["pair_bytes"] / 1e9
        record(BENCH, "compare_local", local["compare"], "s",
               extra={**extra, "gb_per_s": round(gb / local["compare"], 3)})
        for w in (1, 2):
            record(BENCH, f"compare_dask_{w}w", dask[w]["compare"], "s", baseline=local["compare"],
                   ratio=dask[w]["compare"] / local["compare"],
                   extra={**extra, "gb_per_s": round(gb / dask[w]["compare"], 3)})
        record(BENCH, "compare_scaling_1w_to_2w", dask[2]["compare"], "s", baseline=dask[1]["compare"],
               ratio=dask[1]["compare"] / dask[2]["compare"], extra=extra)
        record(BENCH, "connect", min(dask[1]["connect"], dask[2]["connect"]), "s", extra=extra)
        record(BENCH, "import_distributed", _import_seconds(), "s", extra=extra)
        for w in (1, 2):
            record(BENCH, f"watch_local_{w}w", local[f"watch{w}"], "s", extra=extra)
            record(BENCH, f"watch_dask_{w}w", dask[w]["watch"], "s", baseline=local[f"watch{w}"],
                   ratio=dask[w]["watch"] / local[f"watch{w}"], extra=extra)
        record(BENCH, "watch_dask_scaling_1w_to_2w", dask[2]["watch"], "s", baseline=dask[1]["watch"],
               ratio=dask[1]["watch"] / dask[2]["watch"], extra=extra)
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
