"""Logical dtypes and their lossless storage (SPEC.md section 6).

numpy and HDF5 have no bfloat16 or fp8, so those are stored as their raw bit patterns (uint16 / uint8) with a
``dtype`` attribute naming the logical type. ``decode`` turns stored arrays into numpy floats holding exactly the
same values (bfloat16 and fp8 values are all exactly representable in float32).
"""
from __future__ import annotations

import numpy as np

# logical name -> storage dtype, for the types numpy cannot hold natively
BIT_PATTERN_TYPES: dict[str, np.dtype] = {
    "bfloat16": np.dtype(np.uint16),
    "float8_e4m3fn": np.dtype(np.uint8),
    "float8_e5m2": np.dtype(np.uint8),
    "float8_e4m3fnuz": np.dtype(np.uint8),
    "float8_e5m2fnuz": np.dtype(np.uint8),
}

NATIVE_TYPES = {
    "float64", "float32", "float16",
    "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8",
    "bool",
}

FLOAT_TYPES = {"float64", "float32", "float16", *BIT_PATTERN_TYPES}


_NATIVE_DTYPES = {name: np.dtype(name) for name in NATIVE_TYPES}  # np.dtype(name) costs ~3 us, once per record


def is_known(logical: str) -> bool:
    """True when ``logical`` is a dtype name this protocol version defines."""
    return logical in NATIVE_TYPES or logical in BIT_PATTERN_TYPES


def storage_dtype(logical: str) -> np.dtype:
    """The numpy dtype used to store a logical dtype; raise ValueError for unknown names."""
    if logical in BIT_PATTERN_TYPES:
        return BIT_PATTERN_TYPES[logical]
    if logical in NATIVE_TYPES:
        return _NATIVE_DTYPES[logical]
    raise ValueError(f"unknown logical dtype {logical!r}")


def logical_of(array: np.ndarray, logical: str | None = None) -> str:
    """The logical dtype name of an array about to be stored.

    ``logical`` must be given for bit patterns (a uint16 array holding bfloat16 bits says ``"bfloat16"``) and must
    match the array's storage dtype. Arrays of the ``ml_dtypes`` bfloat16/fp8 types are recognised by name.
    """
    name = array.dtype.name
    if logical is None:
        if name in BIT_PATTERN_TYPES:  # ml_dtypes arrays
            return name
        if name not in NATIVE_TYPES:
            raise ValueError(f"dtype {array.dtype} cannot be stored; supported: "
                             f"{sorted(NATIVE_TYPES | set(BIT_PATTERN_TYPES))}")
        return name
    want = storage_dtype(logical)
    if name != logical and array.dtype.itemsize != want.itemsize:
        raise ValueError(f"array of dtype {array.dtype} cannot hold logical dtype {logical!r} "
                         f"(stored as {want})")
    return logical


def to_storage(array: np.ndarray, logical: str) -> np.ndarray:
    """View an array as its storage dtype (bit patterns for bfloat16/fp8; native otherwise)."""
    want = storage_dtype(logical)
    if array.dtype == want:
        return array
    if logical in BIT_PATTERN_TYPES:
        return np.ascontiguousarray(array).view(want).reshape(array.shape)  # ascontiguousarray makes 0-d 1-d
    return array.astype(want, copy=False)


def _fp8_table(exp_bits: int, man_bits: int, bias: int, *, ieee: bool, fnuz: bool) -> np.ndarray:
    """Float32 value of each of the 256 bit patterns of an fp8 format."""
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    frac = man / float(1 << man_bits)
    normal = sign * (1.0 + frac) * np.exp2(exp.astype(np.float64) - bias)
    subnormal = sign * frac * np.exp2(1.0 - bias)
    values = np.where(exp == 0, subnormal, normal)
    top = (1 << exp_bits) - 1
    if fnuz:
        values[0x80] = np.nan  # the only NaN; no negative zero, no infinity
    elif ieee:  # e5m2: IEEE-style infinities and NaNs in the top exponent
        values[(exp == top) & (man == 0)] = sign[(exp == top) & (man == 0)] * np.inf
        values[(exp == top) & (man != 0)] = np.nan
    else:  # e4m3fn: no infinity, NaN only for all-ones exponent and mantissa
        values[(exp == top) & (man == (1 << man_bits) - 1)] = np.nan
    return values.astype(np.float32)


_FP8_TABLES = {
    "float8_e4m3fn": _fp8_table(4, 3, 7, ieee=False, fnuz=False),
    "float8_e5m2": _fp8_table(5, 2, 15, ieee=True, fnuz=False),
    "float8_e4m3fnuz": _fp8_table(4, 3, 8, ieee=False, fnuz=True),
    "float8_e5m2fnuz": _fp8_table(5, 2, 16, ieee=False, fnuz=True),
}


def decode(stored: np.ndarray, logical: str) -> np.ndarray:
    """Values of a stored array: bit patterns become float32 with exactly the same values; natives pass through."""
    if logical == "bfloat16":
        bits = np.asarray(stored, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)
    table = _FP8_TABLES.get(logical)
    if table is not None:
        return table[np.asarray(stored, dtype=np.uint8)]
    return np.asarray(stored)


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (round to nearest even) and return their uint16 bit patterns.

    Used by tests and by backends that hand over float32 tensors of a bfloat16 computation.
    """
    values = np.asarray(values, dtype=np.float32)
    f = np.ascontiguousarray(values).view(np.uint32).reshape(values.shape)  # ascontiguousarray makes 0-d 1-d
    nan = (f & 0x7FFFFFFF) > 0x7F800000
    rounded = (f + 0x7FFF + ((f >> 16) & 1)) >> 16
    return np.where(nan, (f >> 16) | 0x40, rounded).astype(np.uint16)
