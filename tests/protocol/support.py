"""Helpers shared by the protocol tests: a bounded hypothesis profile, array strategies, a numpy reference."""
from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import Manifest, TensorStats

#: The repository's root folder.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script(*parts: str):
    """Import a script that is not in a package (``load_script("tools", "get_thresholds.py")``), by path."""
    path = os.path.join(REPO, *parts)
    spec = importlib.util.spec_from_file_location(os.path.splitext(parts[-1])[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

def kernel_path(path: str, monkeypatch, module) -> str:
    """Make ``module`` (one with a ``_kernels()`` loader: protocol.stats, analyze.logit_metrics) use its compiled
    kernels (``path == "compiled"``; the test is skipped without numba) or its numpy path (``"numpy"``)."""
    if path == "compiled":
        pytest.importorskip("numba")
        assert module._kernels() is not None
    else:
        monkeypatch.setattr(module, "_kernels", lambda: None)
    return path


#: Bounded examples, no deadline (file I/O timing varies on a shared machine), no example database in the tree.
PROPERTY = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0]
NATIVE_FLOATS = {"float64": 64, "float32": 32, "float16": 16}
INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
BIT_PATTERNS = {"bfloat16": "uint16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8",
                "float8_e4m3fnuz": "uint8", "float8_e5m2fnuz": "uint8"}

shapes = st.one_of(
    st.just(()),                                                   # 0-d
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),  # includes empty
)


def float_values(width: int, *, bounded: bool = False) -> st.SearchStrategy:
    """Floats of a width with NaN, +-Inf, -0.0 and subnormals; ``bounded`` keeps float64 squares finite."""
    limit = 1e150 if (bounded and width == 64) else None
    finite = st.floats(min_value=-limit if limit else None, max_value=limit, width=width, allow_nan=False,
                       allow_infinity=False, allow_subnormal=True)
    return st.one_of(finite, st.sampled_from(SPECIAL_FLOATS),
                     st.sampled_from([float(np.finfo(f"float{width}").smallest_subnormal),
                                      -float(np.finfo(f"float{width}").smallest_subnormal)]))


@st.composite
def tagged_arrays(draw, *, bounded: bool = False):
    """``(logical dtype, stored array)``: native arrays, or bit-pattern arrays for bfloat16/fp8."""
    kind = draw(st.sampled_from(["float", "int", "bool", "bits"]))
    shape = draw(shapes)
    if kind == "float":
        name = draw(st.sampled_from(sorted(NATIVE_FLOATS)))
        arr = draw(hnp.arrays(name, shape, elements=float_values(NATIVE_FLOATS[name], bounded=bounded)))
        return name, arr
    if kind == "int":
        name = draw(st.sampled_from(INTS))
        return name, draw(hnp.arrays(name, shape))
    if kind == "bool":
        return "bool", draw(hnp.arrays(np.bool_, shape))
    name = draw(st.sampled_from(sorted(BIT_PATTERNS)))
    return name, draw(hnp.arrays(BIT_PATTERNS[name], shape))  # every bit pattern, NaNs and infinities included


def reference_stats(values: np.ndarray) -> TensorStats:
    """The statistics the protocol promises, computed the plain way in float64 numpy."""
    x = np.asarray(values).astype(np.float64).reshape(-1)
    nan = int(np.isnan(x).sum())
    inf = int(np.isinf(x).sum())
    f = x[np.isfinite(x)]
    if f.size == 0:
        return TensorStats(x.size, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, nan, inf)
    return TensorStats(x.size, float(f.min()), float(f.max()), float(f.mean()), float(f.std()),
                       float(np.abs(f).max()), float(np.sqrt(np.sum(f * f))), nan, inf)


def assert_stats_match(got: TensorStats, want: TensorStats, rtol: float = 1e-9) -> None:
    """Counts, min, max and abs_max exactly; mean, std and l2 to ``rtol`` (summation order differs)."""
    for name in ("numel", "nan_count", "inf_count"):
        assert getattr(got, name) == getattr(want, name), name
    for name in ("min", "max", "abs_max"):
        g, w = getattr(got, name), getattr(want, name)
        assert (math.isnan(g) and math.isnan(w)) or g == w, (name, g, w)
    scale = max(abs(want.min), abs(want.max)) if not math.isnan(want.min) else 0.0
    for name in ("mean", "std", "l2"):
        g, w = getattr(got, name), getattr(want, name)
        if math.isnan(w):
            assert math.isnan(g), (name, g)
            continue
        # mean/std errors scale with the data's magnitude, not with the (possibly tiny) result
        ref = scale if name != "l2" else abs(w)
        assert abs(g - w) <= rtol * ref + 1e-300, (name, g, w)


def golden_manifest(**overrides) -> Manifest:
    """A manifest with fixed values (no clock, no hostname), for files whose bytes must not vary."""
    kwargs = dict(run_id="test-run", label="cpu-fp32", producer={"name": "tensorparity", "version": "0.0.0-test"},
                  created="2026-01-01T00:00:00+00:00", host="test-host", model={"id": "tiny", "hash": "0" * 64},
                  framework={"name": "numpy", "version": "test"}, dtype="float32")
    kwargs.update(overrides)
    return Manifest(**kwargs)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
