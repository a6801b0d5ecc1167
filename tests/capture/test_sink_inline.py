"""Inline writes during CPU forwards (capture/sink.py ``write_inline``) and full-record statistics computed by the
writer."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from capture.policy import RecordPolicy
from capture.sink import PendingRecord, RecordSink, Resolved
from capture.torch_hooks import torch_capture
from protocol import CaptureError, DumpWriter, Manifest, RecordKey, compute_stats, open_dump


def _record(i: int, array: np.ndarray, resolve=None) -> PendingRecord:
    return PendingRecord(RecordKey(0, 0, f"m{i}:out"), "float32", array.shape, "full", array.nbytes,
                         resolve or (lambda: Resolved(None, array)))


def _threads_writing(sink: RecordSink) -> list:
    """Wraps the sink's DumpWriter.add to note which thread writes each record."""
    names, add = [], sink.writer.add

    def traced(*args, **kwargs):
        names.append(threading.current_thread().name)
        return add(*args, **kwargs)
    sink.writer.add = traced
    return names


def test_an_inline_put_is_written_on_the_callers_thread_before_it_returns(tmp_path):
    path = str(tmp_path / "d.h5")
    with RecordSink(DumpWriter(path, Manifest(label="t"))) as sink:
        names = _threads_writing(sink)
        sink.write_inline(True)
        for i in range(3):
            sink.put(_record(i, np.full((4, 4), i, dtype=np.float32)))
            assert sink.records == i + 1
        sink.write_inline(False)
        assert names == [threading.current_thread().name] * 3
    with open_dump(path) as d:
        assert [float(d.read(i)[0, 0]) for i in d.records()] == [0.0, 1.0, 2.0]


def test_an_inline_put_comes_after_what_was_queued_before_it(tmp_path):
    path = str(tmp_path / "d.h5")
    slow = np.full(8, 7, dtype=np.float32)

    def resolve_slowly():
        time.sleep(0.3)  # still queued when the inline put arrives
        return Resolved(None, slow)
    with RecordSink(DumpWriter(path, Manifest(label="t"))) as sink:
        sink.put(_record(0, slow, resolve_slowly))
        sink.write_inline(True)
        sink.put(_record(1, np.zeros(8, dtype=np.float32)))
        sink.write_inline(False)
    with open_dump(path) as d:
        assert [i.key.site for i in d.records()] == ["m0:out", "m1:out"]


def test_a_failed_inline_write_is_raised_at_once_and_leaves_no_dump(tmp_path):
    path = str(tmp_path / "d.h5")

    def broken():
        raise OSError("device lost")
    sink = RecordSink(DumpWriter(path, Manifest(label="t")))
    sink.write_inline(True)
    sink.put(_record(0, np.zeros(4, dtype=np.float32)))
    with pytest.raises(CaptureError, match="device lost"):
        sink.put(_record(1, np.zeros(4, dtype=np.float32), broken))
    with pytest.raises(CaptureError):
        sink.close()
    assert os.listdir(tmp_path) == []


class _Probe(torch.nn.Module):
    """Two linear layers; notes, during its forward, how many records were written, then changes ``a``'s output
    in place (the dump must hold the values the hook saw)."""

    def __init__(self, sink: RecordSink, fail: bool = False):
        super().__init__()
        self.a = torch.nn.Linear(32, 32)
        self.b = torch.nn.Linear(32, 32)
        self.sink, self.fail, self.seen, self.a_out = sink, fail, [], None

    def forward(self, x):
        y = self.a(x)
        self.a_out = y.clone()
        self.seen.append(self.sink.records)
        y.mul_(0)  # after the hook returned
        if self.fail:
            raise RuntimeError("planted")
        return self.b(y)


@pytest.fixture
def threads_on_every_core():
    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    yield
    torch.set_num_threads(before)


def test_a_cpu_forward_on_every_core_writes_inline_the_values_the_hooks_saw(tmp_path, threads_on_every_core):
    path = str(tmp_path / "d.h5")
    with RecordSink(DumpWriter(path, Manifest(label="t"))) as sink:
        names = _threads_writing(sink)
        model = _Probe(sink)
        with torch.no_grad(), torch_capture(model, sink, RecordPolicy(default="full")) as cap:
            model(torch.randn(2, 32))
            assert not sink.writes_inline
        assert model.seen == [3]  # root input, a's input and output: written before the hook returned
        assert sink.records == cap.records and set(names) == {threading.current_thread().name}
    with open_dump(path) as d:
        np.testing.assert_array_equal(d.read("s0/t0/a:out#0"), model.a_out.numpy())  # not the zeros
        for info in d.records():
            assert info.stats == compute_stats(d.read(info))


def test_a_forward_that_raises_turns_inline_writing_off(tmp_path, threads_on_every_core):
    path = str(tmp_path / "d.h5")
    with RecordSink(DumpWriter(path, Manifest(label="t"))) as sink:
        model = _Probe(sink, fail=True)
        with torch.no_grad(), torch_capture(model, sink, RecordPolicy(default="full")) as cap:
            with pytest.raises(RuntimeError, match="planted"):
                model(torch.randn(2, 32))
            assert not sink.writes_inline and model.seen == [3] and sink.records == cap.records


def test_a_forward_on_fewer_threads_than_cores_queues_copies(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    path = str(tmp_path / "d.h5")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with RecordSink(DumpWriter(path, Manifest(label="t"))) as sink:
            names = _threads_writing(sink)
            model = _Probe(sink)
            with torch.no_grad(), torch_capture(model, sink, RecordPolicy(default="full")):
                model(torch.randn(2, 32))
        assert set(names) == {"tensorparity-writer"}
        with open_dump(path) as d:  # the copy holds the values the hook saw
            np.testing.assert_array_equal(d.read("s0/t0/a:out#0"), model.a_out.numpy())
    finally:
        torch.set_num_threads(before)


def test_bfloat16_full_record_statistics_from_the_writer_match_the_tensor(tmp_path):
    path = str(tmp_path / "d.h5")
    lin = torch.nn.Linear(16, 16).to(torch.bfloat16)
    with torch.no_grad(), torch_capture(lin, DumpWriter(path, Manifest(label="t")), RecordPolicy(default="full")):
        out = lin(torch.randn(3, 16, dtype=torch.bfloat16))
    with open_dump(path) as d:
        (info,) = [i for i in d.records() if i.key.site == ":out"]
        assert info.stats == compute_stats(out.float().numpy())
