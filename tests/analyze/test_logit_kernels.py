"""The vector exp and log of analyze/logit_kernels.py (numba) against numpy's libm, over the ranges the logit
metrics feed them, including the edges (underflow, -inf, NaN, subnormal sums)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")
from analyze import logit_kernels  # noqa: E402  (after the skip: the module imports numba)

ULP = np.finfo(np.float64).eps


@pytest.mark.parametrize("lo,hi", [(-1.0, 0.0), (-50.0, -1.0), (-700.0, -50.0), (-708.0, -700.0)])
def test_exp_within_one_ulp(lo, hi):
    x = np.random.default_rng(int(-lo)).uniform(lo, hi, 200_000)
    got = np.empty_like(x)
    logit_kernels._exp_shifted(x, 0.0, got)
    want = np.exp(x)
    assert np.max(np.abs(got - want) / want) <= 1.5 * ULP


def test_exp_edges():
    x = np.array([0.0, -0.0, -708.0, -708.5, -800.0, -np.inf, np.nan, -1e-300])
    got = np.empty_like(x)
    logit_kernels._exp_shifted(x, 0.0, got)
    assert got[0] == 1.0 and got[1] == 1.0 and got[7] == 1.0
    assert got[2] == pytest.approx(np.exp(-708.0), rel=2 * ULP)
    assert (got[3:7] == 0.0).all()  # below the normal range, -inf and NaN: 0 (the sums carry the NaN, see below)


def test_exp_of_float32_with_shift():
    a = np.random.default_rng(1).standard_normal(5000).astype(np.float32) * 5
    got = np.empty(a.size)
    logit_kernels._exp_shifted(a, float(a.max()), got)
    want = np.exp(a.astype(np.float64) - float(a.max()))
    assert np.max(np.abs(got - want) / want) <= 1.5 * ULP


@pytest.mark.parametrize("lo,hi", [(-690.0, 0.7), (-0.35, 0.35)])
def test_m_log_m_within_one_ulp(lo, hi):
    m = np.exp(np.random.default_rng(2).uniform(lo, hi, 200_000))
    got = np.empty_like(m)
    logit_kernels._mlogm(m, 1.0, np.zeros_like(m), 0.0, got)
    want = m * np.log(m)
    assert np.max(np.abs(got - want) / np.abs(want)) <= 2.5 * ULP


def test_m_log_m_tiny_and_zero_are_zero():
    m = np.array([0.0, 1e-320, 1e-301, 1e-299, 1.0, 2.0])
    got = np.empty_like(m)
    logit_kernels._mlogm(m, 1.0, np.zeros_like(m), 0.0, got)
    assert (got[:3] == 0.0).all() and got[4] == 0.0
    assert got[3] == pytest.approx(1e-299 * np.log(1e-299), rel=4 * ULP)
    assert got[5] == pytest.approx(2 * np.log(2.0), rel=2 * ULP)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logit_makes_the_row_sums_nan(bad):
    """The caller relies on this to send the row to its slow path with explicit conventions."""
    a = np.random.default_rng(3).standard_normal((2, 3000))
    b = a + 0.1
    b[1, 17] = bad
    ma, mb = a.max(axis=1), np.nanmax(np.where(np.isposinf(b), np.nan, b), axis=1)
    if bad == np.inf:
        mb[1] = np.inf
    out = np.empty((2, 8))
    scratch = [np.empty(3000) for _ in range(3)]
    logit_kernels.row_sums(a, b, ma, mb, out, *scratch)
    assert np.isfinite(out[0]).all()
    assert not np.isfinite(out[1, 2:6]).all()


def test_import_analyze_does_not_compile_kernels():
    code = ("import sys, json, numpy as np; from analyze.logit_metrics import token_metrics; "
            "print(json.dumps('numba' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False


def test_read_only_and_strided_logits_compile_nothing_new():
    """Logits in another layout are copied tile by tile to the probed one instead of compiling a new variant."""
    import analyze.logit_metrics as lm

    kernels = lm._kernels()
    before = (len(kernels.row_sums.signatures), len(kernels.exp_sums.signatures))
    a = np.random.default_rng(6).standard_normal((5, 3000)).astype(np.float32)
    b = a + np.float32(0.1)
    want = lm.token_metrics(a, b)["kl"]
    ro_a, ro_b = a.copy(), b.copy()
    ro_a.flags.writeable = ro_b.flags.writeable = False
    for x, y in ((ro_a, ro_b), (np.asfortranarray(a), b), (np.repeat(a, 2, axis=1)[:, ::2], b)):
        assert np.allclose(lm.token_metrics(x, y)["kl"], want, rtol=1e-12, atol=0)
    lm.nll_only(ro_a, np.arange(5))
    assert (len(kernels.row_sums.signatures), len(kernels.exp_sums.signatures)) == before


def test_numba_with_its_jit_disabled_leaves_the_work_to_numpy():
    """NUMBA_DISABLE_JIT=1 would run the kernels as Python (thousands of times slower): numpy does the work."""
    code = ("import json, protocol.stats, analyze.logit_metrics as lm; "
            "print(json.dumps([protocol.stats._kernels() is None, lm._kernels() is None]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "NUMBA_DISABLE_JIT": "1"})
    assert json.loads(out.stdout) == [True, True]
