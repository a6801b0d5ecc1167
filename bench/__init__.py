"""Benchmarks (not tests): each ``bench/<name>.py`` with a ``main()`` prints its figures as ratios against a baseline
run in the same process and appends JSON lines to ``bench/results.jsonl`` (see docs/PERFORMANCE.md).

``python -m bench`` runs them all in name order; ``python -m bench NAME...`` runs the named ones.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess

#: Where figures are appended; BENCH_RESULTS redirects them (e.g. for a trial run that should not count).
RESULTS = os.environ.get("BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl")

_IMPORT_LOAD = os.getloadavg()  # a benchmark run directly (``python -m bench.NAME``) starts about now
_START_LOAD: dict[str, tuple] = {}


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages (runnable threads; this machine has ``os.cpu_count()`` cores)."""
    return os.getloadavg()


def started(bench: str) -> None:
    """Note the load average as ``bench`` starts (``python -m bench`` calls this before each benchmark), so that
    figures measured on a busy machine are recognisable in results.jsonl."""
    _START_LOAD[bench] = load_average()


def machine() -> dict:
    """What the figures were measured on: platform, CPU model and count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count()}


def git_revision() -> str:
    """The checkout's commit (with ``+dirty`` when files differ from it), or ``unknown``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        # the figures' own files do not make a checkout dirty (every run appends to results.jsonl)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!bench/results.jsonl", ":!bench/plots"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(bench: str, figure: str, value: float, unit: str, *, baseline: float | None = None,
           ratio: float | None = None, target: str | None = None, extra: dict | None = None) -> dict:
    """Print one figure and append it as a JSON line to bench/results.jsonl.

    Args:
        bench: the benchmark's name (its module name).
        figure: what was measured, e.g. ``write_none_stats``.
        value: the measured value, in ``unit``.
        baseline: the same-run baseline's value in the same unit, when there is one.
        ratio: value / baseline (or however the target is phrased), when there is a baseline.
        target: the target, as text (e.g. ``>=0.8``).
        extra: other fields worth keeping (sizes, settings).

    Returns:
        The JSON document written.
    """
    doc = {"bench": bench, "figure": figure, "value": round(value, 4), "unit": unit,
           "baseline": None if baseline is None else round(baseline, 4),
           "ratio": None if ratio is None else round(ratio, 4), "target": target, "machine": machine(),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "git": git_revision(),
           "load_at_start": [round(x, 2) for x in _START_LOAD.get(bench, _IMPORT_LOAD)],
           "load_at_record": [round(x, 2) for x in load_average()]}
    if extra:
        doc.update(extra)
    line = f"{bench:>12} {figure:<28} {value:10.3f} {unit}"
    if baseline is not None:
        line += f"   baseline {baseline:10.3f} {unit}"
    if ratio is not None:
        line += f"   ratio {ratio:6.3f}"
    if target:
        line += f"   target {target}" + ("" if ratio is None else ("  MET" if _meets(ratio, target) else "  MISSED"))
    line += f"   (load {doc['load_at_start'][0]:.1f})"
    print(line, flush=True)
    with open(RESULTS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, sort_keys=True) + "\n")
    return doc


def _meets(ratio: float, target: str) -> bool:
    if target.startswith(">="):
        return ratio >= float(target[2:])
    if target.startswith("<="):
        return ratio <= float(target[2:])
    return False
