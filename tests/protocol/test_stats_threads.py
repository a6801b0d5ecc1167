"""compute_stats with a helper thread gives exactly the numbers of the single-threaded pass."""
from __future__ import annotations

import numpy as np
import pytest

from protocol import compute_stats
from protocol.stats import _BLOCK


@pytest.mark.parametrize("kind", ["float32", "float64", "int32", "nonfinite", "bool"])
def test_two_threads_give_identical_statistics(kind):
    rng = np.random.default_rng(0)
    n = 5 * _BLOCK + 123  # several blocks and a partial one
    x = {"float32": lambda: (rng.standard_normal(n) * 3 + 7).astype(np.float32),
         "float64": lambda: rng.standard_normal(n) * 1e6 + 1e9,
         "int32": lambda: rng.integers(-1000, 1000, n).astype(np.int32),
         "nonfinite": lambda: np.where(rng.random(n) < 0.01, np.nan, rng.standard_normal(n)).astype(np.float32),
         "bool": lambda: rng.random(n) < 0.3}[kind]()
    if kind == "nonfinite":
        x[:_BLOCK] = np.inf  # a block with no finite element at all
    one, two = compute_stats(x), compute_stats(x, threads=2)
    assert one == two or (kind == "nonfinite" and repr(one) == repr(two))
    finite = x[np.isfinite(x)] if x.dtype.kind == "f" else x.astype(np.float64)
    assert one.mean == pytest.approx(float(np.mean(finite, dtype=np.float64)), rel=1e-12)
    assert one.std == pytest.approx(float(np.std(finite, dtype=np.float64)), rel=1e-10)
