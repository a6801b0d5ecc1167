"""Format 1.1 checksums (SPEC.md section 8.1): what the writer stores on each of its paths, and that every read of
damaged bytes raises ``CorruptDumpError`` naming the file and the record, with the exact message."""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from protocol import FORMAT_VERSION, CallLogBuilder, CorruptDumpError, DumpWriter, RecordKey, TensorStats, bfloat16_bits, compute_stats, open_dump
from protocol import validate
from protocol.checksum import array_crc32c, bytes_crc32c, encode_fields, header_crc32c
from protocol.dump_reader import DAMAGED_HINT
from protocol.records import CHECKSUM_COLUMNS, INDEX_DTYPE, REQUIRED_COLUMNS
from tests.protocol.support import REPO, golden_manifest

HINT = DAMAGED_HINT[:1].upper() + DAMAGED_HINT[1:]
GOLDEN_10 = os.path.join(REPO, "tests", "data", "golden", "dump-v1.0.h5")


def _k(site: str, step: int = 0) -> RecordKey:
    return RecordKey(0, step, site, 0)


def test_crc32c_is_the_standard_castagnoli_crc():
    assert bytes_crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C (RFC 3720)
    assert bytes_crc32c(b"") == 0
    assert array_crc32c(np.frombuffer(b"123456789", np.uint8)) == 0xE3069283


def test_array_crc_is_of_the_c_order_little_endian_bytes_and_runs_over_pieces():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    whole = bytes_crc32c(a.astype("<f4").tobytes())
    assert array_crc32c(a) == whole
    assert array_crc32c(a.astype(">f4")) == whole  # byte order of the array does not matter
    assert array_crc32c(np.asfortranarray(a)) == whole  # nor its memory layout
    crc = 0
    for piece in (a[:1], a[1:3], a[3:]):
        crc = array_crc32c(piece, crc)
    assert crc == whole
    assert array_crc32c(np.float32(2.5)) == bytes_crc32c(np.float32(2.5).tobytes())  # 0-d
    assert array_crc32c(np.zeros((0, 4), np.float32), 7) == 7  # empty: nothing added
    assert a.flags.writeable  # the read-only view the CRC needs leaves the caller's array alone


def test_encode_fields_encodes_by_column_type_not_value_type():
    assert encode_fields(["ab", 3, 3], "sqd") == (b"\x02" + b"\0" * 7 + b"ab" + (3).to_bytes(8, "little")
                                                  + np.float64(3.0).tobytes())
    nan = np.array([0x7FF8000000001234], np.uint64).view(np.float64)[0]
    assert encode_fields([nan], "d") == (0x7FF8000000001234).to_bytes(8, "little")  # NaN payload kept
    assert encode_fields([b"\xc3\xa9"], "s") == encode_fields(["\u00e9"], "s")


def _write_every_path(path: str) -> dict:
    """A dump through every way the writer stores data; returns the arrays as stored, by key text."""
    rng = np.random.default_rng(1)
    stored = {}
    with DumpWriter(path, golden_manifest(), chunk_bytes=128 << 10) as w:
        def add(site, arr, **kw):
            stored[f"s0/t0/{site}#0"] = np.asarray(arr)
            return w.add(_k(site), arr, **kw)
        add("small:out", np.arange(6, dtype=np.float32).reshape(2, 3))
        add("direct:out", rng.standard_normal((48, 512)).astype(np.float32))  # 96 KiB: os.pwrite
        big = rng.standard_normal((128, 512)).astype(np.float32)
        add("chunked:out", big)  # 256 KiB > chunk_bytes: chunked, statistics on the helper thread
        add("given:out", big * 2, stats=compute_stats(big * 2))  # statistics given: the CRC is the helper's task
        add("given_small:out", np.ones(4, np.float64), stats=compute_stats(np.ones(4)))
        add("bf16:out", bfloat16_bits(rng.standard_normal(64).astype(np.float32)), dtype="bfloat16")
        add("strided:out", big[:, ::2])  # not contiguous
        add("scalar:out", np.array(1.5, np.float32))
        add("empty:out", np.zeros((0, 3), np.float32))
        add("mask:out", np.array([[True, False]]))
        logits = rng.standard_normal((2, 50)).astype(np.float32)
        top = np.argsort(-logits, axis=-1)[:, :5]
        w.add(_k(":out.logits", 1), np.take_along_axis(logits, top, -1), stats=compute_stats(logits),
              storage="topk", reduction={"kind": "topk", "k": 5}, orig_shape=logits.shape, aux=top)
        stored["s0/t1/:out.logits#0"] = np.take_along_axis(logits, top, -1)
        stored["aux"] = top
        w.add_stats(_k("stats:out"), TensorStats(4, 0.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0, 0), dtype="float32",
                    shape=(2, 2))
        slabs = [rng.standard_normal((8, 256)).astype(np.float32) for _ in range(4)]
        with w.stream(_k("stream:out"), (32, 256), "float32") as rs:
            for s in slabs:
                rs.write(s)
        stored["s0/t0/stream:out#0"] = np.concatenate(slabs)
        w.add_array("generated_tokens.s0", np.array([3, 1, 4], np.int64))
    return stored


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_every_write_path_stores_the_crc_of_the_logical_stored_bytes(tmp_path, compression):
    path = str(tmp_path / "d.h5")
    if compression == "none":
        stored = _write_every_path(path)
    else:  # the same records, compressed: the checksums do not depend on the filter
        stored = _write_every_path(str(tmp_path / "plain.h5"))
        with DumpWriter(path, golden_manifest(), compression="lz4", chunk_bytes=128 << 10) as w:
            with open_dump(str(tmp_path / "plain.h5")) as r:
                for info in r.records():
                    if info.storage == "stats":
                        w.add_stats(info.key, info.stats, dtype=info.dtype, shape=info.shape)
                    else:
                        w.add(info.key, r.read(info, raw=True), dtype=info.dtype, stats=info.stats,
                              storage=info.storage, reduction=info.reduction, orig_shape=info.orig_shape,
                              aux=r.read_aux(info) if info.aux else None)
                w.add_array("generated_tokens.s0", r.array("generated_tokens.s0"))
    with open_dump(path) as r:
        assert r.checksums
        for info in r.records():
            if not info.has_data:
                assert info.data_crc32c is None
                continue
            assert info.data_crc32c == array_crc32c(stored[str(info.key)]), info.key
            assert info.data_crc32c == bytes_crc32c(np.ascontiguousarray(stored[str(info.key)]).tobytes())
            assert (info.aux_crc32c is None) == (not info.aux)
        topk = r.record("s0/t1/:out.logits#0")
        assert topk.aux_crc32c == array_crc32c(stored["aux"])
    with h5py.File(path, "r", locking=False) as f:
        assert int(f["arrays/generated_tokens.s0"].attrs["crc32c"]) == array_crc32c(np.array([3, 1, 4], np.int64))
        assert f.attrs["header_crc32c"] == header_crc32c(
            "tensorparity.dump", FORMAT_VERSION, compression, 13, f["manifest"][()].decode())
    with open(path, "rb") as fh:
        assert fh.read(9)[8] == 3  # superblock version 3: HDF5 1.10's file format, metadata checksummed
    assert validate(path).summary().endswith(", checksums verified")


@pytest.fixture()
def dump(tmp_path) -> str:
    path = str(tmp_path / "d.h5")
    _write_every_path(path)
    return path


def _flip(path: str, offset: int, n: int = 1) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in old))


def _data_offset(path: str, key: str, aux: bool = False) -> int:
    with open_dump(path) as r:
        info = r.record(key)
        name = info.aux if aux else info.data
    with h5py.File(path, "r", locking=False) as f:
        ds = f[name]
        return ds.id.get_chunk_info(ds.id.get_num_chunks() - 1).byte_offset if ds.chunks else ds.id.get_offset()


@pytest.mark.parametrize("key", ["s0/t0/direct:out#0", "s0/t0/chunked:out#0", "s0/t0/small:out#0",
                                 "s0/t0/bf16:out#0", "s0/t0/stream:out#0", "s0/t0/scalar:out#0"])
def test_every_read_of_damaged_data_raises_naming_file_and_record(dump, key):
    _flip(dump, _data_offset(dump, key) + 2)
    message = f"{dump}: record {key}: data does not match its checksum. {HINT}"
    with open_dump(dump) as r:
        info = r.record(key)
        for raw in (False, True):
            with pytest.raises(CorruptDumpError) as exc:
                r.read(info, raw=raw)
            assert str(exc.value) == message
        for block in (7, 1000, 1 << 22):  # one block, many blocks: checked before the last one is handed out
            blocks = r.iter_blocks(info, block, reuse=True)
            taken = 0
            with pytest.raises(CorruptDumpError) as exc:
                for _ in blocks:
                    taken += 1
            assert str(exc.value) == message
            assert taken == max(len(list(_blocks_of(info.shape, block))) - 1, 0)
        other = r.record("s0/t0/small:out#0" if key != "s0/t0/small:out#0" else "s0/t0/direct:out#0")
        r.read(other)  # the other records are fine
    with pytest.raises(CorruptDumpError) as exc:
        validate(dump)
    assert str(exc.value) == message


def _blocks_of(shape, max_elements):
    from protocol import block_slices
    return block_slices(shape, max_elements) if shape else [()]


def test_a_damaged_second_side_of_a_zip_is_still_caught(dump, tmp_path):
    """zip() stops at the first exhausted iterator: the check must not wait for a next() that never comes."""
    key = "s0/t0/chunked:out#0"
    clean = str(tmp_path / "clean.h5")
    shutil.copyfile(dump, clean)
    _flip(dump, _data_offset(dump, key) + 100)
    with open_dump(clean) as a, open_dump(dump) as b:
        with pytest.raises(CorruptDumpError, match="chunked:out#0: data does not match its checksum"):
            for _ in zip(a.iter_blocks(key, 5000), b.iter_blocks(key, 5000)):
                pass


def test_damaged_aux_and_arrays_are_refused(dump):
    _flip(dump, _data_offset(dump, "s0/t1/:out.logits#0", aux=True))
    with h5py.File(dump, "r", locking=False) as f:
        array_offset = f["arrays/generated_tokens.s0"].id.get_offset()
    _flip(dump, array_offset)
    with open_dump(dump) as r:
        r.read("s0/t1/:out.logits#0")
        with pytest.raises(CorruptDumpError) as exc:
            r.read_aux("s0/t1/:out.logits#0")
        assert str(exc.value) == (f"{dump}: record s0/t1/:out.logits#0: auxiliary array does not match its "
                                  f"checksum. {HINT}")
        with pytest.raises(CorruptDumpError) as exc:
            r.array("generated_tokens.s0")
        assert str(exc.value) == f"{dump}: array 'generated_tokens.s0' does not match its checksum. {HINT}"


def _edit(path: str, fn) -> None:
    with h5py.File(path, "r+", locking=False) as f:
        fn(f)


def test_a_damaged_index_row_is_refused_at_open_naming_the_row(dump):
    def change(f):
        rows = f["index"][()]
        rows[3]["max"] = 1e9  # statistics, shape, anything: covered by the row's checksum
        f["index"][3] = rows[3]
    _edit(dump, change)
    with pytest.raises(CorruptDumpError) as exc:
        open_dump(dump)
    assert str(exc.value) == (f"{dump}: index row 3 (record s0/t0/given:out#0) does not match its checksum. "
                              f"{HINT}")


@pytest.mark.parametrize("attr, value", [("format_version", "1.0"), ("format_version", "1.7"),
                                         ("compression", "lz4"), ("record_count", 12)])
def test_root_attributes_and_manifest_are_covered_by_the_header_checksum(dump, attr, value):
    """A flipped bit can turn 1.1 into 1.0: verification is decided by the checksum columns, not the version."""
    _edit(dump, lambda f: f.attrs.__setitem__(attr, value))
    with pytest.raises(CorruptDumpError) as exc:
        open_dump(dump)
    assert str(exc.value) == f"{dump}: the manifest or the root attributes do not match their checksum. {HINT}"


def test_a_changed_manifest_is_refused(dump):
    def change(f):
        text = f["manifest"][()].decode().replace('"test-host"', '"tesT-host"')
        del f["manifest"]
        f.create_dataset("manifest", data=text, dtype=h5py.string_dtype("utf-8"))
    _edit(dump, change)
    with pytest.raises(CorruptDumpError, match="the manifest or the root attributes do not match their checksum"):
        open_dump(dump)


def test_a_1_1_dump_without_checksum_columns_is_refused(dump):
    def drop(f):
        rows = f["index"][()]
        old = np.dtype([(n, INDEX_DTYPE.fields[n][0]) for n in REQUIRED_COLUMNS])
        del f["index"]
        f.create_dataset("index", data=np.array([tuple(r[n] for n in REQUIRED_COLUMNS) for r in rows], old))
    _edit(dump, drop)
    with pytest.raises(CorruptDumpError) as exc:
        open_dump(dump)
    assert str(exc.value) == (f"{dump}: index lacks the checksum columns {list(CHECKSUM_COLUMNS)} of format 1.1. "
                              "The file is damaged; capture it again")


def test_a_1_0_dump_reads_unverified_and_validate_says_so():
    with open_dump(GOLDEN_10) as r:
        assert not r.checksums
        assert all(i.data_crc32c is None and i.aux_crc32c is None for i in r.records())
        r.read_aux("s0/t0/:out.logits#0")
        r.array("generated_tokens.s0")
    result = validate(GOLDEN_10)
    assert not result.checksums
    assert result.summary() == (f"OK  {GOLDEN_10}: dump v1.0, 24 records, inputs sha256 {result.sha256[:12]}, "
                                "no checksums (format 1.0): data not verified")


def test_a_mistagged_bit_pattern_dtype_is_refused_by_validate(dump):
    _edit(dump, lambda f: f["data/r00000005"].attrs.__setitem__("dtype", "float8_e5m2"))
    with pytest.raises(CorruptDumpError) as exc:
        validate(dump)
    assert str(exc.value) == (f"{dump}: record s0/t0/bf16:out#0: data is tagged dtype 'float8_e5m2' but the index "
                              "says bfloat16. The file is damaged; capture it again")


def test_call_structures_are_checksummed_and_a_changed_one_is_damage(tmp_path):
    """Format 1.2's /calls carries the CRC-32C of its JSON bytes: the reader returns the document as written, and
    refuses one whose bytes changed after writing (a signature rewritten in place) or whose layout is not a call log."""
    log = CallLogBuilder()
    log.add("model.layers.0", "x.Layer", 0, 0, 0, {"args": [{"tensor": "args.0"}], "kwargs": {"flag": {"value": True}}})
    path = str(tmp_path / "d.h5")
    w = DumpWriter(path, golden_manifest())
    w.add(RecordKey(0, 0, "model.layers.0:out", 0), np.ones(3, np.float32))
    w.set_calls(log.document())
    w.close()
    with open_dump(path) as r:
        assert r.calls().signature("model.layers.0", 0, 0, 0)["kwargs"] == {"flag": {"value": True}}
    with h5py.File(path, "r+") as f:  # same length, one value changed: only the checksum can tell
        raw = f["calls"][()]
        crc = f["calls"].attrs["crc32c"]
        del f["calls"]
        changed = raw.replace(b"true", b"tru1")
        f.create_dataset("calls", data=np.array(changed, dtype=h5py.string_dtype("utf-8", len(changed))))
        f["calls"].attrs["crc32c"] = crc
    with open_dump(path) as r, pytest.raises(CorruptDumpError, match="call structures .* do not match their checksum"):
        r.calls()
