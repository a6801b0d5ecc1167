"""Loading the optional compiled kernels (numba, the ``fast`` extra) on first use, with a fallback."""
from __future__ import annotations

import importlib
import sys
from typing import Callable

_LOADED: dict[str, object] = {}


def load(module: str, probe: Callable[[object], None]):
    """The kernel module ``module``, imported and probed once per process, or None when numba is not installed
    or cannot compile here (a broken llvmlite, an unsupported CPU): the caller then uses its numpy path.

    Args:
        module: dotted module name, e.g. ``"protocol.stats_kernels"``.
        probe: called with the module; it runs each kernel once on tiny inputs of every type the caller will pass
            (callers normalise their arrays to those), so that compiling (or loading the cache) happens now, where a
            failure only means "no kernels", not in the middle of a capture.
    """
    if module not in _LOADED:
        try:
            mod = importlib.import_module(module)
            numba = sys.modules.get("numba")
            if numba is not None and numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1: the kernels would run as
                raise RuntimeError("numba's JIT is disabled")   # Python, thousands of times slower than numpy
            probe(mod)
            _LOADED[module] = mod
        except Exception:  # not installed or unusable: numpy does the work
            _LOADED[module] = None
    return _LOADED[module]
