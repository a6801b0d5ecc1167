"""Aggregation (docs/METRICS.md section 5) and the llama.cpp statistic block (docs/METRICS.md section 3) on
hand-checked examples."""
from __future__ import annotations

import math

import numpy as np
import pytest

from analyze.summary import aggregate, llama_kl_statistics, mean_and_se


def test_aggregate_finite_values():
    got = aggregate([1.0, 2.0, 3.0, 4.0])
    assert got["mean"] == 2.5 and got["std"] == pytest.approx(math.sqrt(1.25))
    assert got["min"] == 1.0 and got["max"] == 4.0 and got["p50"] == 2.5
    assert got["p90"] == pytest.approx(3.7) and got["n"] == 4 and got["n_nonfinite"] == 0


def test_aggregate_infinities_winml_convention():
    got = aggregate([1.0, math.inf, 3.0])
    assert got["mean"] == 2.0 and got["std"] == 1.0 and got["max"] == math.inf and got["n_nonfinite"] == 1
    all_inf = aggregate([math.inf, math.inf])
    assert all_inf["mean"] == math.inf and all_inf["std"] == 0.0
    neg = aggregate([-math.inf])
    assert neg["mean"] == -math.inf and neg["std"] == 0.0 and neg["min"] == -math.inf


def test_aggregate_none_and_nan_are_left_out():
    got = aggregate([None, math.nan, 5.0])
    assert got["n_nan"] == 2 and got["mean"] == 5.0
    assert aggregate([None])["mean"] is None


def test_standard_error_rule():
    assert mean_and_se(np.arange(10.0)) == (4.5, 0.0)  # n <= 10
    x = np.arange(11.0)
    mean, se = mean_and_se(x)
    assert mean == 5.0 and se == pytest.approx(math.sqrt((np.mean(x * x) - 25.0) / 10))


def test_llama_block_hand_checked():
    # 12 tokens: nll_ref = 1.0 each, nll_cand = 1.0 or 1.5 alternating; KL 0..0.11; delta_p ±0.01; 9 of 12 agree
    nr = np.ones(12)
    nc = np.array([1.0, 1.5] * 6)
    kl = np.arange(12) / 100.0
    dp = np.array([0.01, -0.01] * 6)
    agree = np.array([1] * 9 + [0] * 3)
    st = llama_kl_statistics(nr, nc, kl, dp, agree)
    assert st["n"] == 12
    assert st["ppl_ref"]["value"] == pytest.approx(math.e) and st["ppl_ref"]["se"] == 0.0
    assert st["ppl_cand"]["value"] == pytest.approx(math.exp(1.25))
    # SE of nll_cand: sqrt((mean(x²) - mean(x)²)/(n-1)) = sqrt((1.625 - 1.5625)/11)
    assert st["ppl_cand"]["se"] == pytest.approx(math.exp(1.25) * math.sqrt(0.0625 / 11))
    assert st["mean_ln_ppl_ratio"]["value"] == pytest.approx(0.25)
    assert st["ppl_ratio"]["value"] == pytest.approx(math.exp(0.25))
    assert st["cor_ln_ppl"] is None  # reference NLL is constant
    assert st["kl"]["mean"] == pytest.approx(0.055) and st["kl"]["max"] == 0.11 and st["kl"]["min"] == 0.0
    assert st["kl"]["median"] == pytest.approx(0.055) and st["kl"]["p90"] == pytest.approx(0.099)
    assert st["delta_p"]["mean"] == pytest.approx(0.0, abs=1e-15) and st["delta_p"]["rms"] == pytest.approx(0.01)
    assert st["same_top_p"]["value"] == 0.75
    assert st["same_top_p"]["se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 11))


def test_llama_block_without_labels():
    st = llama_kl_statistics(None, None, np.array([0.1, 0.2]), None, np.array([1, 1]))
    assert st["ppl_ref"] is None and st["delta_p"] is None and st["kl"]["mean"] == pytest.approx(0.15)


def test_percentiles_equal_numpy_linear_bit_for_bit_on_finite_values():
    from analyze.summary import _percentile_linear
    rng = np.random.default_rng(1)
    for _ in range(3000):
        n = int(rng.integers(1, 30))
        x = rng.standard_normal(n) * 10.0 ** int(rng.integers(-5, 5))
        got = [_percentile_linear(np.sort(x), q) for q in (50, 90, 99)]
        np.testing.assert_array_equal(got, np.percentile(x, [50, 90, 99]))


@pytest.mark.parametrize("values, expected", [
    ([1.0, 2.0, math.inf], {"p50": 2.0, "p90": math.inf, "p99": math.inf, "min": 1.0, "max": math.inf}),
    ([1.0, math.inf], {"p50": math.inf, "min": 1.0}),
    ([-math.inf, 1.0, 2.0], {"p50": 1.0, "min": -math.inf, "max": 2.0}),
    ([-math.inf, -math.inf, 5.0], {"p50": -math.inf, "p99": -math.inf, "max": 5.0}),
    ([math.inf, math.inf], {"p50": math.inf, "mean": math.inf, "std": 0.0}),
], ids=["finite-then-inf", "one-and-inf", "minus-inf-first", "two-minus-inf", "all-inf"])
def test_percentiles_next_to_infinities_take_the_limit(values, expected):
    # numpy's own lerp gives NaN here (inf * 0); docs/METRICS.md section 5 keeps infinities in percentiles, so the
    # limit is right
    out = aggregate(values)
    for key, want in expected.items():
        assert out[key] == want, (key, out[key], want)
