"""How the optional compiled kernels are built (numba, from the ``fast`` extra): the ``jit`` decorator and two
bit-cast intrinsics. Importing this module imports numba; only kernel modules import it, and only
``protocol.compiled.load`` imports those (never ``import protocol``)."""
from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def jit(**options):
    """``numba.njit`` with the kernels' defaults: no GIL, numpy's error model (a float division by zero gives
    inf/NaN instead of raising, which also lets loops vectorize), cached on disk when a cache folder is writable."""
    options = {"nogil": True, "error_model": "numpy", **options}

    def decorate(fn):
        try:  # cached next to the module, or in the user's cache folder
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # no writable cache location: compiled in memory by each process
            return numba.njit(**options)(fn)
    return decorate


@intrinsic
def float_to_bits(typingctx, x):
    """The bits of a float64 as a uint64 (a bit cast, free in a vector register)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.uint64(types.float64), codegen


@intrinsic
def bits_to_float(typingctx, x):
    """The float64 whose bits are the given uint64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.uint64), codegen
