"""``compare`` on a dump damaged after it was written (format 1.1 checksums): each damaged record, on either side,
is a per-record error with the reader's message, never metrics or a divergence; the others are compared as usual."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from analyze.compare import compare
from protocol import DumpWriter, Manifest, RecordKey, compute_stats
from protocol.dump_reader import DAMAGED_HINT

HINT = DAMAGED_HINT[:1].upper() + DAMAGED_HINT[1:]


def _dump(path: str) -> None:
    rng = np.random.default_rng(3)
    with DumpWriter(path, Manifest(run_id="r", label="x", created="2026-01-01T00:00:00+00:00", host="h")) as w:
        w.add(RecordKey(0, 0, "model.layers.0:out"), rng.standard_normal((64, 512)).astype(np.float32))
        w.add(RecordKey(0, 0, "model.layers.1:out"), rng.standard_normal((8, 16)).astype(np.float32))
        logits = rng.standard_normal((4, 100)).astype(np.float32)
        w.add(RecordKey(0, 0, ":out.logits"), logits)
        top = np.argsort(-logits, axis=-1)[:, :3]
        w.add(RecordKey(0, 1, ":out.logits"), np.take_along_axis(logits, top, -1), stats=compute_stats(logits),
              storage="topk", reduction={"kind": "topk", "k": 3}, orig_shape=logits.shape, aux=top)


def _invert(path: str, name: str, at: int = 8) -> None:
    with h5py.File(path, "r", locking=False) as f:
        offset = f[name].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        b = fh.read(1)
        fh.seek(offset + at)
        fh.write(bytes([b[0] ^ 0x01]))  # one bit: a value that would otherwise read as a small divergence


@pytest.mark.parametrize("damaged_side", ["candidate", "reference"])
def test_damaged_records_are_errors_not_divergences(tmp_path, damaged_side):
    clean, damaged = str(tmp_path / "clean.h5"), str(tmp_path / "damaged.h5")
    _dump(clean)
    shutil.copyfile(clean, damaged)
    _invert(damaged, "data/r00000000")  # a direct-written activation
    _invert(damaged, "data/r00000002")  # the full logits (also read by the logit metrics)
    _invert(damaged, "data/r00000003_aux", at=0)  # the top-k indices
    ref, cand = (clean, damaged) if damaged_side == "candidate" else (damaged, clean)
    report = compare(ref, cand, show_progress=False)
    errors = {e["key"]: e["error"] for e in report.errors}
    assert errors == {
        "s0/t0/model.layers.0:out#0": f"damaged dump: {damaged}: record s0/t0/model.layers.0:out#0: data does not "
                                      f"match its checksum. {HINT}",
        "s0/t0/:out.logits#0": f"damaged dump: {damaged}: record s0/t0/:out.logits#0: data does not match its "
                               f"checksum. {HINT}",
        "s0/t1/:out.logits#0": f"damaged dump: {damaged}: record s0/t1/:out.logits#0: auxiliary array does not "
                               f"match its checksum. {HINT}",
    }
    assert report.first_divergence is None
    records = {r.key: r for s in report.sites for r in s.records}
    assert all(records[k].status == "error" and records[k].metrics == {} for k in errors)
    fine = records["s0/t0/model.layers.1:out#0"]
    assert fine.status == "ok" and fine.metrics["rel_l2"] == 0.0
    assert not [r for ls in report.logits for r in ls.records if r.key == "s0/t0/:out.logits#0"]
