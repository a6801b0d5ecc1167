"""The writer held during CPU forwards (capture/sink.py ``hold``) and full-record statistics computed on the writer."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from capture.policy import RecordPolicy
from capture.sink import PendingRecord, RecordSink, Resolved
from capture.torch_hooks import torch_capture
from protocol import DumpWriter, Manifest, RecordKey, compute_stats, open_dump


def _record(i: int, array: np.ndarray) -> PendingRecord:
    return PendingRecord(RecordKey(0, 0, f"m{i}:out"), "float32", array.shape, "full", array.nbytes,
                         lambda: Resolved(None, array))


def test_a_held_writer_writes_nothing_until_released(tmp_path):
    path = str(tmp_path / "d.h5")
    with RecordSink(DumpWriter(path, Manifest(label="t"))) as sink:
        sink.hold(True)
        for i in range(3):
            sink.put(_record(i, np.full((4, 4), i, dtype=np.float32)))
        time.sleep(0.3)  # ample time for an unheld writer to write three tiny records
        assert sink.records == 0
        sink.hold(False)
        deadline = time.monotonic() + 30
        while sink.records < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.records == 3
    with open_dump(path) as d:
        assert len(list(d.records())) == 3


def test_a_held_writer_still_drains_a_full_queue_and_the_close(tmp_path):
    path = str(tmp_path / "d.h5")
    arrays = [np.random.default_rng(i).standard_normal((64, 64)).astype(np.float32) for i in range(10)]
    with RecordSink(DumpWriter(path, Manifest(label="t")), max_queue_bytes=2 * arrays[0].nbytes) as sink:
        sink.hold(True)  # never released: a full queue and close() must still make progress
        for i, a in enumerate(arrays):
            sink.put(_record(i, a))
    with open_dump(path) as d:
        infos = list(d.records())
        assert len(infos) == 10
        for info, a in zip(infos, arrays):
            np.testing.assert_array_equal(d.read(info), a)
            assert info.stats == compute_stats(a)  # computed by the writer from the data


class _Probe(torch.nn.Module):
    """Two linear layers; records, during its forward, how many records the writer had written."""

    def __init__(self, sink: RecordSink, fail: bool = False):
        super().__init__()
        self.a = torch.nn.Linear(32, 32)
        self.b = torch.nn.Linear(32, 32)
        self.sink, self.fail, self.seen = sink, fail, []

    def forward(self, x):
        y = self.a(x)
        time.sleep(0.2)  # the records of ``a`` wait in the queue meanwhile
        self.seen.append(self.sink.records)
        if self.fail:
            raise RuntimeError("planted")
        return self.b(y)


@pytest.fixture
def threads_on_every_core():
    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    yield
    torch.set_num_threads(before)


def test_cpu_forward_on_every_core_holds_the_writer(tmp_path, threads_on_every_core):
    path = str(tmp_path / "d.h5")
    with RecordSink(DumpWriter(path, Manifest(label="t"))) as sink:
        model = _Probe(sink)
        with torch.no_grad(), torch_capture(model, sink, RecordPolicy(default="full")):
            model(torch.randn(2, 32))
        assert model.seen == [0]  # nothing was written while the forward ran
    with open_dump(path) as d:
        for info in d.records():
            if info.storage == "full":
                assert info.stats == compute_stats(d.read(info))


def test_a_forward_that_raises_releases_the_writer(tmp_path, threads_on_every_core):
    path = str(tmp_path / "d.h5")
    with RecordSink(DumpWriter(path, Manifest(label="t"))) as sink:
        model = _Probe(sink, fail=True)
        with torch.no_grad(), torch_capture(model, sink, RecordPolicy(default="full")) as cap:
            with pytest.raises(RuntimeError, match="planted"):
                model(torch.randn(2, 32))
            assert model.seen == [0] and cap.records > 0
            deadline = time.monotonic() + 30
            while sink.records < cap.records and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sink.records == cap.records  # released: written before the capture ends


def test_bfloat16_full_record_statistics_from_the_writer_match_the_tensor(tmp_path):
    path = str(tmp_path / "d.h5")
    lin = torch.nn.Linear(16, 16).to(torch.bfloat16)
    with torch.no_grad(), torch_capture(lin, DumpWriter(path, Manifest(label="t")), RecordPolicy(default="full")):
        out = lin(torch.randn(3, 16, dtype=torch.bfloat16))
    with open_dump(path) as d:
        (info,) = [i for i in d.records() if i.key.site == ":out"]
        assert info.stats == compute_stats(out.float().numpy())
