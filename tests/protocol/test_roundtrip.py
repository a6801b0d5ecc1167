"""Round-trip properties of dumps: every dtype, shape and special value comes back bit for bit, with the right
decoded values and statistics equal to a plain float64 numpy reference."""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import DumpWriter, RecordKey, bfloat16_bits, compute_stats, decode, open_dump
from tests.protocol.support import (
    BIT_PATTERNS, PROPERTY, assert_stats_match, golden_manifest, reference_stats, same_bits, tagged_arrays,
)

ml_dtypes = pytest.importorskip("ml_dtypes")  # installed with onnx (extra 'onnx'); an independent fp8/bf16 decoder


def _key(i: int) -> RecordKey:
    return RecordKey(0, 0, f"layers.{i}:out")


@PROPERTY
@given(st.lists(tagged_arrays(bounded=True), min_size=1, max_size=6))
def test_records_round_trip_bits_values_and_stats(items):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.h5")
        with DumpWriter(path, golden_manifest()) as w:
            for i, (logical, arr) in enumerate(items):
                w.add(_key(i), arr, dtype=logical)
        with open_dump(path) as r:
            records = r.records()
            assert [rec.seq for rec in records] == list(range(len(items)))
            for i, (logical, arr) in enumerate(items):
                info = r.record(_key(i))
                assert info.dtype == logical and info.shape == arr.shape and info.storage == "full"
                raw = r.read(info, raw=True)
                assert same_bits(raw, arr), logical
                values = r.read(info)
                expected = _independent_decode(arr, logical)
                assert values.shape == arr.shape
                assert same_bits(values, expected) or _same_values(values, expected), logical
                assert_stats_match(info.stats, reference_stats(expected))


def _independent_decode(arr: np.ndarray, logical: str) -> np.ndarray:
    """Values of stored bits through ml_dtypes (not through protocol.dtypes)."""
    if logical in BIT_PATTERNS:
        return arr.view(getattr(ml_dtypes, logical)).astype(np.float32)
    return arr


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same = (a == b) & (np.signbit(a) == np.signbit(b))
    return bool(np.all(both_nan | same))


@PROPERTY
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
                  elements=st.floats(width=32, allow_subnormal=True)))
def test_bfloat16_bits_rounds_like_ml_dtypes(values):
    bits = bfloat16_bits(values)
    want = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan = np.isnan(values)
    assert np.array_equal(bits[~nan], want[~nan])
    assert np.all(np.isnan(decode(bits[nan], "bfloat16")))


@pytest.mark.parametrize("logical", sorted(BIT_PATTERNS))
def test_fp8_and_bf16_decode_tables_match_ml_dtypes_for_every_code(logical):
    storage = BIT_PATTERNS[logical]
    codes = np.arange(256 if storage == "uint8" else 65536, dtype=np.uint64).astype(storage)
    got = decode(codes, logical)
    want = codes.view(getattr(ml_dtypes, logical)).astype(np.float32)
    assert got.dtype == np.float32
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))  # -0.0 and infinities included


def test_ml_dtypes_arrays_are_stored_as_bit_patterns(tmp_path):
    values = np.array([1.5, -0.0, np.inf, np.nan, 3e38, 1e-40], dtype=np.float32)
    path = str(tmp_path / "d.h5")
    with DumpWriter(path, golden_manifest()) as w:
        w.add(_key(0), values.astype(ml_dtypes.bfloat16))
        w.add(_key(1), np.array([0.5, -448.0, 3.0], dtype=ml_dtypes.float8_e4m3fn))
    with open_dump(path) as r:
        assert r.record(_key(0)).dtype == "bfloat16"
        assert same_bits(r.read(_key(0), raw=True), values.astype(ml_dtypes.bfloat16).view(np.uint16))
        assert r.read(_key(1)).tolist() == [0.5, -448.0, 3.0]
        assert r.record(_key(1)).stats.min == -448.0


def test_statistics_of_special_values_and_empty_tensors():
    s = compute_stats(np.array([np.nan, np.inf, -np.inf, 2.0, -4.0], dtype=np.float32))
    assert (s.numel, s.nan_count, s.inf_count, s.min, s.max, s.abs_max, s.mean) == (5, 1, 2, -4.0, 2.0, 4.0, -1.0)
    assert s.std == 3.0 and s.l2 == math.sqrt(20.0)
    for arr in (np.zeros((0, 3), np.float32), np.array([np.nan, np.inf])):
        s = compute_stats(arr)
        assert all(math.isnan(getattr(s, f)) for f in ("min", "max", "mean", "std", "abs_max", "l2"))
    s = compute_stats(np.array([True, False, True]))
    assert (s.min, s.max, s.mean) == (0.0, 1.0, 2 / 3)


def test_statistics_span_many_blocks_with_nonfinite_values_in_some():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1_000_003) * 3 + 100).astype(np.float64)
    x[[5, 400_000, 999_999]] = [np.nan, np.inf, -np.inf]
    x[700_000:700_010] = np.nan
    assert_stats_match(compute_stats(x), reference_stats(x), rtol=1e-11)
    assert_stats_match(compute_stats(x.astype(np.float32)), reference_stats(x.astype(np.float32)), rtol=1e-11)


def test_writer_computes_statistics_of_large_records_on_a_thread_correctly(tmp_path):
    # above the writer's threshold for computing statistics concurrently with the write
    x = np.random.default_rng(2).standard_normal((1100, 1024)).astype(np.float32)
    x[3, 4] = np.nan
    path = str(tmp_path / "d.h5")
    with DumpWriter(path, golden_manifest()) as w:
        w.add(_key(0), x)
    with open_dump(path) as r:
        assert_stats_match(r.record(_key(0)).stats, reference_stats(x), rtol=1e-11)
        assert same_bits(r.read(_key(0)), x)


def test_reduced_records_and_statistics_only_records_round_trip(tmp_path):
    full = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    whole = compute_stats(full)
    path = str(tmp_path / "d.h5")
    with DumpWriter(path, golden_manifest()) as w:
        w.add_stats(_key(0), whole, dtype="bfloat16", shape=(2, 3, 4), module_type="Linear")
        w.add(_key(1), full[:, :1], stats=whole, storage="slice", reduction={"axis": 1, "start": 0, "stop": 1},
              orig_shape=full.shape)
        w.add(_key(2), np.array([23.0, 22.0], np.float32), stats=whole, storage="topk", reduction={"k": 2},
              orig_shape=full.shape, aux=np.array([23, 22], np.int64), meta={"onnx_value": "v"})
        with pytest.raises(ValueError, match="statistics of the whole tensor"):
            w.add(_key(3), full[:1], storage="slice")
        with pytest.raises(ValueError, match="duplicate record key"):
            w.add(_key(2), full)
    with open_dump(path) as r:
        s = r.record(_key(0))
        assert (s.storage, s.has_data, s.shape, s.dtype, s.stats, s.module_type) == (
            "stats", False, (2, 3, 4), "bfloat16", whole, "Linear")
        with pytest.raises(ValueError, match="statistics only"):
            r.read(s)
        sl = r.record(_key(1))
        assert (sl.shape, sl.orig_shape, sl.reduction, sl.stats) == ((2, 1, 4), (2, 3, 4), {"axis": 1, "start": 0,
                                                                                             "stop": 1}, whole)
        assert same_bits(r.read(sl), full[:, :1])
        tk = r.record(_key(2))
        assert r.read_aux(tk).tolist() == [23, 22] and tk.meta == {"onnx_value": "v"}
        assert len(r) == 3 and str(_key(2)) in r


def test_hostile_auxiliary_arrays_are_refused_not_allocated(tmp_path):
    import h5py

    from protocol import CorruptDumpError, DumpWriter, Manifest, RecordKey, compute_stats, open_dump
    path = str(tmp_path / "d.h5")
    with DumpWriter(path, Manifest()) as w:
        w.add(RecordKey(0, 0, ":out.logits"), np.ones((2, 3), np.float32), storage="topk", reduction={"k": 3},
              stats=compute_stats(np.ones((2, 5))), orig_shape=(2, 5),
              aux=np.zeros((2, 3), np.int64))
        w.add_array("generated_tokens.s0", np.arange(4))
    with h5py.File(path, "r+") as f:  # a hostile edit: huge declared (never written) datasets
        del f["arrays/generated_tokens.s0"]
        f.create_dataset("arrays/generated_tokens.s0", shape=(1 << 40,), dtype="int64", chunks=(1024,))
        aux = f["index"][0]["aux"].decode()
        del f[aux]
        f.create_dataset(aux, shape=(1 << 20, 1 << 20), dtype="int64", chunks=(1, 1024))
    with open_dump(path) as d:
        with pytest.raises(CorruptDumpError, match="declares 8192.0 GiB"):
            d.array("generated_tokens.s0")
        with pytest.raises(CorruptDumpError, match="auxiliary array of record s0/t0/:out.logits#0 does not match"):
            d.read_aux(d.records()[0])


_JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5)
                            | st.floats(allow_nan=False), lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


@given(st.lists(st.integers(min_value=0, max_value=1 << 40), max_size=6),
       st.dictionaries(st.text(max_size=6), _JSON_VALUES, max_size=4))
def test_index_json_shortcuts_write_what_json_dumps_writes(shape, meta):
    """The index's JSON columns take a shortcut (protocol/records.py); the text must stay json.dumps's, byte for
    byte, or the golden files and older readers would see another format."""
    import json

    from protocol.records import _json_dict, _json_shape
    assert _json_shape(tuple(shape)) == json.dumps(shape)
    assert _json_shape(np.array(shape, dtype=np.int64)) == json.dumps(shape)
    assert _json_dict(meta) == json.dumps(meta, sort_keys=True)
