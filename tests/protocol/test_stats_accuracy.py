"""compute_stats against a plain float64 reference, on the data that stresses its fast paths: large offsets (the
centred fallback), constants, NaN/Inf, integers, several blocks and a partial one; with the compiled kernels
(protocol/stats_kernels.py, numba) and with numpy alone."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys

import numpy as np
import pytest

import protocol.stats
from protocol import compute_stats, dot, row_dots
from protocol.stats import _BLOCK
from tests.protocol.support import kernel_path


@pytest.fixture(params=["compiled", "numpy"])
def kernel(request, monkeypatch):
    """Statistics by the compiled kernels (when numba is installed), or by numpy alone."""
    return kernel_path(request.param, monkeypatch, protocol.stats)


def _reference(x: np.ndarray) -> dict:
    finite = x[np.isfinite(x)] if x.dtype.kind == "f" else x.astype(np.float64)
    f = finite.astype(np.float64)
    centred = f - f.mean()
    return {"mean": f.mean(), "std": math.sqrt(float(np.sum(centred * centred)) / f.size),
            "l2": math.sqrt(float(np.sum(f * f))), "min": f.min(), "max": f.max()}


@pytest.mark.parametrize("kind", ["float32", "offset_float64", "offset_float32", "offset_9sd", "int32", "int64",
                                  "nonfinite", "bool", "float16", "constant", "outliers"])
def test_statistics_match_a_plain_float64_computation(kind, kernel):
    rng = np.random.default_rng(0)
    n = 5 * _BLOCK + 123  # several blocks and a partial one
    x = {"float32": lambda: (rng.standard_normal(n) * 3 + 7).astype(np.float32),
         # mean**2 / var = 1e6 and 1e8: the one-pass sum of squares would lose 6-8 digits; the centred pass does not
         "offset_float64": lambda: rng.standard_normal(n) * 1e6 + 1e9,
         "offset_float32": lambda: (rng.standard_normal(n) + 1e4).astype(np.float32),
         # |mean| = 9 std: just inside the compiled kernels' one-pass range (their centred pass starts at 10)
         "offset_9sd": lambda: (rng.standard_normal(n) + 9).astype(np.float32),
         "int32": lambda: rng.integers(-1000, 1000, n).astype(np.int32),
         "int64": lambda: rng.integers(0, 2 ** 40, n),
         "nonfinite": lambda: np.where(rng.random(n) < 0.01, np.nan, rng.standard_normal(n)).astype(np.float32),
         "bool": lambda: rng.random(n) < 0.3,
         "float16": lambda: rng.standard_normal(n).astype(np.float16),
         "constant": lambda: np.full(n, -0.3, dtype=np.float32),
         "outliers": lambda: np.where(rng.random(n) < 1e-5, 3e3, rng.standard_normal(n) * 1e-2).astype(np.float32),
         }[kind]()
    if kind == "nonfinite":
        x[:_BLOCK] = np.inf  # a block with no finite element at all
        x[-1] = -np.inf
    got, ref = compute_stats(x), _reference(x)
    assert got.numel == n
    assert (got.min, got.max) == (ref["min"], ref["max"])
    assert got.mean == pytest.approx(ref["mean"], rel=1e-12)
    assert got.l2 == pytest.approx(ref["l2"], rel=1e-12)
    if kind == "constant":
        assert got.std == 0.0 and got.mean == float(np.float32(-0.3))
    else:
        assert got.std == pytest.approx(ref["std"], rel=1e-10)
    if kind == "nonfinite":
        assert got.nan_count == int(np.isnan(x).sum()) and got.inf_count == _BLOCK + 1


def test_compiled_and_numpy_statistics_agree(monkeypatch):
    pytest.importorskip("numba")
    rng = np.random.default_rng(5)
    for x in (rng.standard_normal(3 * _BLOCK + 7).astype(np.float32), rng.standard_normal(_BLOCK) * 50 + 3):
        compiled = compute_stats(x)
        with monkeypatch.context() as m:
            m.setattr(protocol.stats, "_kernels", lambda: None)
            plain = compute_stats(x)
        assert (compiled.min, compiled.max, compiled.numel) == (plain.min, plain.max, plain.numel)
        for f in ("mean", "std", "l2", "abs_max"):
            assert getattr(compiled, f) == pytest.approx(getattr(plain, f), rel=1e-13), f


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["negative_only", "signed_zeros", "neg_nan", "pos_nan", "pos_inf", "neg_inf",
                                  "extremes", "subnormals", "strided"])
def test_one_pass_min_max_keys_on_edge_values(dtype, case, kernel):
    """The compiled pass takes min and max as integer order keys of the bits (stats_kernels.sums_minmax32/64): every
    value class must sort as the floats do, and NaN/Inf must send the block to the counting path."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal(2 * _BLOCK + 5).astype(dtype)
    info = np.finfo(dtype)
    nan_bits = {np.float32: (np.uint32(0xFFC00001), np.uint32), np.float64: (np.uint64(0xFFF8000000000001),
                                                                             np.uint64)}[dtype]
    if case == "negative_only":
        x = -np.abs(x) - 1
    elif case == "signed_zeros":
        x[:] = 0.0
        x[::3] = -0.0
    elif case == "neg_nan":  # a NaN with the sign bit set (its key is below -inf's)
        x[_BLOCK + 7] = np.array([nan_bits[0]], dtype=nan_bits[1]).view(dtype)[0]
    elif case == "pos_nan":
        x[11] = np.nan
    elif case == "pos_inf":
        x[_BLOCK + 1] = np.inf
    elif case == "neg_inf":
        x[3] = -np.inf
    elif case == "extremes":
        x[5], x[6] = info.max, -info.max
    elif case == "subnormals":
        x = x * info.smallest_subnormal * 4
    if case == "strided":
        x = np.repeat(x, 2)[::2]
    got, finite = compute_stats(x), x[np.isfinite(x)]
    assert (got.min, got.max) == (float(finite.min()), float(finite.max()))
    assert got.nan_count == int(np.isnan(x).sum()) and got.inf_count == int(np.isinf(x).sum())
    if case != "extremes":  # float64's extremes overflow any sum of squares
        assert got.mean == pytest.approx(_reference(x)["mean"], rel=1e-12, abs=1e-300)


def test_small_arrays_and_import_protocol_do_not_load_numba():
    code = ("import sys, json, numpy as np, protocol\n"
            "protocol.compute_stats(np.ones(1000, np.float32))\n"
            "print(json.dumps('numba' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) is False


@pytest.mark.parametrize("n", [0, 1, 8191, 8192, 8193, 3 * 8192 + 5])
def test_dot_matches_a_plain_sum(n):
    rng = np.random.default_rng(n)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    assert dot(x, y) == pytest.approx(float(np.sum(x * y)), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("width", [1, 16, 64, 4096, 8192, 20000])
def test_row_dots_match_a_plain_sum(width):
    rng = np.random.default_rng(width)
    a, b = rng.standard_normal((3, width)), rng.standard_normal((3, width))
    np.testing.assert_allclose(row_dots(a, b), np.sum(a * b, axis=1), rtol=1e-12)


def test_read_only_and_strided_arrays_compile_nothing_new():
    """numba compiles anew (seconds, in the middle of a capture) for each array layout it has not seen: arrays
    other than the probed contiguous, writable ones take the numpy path."""
    pytest.importorskip("numba")
    kernels = protocol.stats._kernels()
    names = ("sums_minmax32", "sums_minmax64", "centred", "fold32", "fold64")
    before = {n: len(getattr(kernels, n).signatures) for n in names}
    x = np.random.default_rng(4).standard_normal(3 * _BLOCK).astype(np.float32)
    ro = x.copy()
    ro.flags.writeable = False
    for arr in (ro, x[::2], x.astype(np.float64)[::3], np.frombuffer(x.tobytes(), np.float32)):
        got, ref = compute_stats(arr), _reference(arr)
        assert (got.min, got.max) == (ref["min"], ref["max"])
        assert got.mean == pytest.approx(ref["mean"], rel=1e-12)
    assert {n: len(getattr(kernels, n).signatures) for n in names} == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["plain", "offset", "constant_block", "nan_in_third_block", "inf_in_last_block"])
def test_whole_array_kernel_equals_the_per_block_path_bit_for_bit(dtype, case, monkeypatch):
    """``fold32``/``fold64`` (one compiled call per array) round exactly as the per-block path (one compiled call per
    block, combined in Python) does, and hand over to it at the first block holding NaN or Inf."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(12)
    x = rng.standard_normal(5 * _BLOCK + 77).astype(dtype)
    if case == "offset":
        x += dtype(300.0)  # |mean| > 10 std: the centred pass
    elif case == "constant_block":
        x[_BLOCK:2 * _BLOCK] = dtype(0.25)
    elif case == "nan_in_third_block":
        x[2 * _BLOCK + 9] = np.nan
    elif case == "inf_in_last_block":
        x[-3] = -np.inf
    pieces = (x, x[:3 * _BLOCK + 5], x[3 * _BLOCK + 5:])
    whole = [compute_stats(x)]
    acc = protocol.stats.StatsAccumulator()
    for p in pieces[1:]:
        acc.update(p)
    whole.append(acc.result())
    monkeypatch.setattr(protocol.stats, "_compiled_for", lambda flat: None)  # the per-block path only
    per_block = [compute_stats(x)]
    acc = protocol.stats.StatsAccumulator()
    for p in pieces[1:]:
        acc.update(p)
    per_block.append(acc.result())
    for got, want in zip(whole, per_block):
        for f in ("numel", "min", "max", "mean", "std", "abs_max", "l2", "nan_count", "inf_count"):
            g, w = getattr(got, f), getattr(want, f)
            assert struct.pack("=d", g) == struct.pack("=d", w), f
