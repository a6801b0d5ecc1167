"""Utilities shared by every package, none of them part of the file format: the terminal (progress bars, logging,
stop signals: console.py), the optional compiled kernels' loader and jit decorator (compiled.py, jit.py), and
reading the next block while this one is used (read_ahead.py). Depends on the standard library and numpy only
(numba inside jit.py, which only kernel modules import)."""
