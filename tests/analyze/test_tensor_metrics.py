"""Tensor metrics (docs/METRICS.md section 1) against the plain float64 implementation in reference_impl.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from analyze.tensor_metrics import TensorMetricAccumulator, stats_metrics, tensor_metrics
from protocol import bfloat16_bits, compute_stats, decode

from .reference_impl import row_cosines, tensor_reference


def check(a, b, got, rel=1e-9):
    want = tensor_reference(a, b)
    for name, w in want.items():
        g = got.values[name]
        if math.isinf(w) or math.isnan(w):
            assert g == w or (math.isnan(w) and math.isnan(g)), name
        else:
            assert g == pytest.approx(w, rel=rel, abs=1e-12), name
    cos = row_cosines(a, b)
    assert got.values["cos_rows_mean"] == pytest.approx(float(np.mean(cos)), rel=1e-9)
    assert got.values["cos_rows_min"] == pytest.approx(float(np.min(cos)), rel=1e-9)


@pytest.mark.parametrize("shape", [(7,), (5, 33), (3, 4, 130), (1000,)], ids=str)
def test_random_data_matches_reference(shape):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape).astype(np.float32)
    b = (a + 1e-3 * rng.standard_normal(shape)).astype(np.float32)
    check(a, b, tensor_metrics(a, b))


@pytest.mark.parametrize("tile", [1, 3, 64, 1 << 16])
@pytest.mark.parametrize("block", [1, 5, 70, 10_000])
def test_streaming_with_rows_split_across_blocks_equals_one_pass(tile, block):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 6, 25))
    b = a + 0.01 * rng.standard_normal(a.shape)
    acc = TensorMetricAccumulator(a.shape, tile=tile)
    fa, fb = a.reshape(-1), b.reshape(-1)
    for s in range(0, fa.size, block):
        acc.update(fa[s:s + block], fb[s:s + block])
    check(a, b, acc.result())


def test_result_changes_nothing_and_may_be_asked_for_midway():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 40))
    b = a + 0.01 * rng.standard_normal(a.shape)
    acc = TensorMetricAccumulator(a.shape, tile=16)
    fa, fb = a.reshape(-1), b.reshape(-1)
    acc.update(fa[:55], fb[:55])  # a row is open
    midway = acc.result()
    assert acc.result() == midway and midway.values["cos_rows_min"] is not None
    acc.update(fa[55:], fb[55:])
    final = acc.result()
    assert acc.result() == final
    check(a, b, final)


def test_identical():
    a = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    v = tensor_metrics(a, a.copy()).values
    assert v["max_abs_diff"] == 0 and v["rel_l2"] == 0 and v["sqnr_db"] == math.inf and v["psnr_db"] == math.inf
    assert v["allclose_frac"] == 1.0 and v["cosine"] == pytest.approx(1.0)


def test_both_zero_and_one_side_zero():
    z = np.zeros((3, 4), np.float32)
    x = np.ones((3, 4), np.float32)
    both = tensor_metrics(z, z.copy()).values
    assert both["cosine"] == 1.0 and both["rel_l2"] == 0.0 and both["sqnr_db"] == math.inf
    assert both["psnr_db"] == math.inf and both["cos_rows_min"] == 1.0
    ref_zero = tensor_metrics(z, x).values
    assert ref_zero["cosine"] == 0.0 and ref_zero["rel_l2"] == math.inf and ref_zero["sqnr_db"] == -math.inf
    assert ref_zero["psnr_db"] == -math.inf
    check(z, x, tensor_metrics(z, x))
    cand_zero = tensor_metrics(x, z).values
    assert cand_zero["cosine"] == 0.0 and cand_zero["rel_l2"] == 1.0 and cand_zero["cos_rows_mean"] == 0.0


def test_nan_and_inf_are_counted_and_excluded():
    a = np.array([[1.0, np.nan, 3.0, np.inf, 5.0], [np.nan, 2.0, -np.inf, 1.0, 0.5]], np.float32)
    b = np.array([[1.1, 2.0, np.nan, np.inf, 5.0], [np.nan, 2.5, np.inf, np.nan, 0.5]], np.float32)
    got = tensor_metrics(a, b)
    assert got.status == "ok"
    assert got.excluded == 6
    assert got.values["nan_mismatch"] == 3.0  # [0,1], [0,2], [1,3]
    assert got.values["inf_mismatch"] == 1.0  # [1,2] -inf vs +inf ([0,3] is inf on both sides)
    check(a, b, got)


def test_all_non_finite_gives_no_numbers():
    a = np.array([np.nan, np.inf])
    got = tensor_metrics(a, a.copy())
    assert got.status == "no-finite" and got.values["rel_l2"] is None and got.values["nan_mismatch"] == 0


def test_empty_and_zero_d():
    e = tensor_metrics(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert e.status == "empty" and e.values["max_abs_diff"] is None
    a, b = np.array(2.0, np.float32), np.array(2.5, np.float32)
    got = tensor_metrics(a, b)
    check(a, b, got)
    assert got.values["max_abs_diff"] == 0.5 and got.values["cos_rows_mean"] == 1.0


def test_bfloat16_against_float32_is_measured_exactly():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((6, 40)).astype(np.float32)
    b16 = decode(bfloat16_bits(a), "bfloat16")  # bfloat16 values as float32, exact
    got = tensor_metrics(a, b16)
    check(a, b16.astype(np.float64), got)
    assert got.values["max_abs_diff"] > 0


def test_allclose_uses_polygraphy_rule():
    a = np.array([1000.0, 1.0, 0.0])
    b = np.array([1000.005, 1.00002, 0.00002])  # within rtol; within neither; within neither (|a|=0)
    got = tensor_metrics(a, b).values
    assert got["allclose_frac"] == pytest.approx(1 / 3)


def test_integer_records():
    a = np.arange(10, dtype=np.int64)
    b = a.copy()
    b[3] = 4
    check(a, b, tensor_metrics(a, b))


def test_stats_only_relative_differences():
    a, b = compute_stats(np.array([1.0, 2.0, 3.0])), compute_stats(np.array([1.0, 2.0, 3.3]))
    v = stats_metrics(a, b).values
    assert v["stats_rel_max"] == pytest.approx(0.1)
    assert v["stats_rel_l2"] == pytest.approx(abs(math.sqrt(1 + 4 + 3.3 ** 2) - math.sqrt(14)) / math.sqrt(14))
    assert v["stats_rel_min"] == 0.0 and v["nan_count_diff"] == 0.0



# The compiled pass (analyze/tensor_kernels.py, numba) and the numpy path, on blocks large enough for the former.

@pytest.fixture(params=["compiled", "numpy"])
def kernel(request, monkeypatch):
    """Tensor metrics by the compiled pass (when numba is installed), or by numpy alone."""
    import analyze.tensor_metrics as tm
    from tests.protocol.support import kernel_path
    return kernel_path(request.param, monkeypatch, tm)


def _large_pair(shape, dtype, seed=11):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    b = (a + 1e-4 * rng.standard_normal(shape)).astype(dtype)
    b.reshape(-1)[::97] = a.reshape(-1)[::97] * 1.5  # some elements outside the allclose tolerances
    return a, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(70_001,), (300, 257), (2, 40_000), (1100, 64), (70_000, 1)], ids=str)
def test_large_blocks_match_reference(shape, dtype, kernel):
    a, b = _large_pair(shape, dtype)
    check(a, b, tensor_metrics(a, b))


@pytest.mark.parametrize("block", [65_536, 70_001, 100_003])
def test_large_streamed_blocks_with_rows_split_across_them(block, kernel):
    a, b = _large_pair((7, 30_011), np.float32)
    acc = TensorMetricAccumulator(a.shape)
    fa, fb = a.reshape(-1), b.reshape(-1)
    for s in range(0, fa.size, block):
        acc.update(fa[s:s + block].copy(), fb[s:s + block].copy())
        midway = acc.result()  # a row is open between most blocks
        assert midway.values["cos_rows_min"] is not None
    check(a, b, acc.result())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_blocks_with_nan_and_inf_are_counted_and_excluded(dtype, kernel):
    a, b = _large_pair((200, 400), dtype)
    a[3, 5], b[3, 6], b[150, 7] = np.nan, np.nan, np.inf
    a[199, 399] = b[199, 399] = -np.inf
    got = tensor_metrics(a, b)
    assert got.excluded == 4 and got.values["nan_mismatch"] == 2.0 and got.values["inf_mismatch"] == 1.0
    check(a, b, got)


def test_compiled_and_numpy_paths_agree(monkeypatch):
    pytest.importorskip("numba")
    import analyze.tensor_metrics as tm
    for dtype in (np.float32, np.float64):
        a, b = _large_pair((130, 1031), dtype, seed=5)
        acc = TensorMetricAccumulator(a.shape, peak=float(np.max(np.abs(a))))
        acc.update(a, b)
        compiled = acc.result().values
        with monkeypatch.context() as m:
            m.setattr(tm, "_kernels", lambda: None)
            acc = TensorMetricAccumulator(a.shape, peak=float(np.max(np.abs(a))))
            acc.update(a, b)
            plain = acc.result().values
        for name in ("max_abs_diff", "allclose_frac", "psnr_db", "nan_mismatch", "inf_mismatch"):
            assert compiled[name] == plain[name], name  # maxima and counts are exact on both paths
        for name, value in plain.items():
            assert compiled[name] == pytest.approx(value, rel=1e-12), name


def test_other_layouts_and_mixed_dtypes_compile_nothing_new():
    """numba compiles anew (seconds, in the middle of a comparison) for each layout it has not seen: read-only,
    strided and mixed-dtype pairs take the numpy path."""
    pytest.importorskip("numba")
    import analyze.tensor_metrics as tm
    kernels = tm._kernels()
    before = len(kernels.block_metrics.signatures)
    a, b = _large_pair((100, 1000), np.float32)
    ro = a.copy()
    ro.flags.writeable = False
    for x, y in ((ro, b), (a[:, ::2], b[:, ::2]), (a, b.astype(np.float64)), (a.astype(np.float16), b)):
        check(x, y, tensor_metrics(x, y), rel=1e-6 if x.dtype == np.float16 else 1e-9)
    assert len(kernels.block_metrics.signatures) == before


def test_small_blocks_do_not_load_numba():
    import json
    import subprocess
    import sys
    code = ("import sys, json, numpy as np\n"
            "from analyze.tensor_metrics import tensor_metrics\n"
            "tensor_metrics(np.ones(1000, np.float32), np.ones(1000, np.float32))\n"
            "print(json.dumps('numba' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) is False
