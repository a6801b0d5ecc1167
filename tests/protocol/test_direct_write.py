"""Records written with os.pwrite at their dataset's offset (uncompressed, 64 KiB to the chunk size) read back
exactly, through DumpReader and through plain h5py, beside records written by HDF5 itself."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from protocol import DumpWriter, RecordKey, open_dump, validate
from protocol.dump_writer import _DIRECT_BYTES, DEFAULT_CHUNK_BYTES
from tests.protocol.support import golden_manifest, same_bits


def _arrays() -> dict:
    rng = np.random.default_rng(0)
    n = _DIRECT_BYTES // 4 + 17
    return {
        "f32": rng.standard_normal((n,)).astype(np.float32),  # direct
        "f64": rng.standard_normal((n // 2, 2)),  # direct, 2-D
        "i8": rng.integers(-128, 128, 3 * _DIRECT_BYTES, dtype=np.int8),  # direct
        "bf16": rng.integers(0, 1 << 16, (n, 2), dtype=np.uint16),  # bfloat16 bit patterns, direct
        "f16_view": rng.standard_normal((2 * n, 3)).astype(np.float16)[:, 1],  # strided input, direct
        "small": rng.standard_normal(100).astype(np.float32),  # below the threshold: through HDF5
        "chunked": rng.standard_normal(DEFAULT_CHUNK_BYTES // 4 + 1).astype(np.float32),  # chunked, HDF5
        "bool": rng.random(_DIRECT_BYTES * 2) < 0.5,  # not a plain number type: through HDF5
    }


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_direct_and_hdf5_written_records_read_back_exactly(tmp_path, compression):
    path = str(tmp_path / "d.h5")
    arrays = _arrays()
    with DumpWriter(path, golden_manifest(), compression=compression) as w:
        for name, a in arrays.items():
            w.add(RecordKey(0, 0, f"{name}:out"), a, dtype="bfloat16" if name == "bf16" else None)
    assert validate(path).count == len(arrays)
    with open_dump(path) as r:
        infos = {name: r.record(f"s0/t0/{name}:out#0") for name in arrays}
        for name, a in arrays.items():
            assert same_bits(r.read(infos[name], raw=True), a), name
    with h5py.File(path, "r") as f:
        for name, a in arrays.items():
            ds = f[infos[name].data]
            assert same_bits(ds[()], a), name  # HDF5 itself sees the bytes
            if compression == "none" and name in ("f32", "f64", "i8", "bf16", "f16_view"):
                assert ds.chunks is None and ds.id.get_offset() is not None


def test_a_dump_with_direct_records_survives_reopening_for_every_block_read(tmp_path):
    path = str(tmp_path / "d.h5")
    a = np.arange(5 * _DIRECT_BYTES // 4, dtype=np.float32).reshape(5, -1)
    with DumpWriter(path, golden_manifest()) as w:
        for i in range(20):
            w.add(RecordKey(0, 0, f"m{i}:out"), a + i)
    with open_dump(path) as r:
        for i, info in enumerate(r.records()):
            blocks = list(r.iter_blocks(info, 1000))
            assert same_bits(np.concatenate(blocks), (a + i).reshape(-1))
