"""Streamed writes (tensors larger than memory) and chunked reads reassemble exactly, for any shape and block size."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.read_ahead import read_ahead
from protocol import DumpWriter, RecordKey, block_slices, compute_stats, open_dump
from tests.protocol.support import (
    PROPERTY, assert_stats_match, float_values, golden_manifest, reference_stats, same_bits,
)

KEY = RecordKey(1, 2, "model.layers.0.mlp:out", 0)


@st.composite
def streamed(draw):
    """An array with at least one row, and cut points along its first axis."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6).filter(lambda s: s[0] > 0))
    dtype = draw(st.sampled_from(["float32", "float16", "bfloat16", "int32"]))
    if dtype == "int32":
        arr = draw(hnp.arrays("int32", shape))
    elif dtype == "bfloat16":
        arr = draw(hnp.arrays("uint16", shape))
    else:
        arr = draw(hnp.arrays(dtype, shape, elements=float_values(32 if dtype == "float32" else 16)))
    cuts = sorted(draw(st.sets(st.integers(1, shape[0] - 1), max_size=4))) if shape[0] > 1 else []
    return dtype, arr, cuts


@PROPERTY
@given(streamed(), st.integers(1, 40))
def test_streamed_record_equals_the_whole_and_blocks_reassemble(item, max_elements):
    logical, arr, cuts = item
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.h5")
        with DumpWriter(path, golden_manifest(), chunk_bytes=64) as w:
            with w.stream(KEY, arr.shape, logical) as s:
                for piece in np.split(arr, cuts):
                    s.write(piece)
        with open_dump(path) as r:
            info = r.record(KEY)
            assert info.shape == arr.shape and info.dtype == logical
            assert same_bits(r.read(info, raw=True), arr)
            values = r.read(info)
            assert_stats_match(info.stats, reference_stats(values))
            blocks = list(r.iter_blocks(info, max_elements, raw=True))
            assert all(b.ndim == 1 for b in blocks)
            if arr.size:
                assert all(b.size <= max_elements for b in blocks) or len(blocks) == 1 and blocks[0].size <= max(
                    max_elements, 1)
            joined = np.concatenate(blocks) if blocks else np.empty(0, arr.dtype)
            assert same_bits(joined, arr.reshape(-1))
            decoded = np.concatenate(list(r.iter_blocks(info, max_elements)))
            assert same_bits(decoded, values.reshape(-1))
            # two alternating buffers: a block stays intact after the next one has been read
            reused = r.iter_blocks(info, max_elements, raw=True, reuse=True)
            previous = None
            for i, want in enumerate(blocks):
                got = next(reused)
                assert same_bits(got, want)
                if previous is not None:
                    assert same_bits(previous, blocks[i - 1])
                previous = got
            assert next(reused, None) is None
            ahead = [b.copy() for b in read_ahead(r.iter_blocks(info, max_elements, reuse=True))]
            assert same_bits(np.concatenate(ahead), values.reshape(-1))


@PROPERTY
@given(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=7), st.integers(-2, 300))
def test_block_slices_cover_every_element_once_in_c_order(shape, max_elements):
    arr = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    pieces = [arr[idx].reshape(-1) for idx in block_slices(shape, max_elements)] if shape else [arr.reshape(-1)]
    joined = np.concatenate(pieces) if pieces else np.empty(0, np.int64)
    assert np.array_equal(joined, arr.reshape(-1))
    limit = max(max_elements, 1)
    assert all(p.size <= limit for p in pieces) or len(pieces) == 1


def test_block_slices_of_a_shape_too_large_to_allocate_stay_bounded():
    slices = block_slices((1 << 20, 1 << 20), 1 << 22)
    first = next(slices)
    assert first == (slice(0, 4),)  # 4 rows of 2**20: 2**22 elements, never the whole 2**40


def test_stream_refuses_misfits_and_incomplete_writes(tmp_path):
    path = str(tmp_path / "d.h5")
    with pytest.raises(ValueError, match="wrote 2 of 3 rows"):
        with DumpWriter(path, golden_manifest()) as w:
            with w.stream(KEY, (3, 2), "float32") as s:
                s.write(np.zeros((2, 2), np.float32))
    assert not os.path.exists(path) and not os.path.exists(path + ".partial")
    with DumpWriter(path, golden_manifest()) as w:
        with pytest.raises(ValueError, match="does not fit"):
            with w.stream(KEY, (3, 2), "float32") as s:
                s.write(np.zeros((1, 3), np.float32))
        with pytest.raises(ValueError, match="overflows"):
            with w.stream(RecordKey(0, 0, "b:out"), (1, 2), "float32") as s:
                s.write(np.zeros((2, 2), np.float32))
        with pytest.raises(ValueError, match="0-d"):
            with w.stream(RecordKey(0, 0, "c:out"), (), "float32"):
                pass
        with w.stream(RecordKey(0, 0, "d:out"), (2, 2), "float32") as s:
            s.write(np.ones((2, 2), np.float32))
    with open_dump(path) as r:
        assert [str(i.key) for i in r.records()] == ["s0/t0/d:out#0"]


def test_large_streamed_record_uses_chunks_and_bounded_blocks(tmp_path):
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((64, 1024)).astype(np.float32) for _ in range(20)]
    path = str(tmp_path / "big.h5")
    with DumpWriter(path, golden_manifest(), chunk_bytes=1 << 16) as w:
        with w.stream(KEY, (64 * 20, 1024), "float32") as s:
            for r in rows:
                s.write(r)
    whole = np.concatenate(rows)
    with open_dump(path) as r:
        info = r.record(KEY)
        assert_stats_match(info.stats, compute_stats(whole), rtol=1e-11)
        sizes = [b.size for b in r.iter_blocks(info, 5000)]
        assert max(sizes) <= 5000 and sum(sizes) == whole.size
        assert same_bits(np.concatenate(list(r.iter_blocks(info, 5000))), whole.reshape(-1))
