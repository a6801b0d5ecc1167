"""``python -m bench [NAME...]``: run every bench/*.py module that has a ``main()`` (in name order), or the named ones."""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys


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
    for name in wanted:
        print(f"== bench {name}", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
