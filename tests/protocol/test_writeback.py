"""Early writeback (protocol/writeback.py): the DumpWriter asks the disk to start writing every few MiB of record
data, on every write path, through the dump's own file; the request is advice, so a refusal changes nothing else."""
from __future__ import annotations

import errno
import os
import sys

import numpy as np
import pytest

from protocol import DumpWriter, RecordKey, open_dump, writeback
from protocol import dump_writer
from protocol.dump_writer import _DIRECT_BYTES, DEFAULT_CHUNK_BYTES
from tests.protocol.support import golden_manifest, same_bits

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
STEP = 256 << 10  # the writeback step for these tests (the writer's is 8 MiB)


@pytest.fixture
def calls(monkeypatch):
    """The descriptors the writer passes to start_writeback (the real call still runs), with a small step."""
    seen = []

    def spy(fd: int) -> bool:
        seen.append((fd, os.fstat(fd).st_ino))
        return writeback.start_writeback(fd)
    monkeypatch.setattr(dump_writer, "_WRITEBACK_BYTES", STEP)
    monkeypatch.setattr(dump_writer, "start_writeback", spy)
    monkeypatch.setattr(dump_writer, "_WRITEBACK", True)
    return seen


def _records() -> dict:
    rng = np.random.default_rng(3)
    return {
        "direct": rng.standard_normal(3 * _DIRECT_BYTES // 4).astype(np.float32),  # os.pwrite, 192 KiB
        "small": rng.standard_normal(1000),  # HDF5, contiguous
        "chunked": rng.standard_normal(DEFAULT_CHUNK_BYTES // 4 + 5).astype(np.float32),  # HDF5, chunked, 4 MiB
        "direct2": rng.standard_normal(_DIRECT_BYTES // 8 * 3),  # os.pwrite, 192 KiB
    }


@linux_only
@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_the_disk_is_asked_to_write_every_step_of_record_data_on_every_write_path(tmp_path, calls, compression):
    path = str(tmp_path / "d.h5")
    arrays = _records()
    stream = np.arange(12 * 4096, dtype=np.float32).reshape(12, 4096)  # 192 KiB in 16 KiB slabs
    written, expected = 0, 0
    with DumpWriter(path, golden_manifest(), compression=compression) as w:
        inode = os.stat(w.partial_path).st_ino
        for name, a in arrays.items():
            w.add(RecordKey(0, 0, f"{name}:out"), a)
            written += a.nbytes
            if written >= STEP:
                expected, written = expected + 1, 0
            assert len(calls) == expected, name
        with w.stream(RecordKey(0, 0, "stream:out"), stream.shape, "float32") as rs:
            for i in range(12):
                rs.write(stream[i:i + 1])
                written += stream[i:i + 1].nbytes
                if written >= STEP:
                    expected, written = expected + 1, 0
                assert len(calls) == expected
    assert expected == 2  # the chunked record, then the fourth slab of the stream
    assert {ino for _, ino in calls} == {inode}  # always the dump's own file (ours or HDF5's descriptor)
    with open_dump(path) as r:
        for name, a in arrays.items():
            assert same_bits(r.read(r.record(f"s0/t0/{name}:out#0")), a), name
        assert same_bits(r.read(r.record("s0/t0/stream:out#0")), stream)


def test_a_refused_request_changes_nothing_but_is_not_made_again(tmp_path, monkeypatch):
    asked = []

    def refuse(fd: int) -> bool:
        asked.append(fd)
        return False
    monkeypatch.setattr(dump_writer, "_WRITEBACK_BYTES", STEP)
    monkeypatch.setattr(dump_writer, "start_writeback", refuse)
    monkeypatch.setattr(dump_writer, "_WRITEBACK", True)
    path = str(tmp_path / "d.h5")
    with DumpWriter(path, golden_manifest()) as w:
        for i in range(5):
            w.add(RecordKey(0, 0, f"m{i}:out"), np.full(STEP // 4, i, np.float32))
    assert len(asked) == 1
    with open_dump(path) as r:
        assert [float(r.read(info)[0]) for info in r.records()] == [0, 1, 2, 3, 4]


@linux_only
def test_start_writeback_on_a_real_file_and_on_a_pipe(tmp_path, caplog):
    data = np.random.default_rng(0).integers(0, 255, 16 << 20, dtype=np.uint8)
    fd = os.open(tmp_path / "f.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data.tobytes())
        assert writeback.start_writeback(fd) is True  # tmpfs says yes too (nothing to do there)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (tmp_path / "f.bin").read_bytes() == data.tobytes()
    r, w = os.pipe()
    try:
        with caplog.at_level("DEBUG", logger="protocol.writeback"):
            assert writeback.start_writeback(w) is False  # ESPIPE: refused, not raised
    finally:
        os.close(r)
        os.close(w)
    assert os.strerror(errno.ESPIPE) in caplog.text


def test_elsewhere_than_linux_nothing_is_attempted(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    assert writeback._load() is None
    monkeypatch.setattr(writeback, "_sync_file_range", None)
    assert writeback.start_writeback(0) is False
