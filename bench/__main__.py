"""``python -m bench [NAME...]``: run every bench/*.py module that has a ``main()`` (in name order), or the named ones."""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time


def available() -> list[str]:
    """Names of the benchmark modules that define ``main()``, in name order."""
    here = os.path.dirname(os.path.abspath(__file__))
    names = sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_"))
    return [n for n in names if callable(getattr(importlib.import_module(f"bench.{n}"), "main", None))]


def run(argv: list[str]) -> int:
    """Run the named benchmarks (all when none is named); returns an exit code."""
    names = available()
    wanted = argv or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {names}", file=sys.stderr)
        return 2
    from bench import load_average, started
    t_all = time.perf_counter()
    for name in wanted:
        started(name)
        load = load_average()
        print(f"== bench {name}  (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores)",
              flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"bench.{name}").main()
        print(f"== bench {name} took {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"== all benchmarks took {time.perf_counter() - t_all:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
