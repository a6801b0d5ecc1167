"""Logit metrics (docs/METRICS.md section 2) against reference_impl.logit_reference, row by row; every test runs with
the compiled sums (analyze/logit_kernels.py, numba) and with numpy alone."""
from __future__ import annotations

import math

import numpy as np
import pytest

import analyze.logit_metrics
from analyze.logit_metrics import LOGIT_METRICS, nll_only, token_metrics, topk_indices
from protocol import bfloat16_bits, decode
from tests.protocol.support import kernel_path

from .reference_impl import logit_reference


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def kernel(request, monkeypatch):
    """The divergence sums by the compiled kernels (when numba is installed), or by numpy alone."""
    return kernel_path(request.param, monkeypatch, analyze.logit_metrics)


@pytest.mark.parametrize("vocab", [50, 1000, 4000])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_metric_matches_reference(vocab, threads):
    rng = np.random.default_rng(vocab)
    n = 9
    a = (3 * rng.standard_normal((n, vocab))).astype(np.float32)
    b = (a + 0.3 * rng.standard_normal((n, vocab))).astype(np.float32)
    labels = rng.integers(0, vocab, n)
    labels[2] = -1
    got = token_metrics(a, b, labels, threads=threads)
    assert set(got) == set(LOGIT_METRICS)
    for i in range(n):
        want = logit_reference(a[i], b[i], None if labels[i] < 0 else labels[i])
        for name, w in want.items():
            assert got[name][i] == pytest.approx(w, rel=1e-9, abs=1e-13), (name, i)
    assert math.isnan(got["nll_ref"][2]) and math.isnan(got["delta_p"][2])


def test_identical_logits():
    a = np.random.default_rng(0).standard_normal((4, 300))
    got = token_metrics(a, a.copy(), np.array([1, 2, 3, 4]))
    for name in ("kl", "kl_reverse", "js", "kl_abs_variant", "delta_p", "fms_diff_mean", "fms_prob_mean"):
        assert np.allclose(got[name], 0.0, atol=1e-14), name
    assert (got["top1_agree"] == 1).all() and (got["topk_overlap"] == 1).all()


def test_kl_abs_variant_bounds_kl_and_js_bounded_by_ln2():
    rng = np.random.default_rng(5)
    a = 5 * rng.standard_normal((20, 500))
    b = 5 * rng.standard_normal((20, 500))  # unrelated distributions
    got = token_metrics(a, b)
    assert (got["kl_abs_variant"] >= got["kl"] - 1e-12).all()
    assert (got["js"] <= math.log(2) + 1e-12).all() and (got["js"] >= -1e-12).all()


def test_masked_vocabulary_minus_inf():
    a = np.array([[0.0, 1.0, -np.inf, 2.0], [0.5, -np.inf, -np.inf, 1.0]])
    b = np.array([[0.1, 1.0, -np.inf, 2.1], [0.4, -np.inf, -np.inf, 1.2]])
    got = token_metrics(a, b, np.array([3, 0]))
    for i in range(2):
        keep = np.isfinite(a[i])
        want = logit_reference(a[i][keep], b[i][keep])
        for name in ("kl", "kl_reverse", "js", "kl_abs_variant"):
            assert got[name][i] == pytest.approx(want[name], rel=1e-9, abs=1e-15), name
    assert np.isfinite(got["nll_ref"]).all()


def test_nan_logits_give_nan_row_without_crash():
    a = np.random.default_rng(1).standard_normal((3, 64))
    b = a.copy()
    b[1, 5] = np.nan
    got = token_metrics(a, b)
    assert math.isnan(got["kl"][1]) and got["kl"][0] == pytest.approx(0.0, abs=1e-14)


def test_bfloat16_candidate():
    rng = np.random.default_rng(2)
    a = (2 * rng.standard_normal((5, 256))).astype(np.float32)
    b = decode(bfloat16_bits(a), "bfloat16")
    got = token_metrics(a, b)
    for i in range(5):
        assert got["kl"][i] == pytest.approx(logit_reference(a[i], b[i])["kl"], rel=1e-8, abs=1e-15)


@pytest.mark.parametrize("vocab,k", [(128 * 30 + 7, 10), (128 * 50, 20), (100, 5)])
def test_topk_prefilter_equals_full_sort(vocab, k):
    rows = np.random.default_rng(vocab).standard_normal((6, vocab))
    got = np.sort(topk_indices(rows, k), axis=1)
    want = np.sort(np.argsort(-rows, axis=1)[:, :k], axis=1)
    assert (got == want).all()


@pytest.mark.parametrize("vocab", [90, 128256])
def test_nll_only_matches_reference(vocab):
    rng = np.random.default_rng(3)
    a = (4 * rng.standard_normal((7, vocab))).astype(np.float32)
    labels = rng.integers(0, vocab, 7)
    labels[0] = -1
    got = nll_only(a, labels)
    assert math.isnan(got[0])
    for i in range(1, 7):
        assert got[i] == pytest.approx(logit_reference(a[i], a[i], labels[i])["nll_ref"], rel=1e-12)


def test_nll_only_non_finite_rows():
    a = np.random.default_rng(4).standard_normal((4, 300))
    a[0, 3] = np.nan
    a[1, 4] = np.inf
    a[2, :] = -np.inf
    a[3, 7] = -np.inf  # a masked token: allowed, adds nothing
    got = nll_only(a, np.array([1, 1, 1, 1]))
    assert np.isnan(got[:3]).all()
    keep = np.isfinite(a[3])
    assert got[3] == pytest.approx(logit_reference(a[3][keep], a[3][keep], 1)["nll_ref"], rel=1e-12)


def test_empty_and_bad_shapes():
    assert token_metrics(np.zeros((0, 5)), np.zeros((0, 5)))["kl"].size == 0
    with pytest.raises(ValueError):
        token_metrics(np.zeros((2, 5)), np.zeros((2, 6)))


@pytest.mark.parametrize("case", ["mixed_dtypes", "strided", "float64"])
def test_dtype_and_layout_variants(case):
    rng = np.random.default_rng(11)
    a = (3 * rng.standard_normal((6, 700))).astype(np.float32)
    b = (a + 0.2 * rng.standard_normal(a.shape)).astype(np.float32)
    if case == "mixed_dtypes":
        b = b.astype(np.float64)
    elif case == "strided":
        a, b = np.repeat(a, 2, axis=1)[:, ::2], np.asfortranarray(b)  # a strided view and a column-major copy
    else:
        a, b = a.astype(np.float64), b.astype(np.float64)
    got = token_metrics(a, b, np.arange(6))
    for i in range(6):
        want = logit_reference(a[i], b[i], i)
        for name in ("kl", "kl_reverse", "js", "kl_abs_variant", "nll_ref", "delta_p"):
            assert got[name][i] == pytest.approx(want[name], rel=1e-9, abs=1e-13), (name, i)


def test_llama3_vocabulary_rows():
    """Rows as long as Llama-3's vocabulary (128,256), with logits far below the top and a close candidate."""
    rng = np.random.default_rng(12)
    v = 128256
    a = (4 * rng.standard_normal((3, v))).astype(np.float32)
    a[1, :1000] -= 600.0  # probabilities near 1e-262
    a[2, :1000] -= 900.0  # probabilities that underflow float64 to 0
    b = (a + 0.01 * rng.standard_normal(a.shape)).astype(np.float32)
    labels = np.array([5, 7, 2000])
    got = token_metrics(a, b, labels)
    for i in range(3):
        keep = slice(1000, None) if i == 2 else slice(None)  # the reference's log(0) is left out: they add 0
        want = logit_reference(a[i, keep], b[i, keep], labels[i] - (1000 if i == 2 else 0))
        for name in ("kl", "kl_reverse", "js", "kl_abs_variant", "nll_ref", "nll_cand", "delta_p"):
            assert got[name][i] == pytest.approx(want[name], rel=1e-8, abs=1e-13), (name, i)
