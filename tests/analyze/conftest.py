"""Helpers for the analyzer tests: write small real dumps and input sets through protocol/."""
from __future__ import annotations

import numpy as np
import pytest

from protocol import DumpWriter, InputSample, Manifest, RecordKey, write_input_set


def write_dump(path, records, *, sha="", label="x", rank=0, world_size=1, model=None, arrays=None):
    """records: list of (key_text, array, kwargs) or ("stats", key_text, TensorStats, dtype, shape)."""
    m = Manifest(label=label, inputs_sha256=sha, rank=rank, world_size=world_size, model=model or {})
    with DumpWriter(str(path), m) as w:
        for rec in records:
            if rec[0] == "stats":
                _, key, stats, dtype, shape = rec
                w.add_stats(RecordKey.parse(key), stats, dtype=dtype, shape=shape)
            else:
                key, arr, kw = rec if len(rec) == 3 else (*rec, {})
                w.add(RecordKey.parse(key), arr, **kw)
    return str(path)


@pytest.fixture
def input_set(tmp_path):
    """An input set of 2 samples of 12 tokens (vocabulary 50) with text; returns (path, sha, samples)."""
    rng = np.random.default_rng(7)
    samples = [InputSample({"input_ids": rng.integers(0, 50, (1, 12))}, {"text": f"sample {i} text here"})
               for i in range(2)]
    path = str(tmp_path / "inputs.h5")
    sha = write_input_set(path, samples, {"dataset": "test"})
    return path, sha, samples
