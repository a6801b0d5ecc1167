"""Watcher latency and catch-up (docs/PERFORMANCE.md P6).

Figures:
- ``latency_inotify`` / ``latency_polling``: a real ``parity watch`` process follows a shared folder; for each of
  ``--runs`` small runs whose reference is already in place, a candidate dump is renamed into place and the time
  until its JSON report exists is measured (one run at a time). Median over the runs. Target: <= 2 s median.
  Baseline: the same pair analysis called in this process (``analyze.watcher.analyze_pair``), so the ratio is the
  cost of detection, debounce, scheduling and the worker process.
- ``catchup_1000``: ``parity watch --once`` started on a folder holding ``--catchup`` finished runs (reference and
  candidate each) writes every report; ``restart_1000``: the same command again writes none (nothing re-analysed).
  Baseline: the in-process analysis time times the number of runs (one core, no watcher).

Run: ``python -m bench watch_latency`` or ``python -m bench.watch_latency --runs 20 --catchup 200``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench import record
from protocol import SharedFolder
from protocol.jobs import Job, write_job

BENCH = "watch_latency"
PARITY = os.path.join(os.path.dirname(sys.executable), "parity")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _small_dump(path: str, run_id: str, label: str, scale: float) -> None:
    import numpy as np

    from protocol import DumpWriter, Manifest, RecordKey
    rng, noise = np.random.default_rng(0), np.random.default_rng(1)
    with DumpWriter(path, Manifest(run_id=run_id, label=label, inputs_sha256="cd" * 32, dtype="float32")) as w:
        for i in range(4):
            x = rng.standard_normal((8, 64)).astype(np.float32)
            w.add(RecordKey(0, 0, f"model.layers.{i}:out", 0), x + scale * noise.standard_normal(x.shape))


def _make_run(folder: SharedFolder, run_id: str, *, candidate: bool) -> None:
    write_job(folder, Job(run_id=run_id, model={"path": "models/none"}, backend="torch", inputs="cd" * 32,
                          labels=["ref", "cand"], reference="ref"))
    os.makedirs(os.path.join(folder.root, "dumps", run_id), exist_ok=True)
    _small_dump(folder.dump_path(run_id, "ref"), run_id, "ref", 0.0)
    if candidate:
        _small_dump(folder.dump_path(run_id, "cand"), run_id, "cand", 1e-3)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the watcher exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


def in_process_analysis(work: str, runs: int) -> float:
    """Median seconds of one pair analysis called directly (no watcher, no worker process)."""
    from analyze.watcher import analyze_pair, plan_run
    folder = SharedFolder(os.path.join(work, "baseline")).ensure_layout()
    times = []
    for i in range(runs):
        _make_run(folder, f"b{i}", candidate=True)
        (task,) = plan_run(folder, f"b{i}")
        t0 = time.perf_counter()
        analyze_pair(folder.root, task)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:] or times)  # the first one pays the imports


def latency(work: str, runs: int, polling: bool, poll_interval: float) -> list[float]:
    """Seconds from a candidate's rename into place to its JSON report, for each run, with a live watcher."""
    folder = SharedFolder(os.path.join(work, "polling" if polling else "inotify")).ensure_layout()
    staging = os.path.join(work, "staging")
    os.makedirs(staging, exist_ok=True)
    for i in range(runs):
        _make_run(folder, f"r{i}", candidate=False)
    args = [PARITY, "watch", folder.root, "--debounce", "0.1"]
    if polling:
        args += ["--polling", "--poll-interval", str(poll_interval)]
    log = open(os.path.join(work, f"watch-{'polling' if polling else 'inotify'}.log"), "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        _wait_for(lambda: b"catching up" in open(log.name, "rb").read(), 60, "the watcher to start", proc)
        times = []
        for i in range(runs):
            staged = os.path.join(staging, f"cand{i}.h5")
            _small_dump(staged, f"r{i}", "cand", 1e-3)
            report = folder.pair_report_base(f"r{i}", "ref", "cand") + ".json"
            t0 = time.perf_counter()
            os.rename(staged, folder.dump_path(f"r{i}", "cand"))
            _wait_for(lambda: os.path.exists(report), 60, f"report {i}", proc)
            times.append(time.perf_counter() - t0)
        return times
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def catch_up(work: str, runs: int) -> tuple[float, float, int, int]:
    """Seconds for ``parity watch --once`` to report ``runs`` finished runs, then to restart and re-analyse none."""
    folder = SharedFolder(os.path.join(work, "catchup")).ensure_layout()
    template = os.path.join(work, "template")
    _make_run(SharedFolder(template).ensure_layout(), "t", candidate=True)
    for i in range(runs):  # copies of one run, renamed: same dumps, each its own run
        write_job(folder, Job(run_id=f"c{i}", model={"path": "models/none"}, backend="torch", inputs="cd" * 32,
                              labels=["ref", "cand"], reference="ref"))
        shutil.copytree(os.path.join(template, "dumps", "t"), os.path.join(folder.root, "dumps", f"c{i}"))
    timings, counts = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        out = subprocess.run([PARITY, "watch", folder.root, "--once", "--workers", "2"], capture_output=True,
                             text=True, env=ENV, timeout=3600)
        timings.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        counts.append(out.stderr.count(" vs ref: "))
    return timings[0], timings[1], counts[0], counts[1]


def main(argv: list[str] | None = None) -> None:
    """Measure and record the figures (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_WATCH_RUNS", 50)))
    parser.add_argument("--catchup", type=int, default=int(os.environ.get("BENCH_WATCH_CATCHUP", 1000)))
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-watch-")
    try:
        base = in_process_analysis(work, 10)
        record(BENCH, "analysis_in_process", base, "s", extra={"note": "baseline: one small pair, no watcher"})
        for polling in (False, True):
            times = latency(work, args.runs, polling, args.poll_interval)
            med = statistics.median(times)
            name = "latency_polling" if polling else "latency_inotify"
            record(BENCH, name, med, "s", baseline=base, ratio=med / base,
                   extra={"target_abs": "<=2 s median", "met": med <= 2.0, "runs": args.runs,
                          "p90": sorted(times)[int(0.9 * (len(times) - 1))], "max": max(times),
                          "poll_interval": args.poll_interval if polling else None})
            print(f"{'':>12} {name}: median {med:.3f} s (target <= 2 s: {'MET' if med <= 2.0 else 'MISSED'})")
        first, again, n_first, n_again = catch_up(work, args.catchup)
        record(BENCH, f"catchup_{args.catchup}", first, "s", baseline=base * args.catchup,
               ratio=first / (base * args.catchup), extra={"reports": n_first, "runs": args.catchup, "workers": 2})
        record(BENCH, f"restart_{args.catchup}", again, "s", extra={"reports": n_again, "runs": args.catchup,
                                                                    "reanalysed_none": n_again == 0})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
