"""The watcher daemon on a shared folder: bad dumps, partial files, a killed watcher (real processes, real observers)."""
from __future__ import annotations

import glob
import hashlib
import os

import h5py
import pytest

from protocol import SharedFolder
from protocol.jobs import Job, write_job

from .conftest import read_json, wait_for, write_small_dump

WATCH = ("watch", "--debounce", "0.1")


def _run(folder: SharedFolder, run_id: str, labels: list[str], reference: str = "ref") -> str:
    write_job(folder, Job(run_id=run_id, model={"path": "models/none"}, backend="torch", inputs="cd" * 32,
                          labels=labels, reference=reference))
    dump_dir = os.path.join(folder.root, "dumps", run_id)
    os.makedirs(dump_dir, exist_ok=True)
    return dump_dir


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_bad_dumps_get_error_reports_partials_are_ignored_and_the_watcher_goes_on(procs, tmp_path, polling):
    folder = SharedFolder(tmp_path / "shared").ensure_layout()
    dump_dir = _run(folder, "r1", ["ref", "cand", "broken", "oldver"])
    write_small_dump(os.path.join(dump_dir, "ref.h5"), "r1", "ref")
    watcher = procs.start(*WATCH, *(["--polling", "--poll-interval", "0.2"] if polling else []), folder.root,
                          name="watcher")
    wait_for(lambda: "catching up on 1 run" in watcher.log(), 60, "the watcher to start", procs, alive=(watcher,))
    staging = tmp_path / "staging"
    staging.mkdir()
    with open(os.path.join(dump_dir, "cand.h5.partial"), "wb") as fh:  # a writer still at work: never read
        fh.write(b"\x89HDF\r\n\x1a\n half written")
    with open(staging / "broken.h5", "wb") as fh:
        fh.write(os.urandom(4096))
    write_small_dump(str(staging / "oldver.h5"), "r1", "oldver")
    with h5py.File(staging / "oldver.h5", "r+") as f:
        f.attrs["format_version"] = "2.0"
    os.rename(staging / "broken.h5", os.path.join(dump_dir, "broken.h5"))
    os.rename(staging / "oldver.h5", os.path.join(dump_dir, "oldver.h5"))
    reports = folder.report_dir("r1")
    wait_for(lambda: all(os.path.exists(os.path.join(reports, f"{x}.error.json")) for x in ("broken", "oldver")),
             60, "error reports", procs, alive=(watcher,))
    before = {p: _digest(p) for p in glob.glob(os.path.join(dump_dir, "*"))}
    write_small_dump(str(staging / "cand.h5"), "r1", "cand", scale=0.5)
    os.rename(staging / "cand.h5", os.path.join(dump_dir, "cand.h5"))
    wait_for(lambda: os.path.exists(os.path.join(reports, "ref__vs__cand.json")), 60, "the candidate's report",
             procs, alive=(watcher,))
    broken = read_json(os.path.join(reports, "broken.error.json"))
    assert broken["format"] == "tensorparity.watch-error" and broken["dump"] == "dumps/r1/broken.h5"
    assert "not an HDF5 file" in broken["error"] or "not a tensorparity" in broken["error"], broken["error"]
    oldver = read_json(os.path.join(reports, "oldver.error.json"))
    assert oldver["error_type"] == "UnsupportedVersionError" and "version 2.0 is not supported" in oldver["error"]
    report = read_json(os.path.join(reports, "ref__vs__cand.json"))
    assert report["verdict"] == "diverged" and report["first_divergence"]["site"] == "model.layers.0:out"
    assert sorted(os.listdir(reports)) == sorted([
        "broken.error.json", "oldver.error.json", "ref__vs__cand.json", "ref__vs__cand.csv",
        "ref__vs__cand.records.csv", "ref__vs__cand.logits.csv", "ref__vs__cand.unmatched.csv",
        "ref__vs__cand.html"])
    assert {p: _digest(p) for p in before} == before  # no dump (nor the partial) was rewritten or removed
    assert sorted(os.listdir(dump_dir)) == ["broken.h5", "cand.h5", "cand.h5.partial", "oldver.h5", "ref.h5"]
    assert watcher.alive()
    assert watcher.terminate(timeout=30) == 0
    log = watcher.log()
    assert log.count("cand vs ref: diverged, first divergence: model.layers.0:out") == 1, log
    assert ".partial" not in log
    assert "watcher stopped: 1 report(s), 2 error report(s)" in log


def test_watcher_killed_mid_analysis_writes_exactly_one_report_per_pair_after_restart(procs, tmp_path):
    folder = SharedFolder(tmp_path / "shared").ensure_layout()
    runs = [f"r{i}" for i in range(8)]
    for run_id in runs:  # dumps large enough that one analysis takes a noticeable time
        dump_dir = _run(folder, run_id, ["ref", "cand"])
        write_small_dump(os.path.join(dump_dir, "ref.h5"), run_id, "ref", records=40)
        write_small_dump(os.path.join(dump_dir, "cand.h5"), run_id, "cand", records=40, scale=1e-3)
    done = lambda: [r for r in runs if os.path.exists(folder.pair_report_base(r, "ref", "cand") + ".json")]
    first = procs.start(*WATCH, "--workers", "1", folder.root, name="first")
    wait_for(done, 120, "the first report", procs, alive=(first,))
    first.kill_group()  # the watcher and its worker processes die at once, as in a crash
    before = {r: os.stat(folder.pair_report_base(r, "ref", "cand") + ".json") for r in done()}
    assert len(before) < len(runs), "every pair was done before the kill: nothing was left mid-analysis"
    second = procs.start(*WATCH, "--workers", "2", folder.root, name="second")
    wait_for(lambda: len(done()) == len(runs), 120, "every report after the restart", procs, alive=(second,))
    assert second.terminate(timeout=30) == 0
    for run_id, st in before.items():  # a pair reported before the crash is not analysed again
        again = os.stat(folder.pair_report_base(run_id, "ref", "cand") + ".json")
        assert (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert second.log().count(" vs ref: ") == len(runs) - len(before), second.log()
    for run_id in runs:
        assert read_json(folder.pair_report_base(run_id, "ref", "cand") + ".json")["verdict"] == "diverged"


def test_watch_applies_a_thresholds_file_and_refuses_a_bad_one(procs, tmp_path):
    from analyze.thresholds import build_thresholds, write_thresholds
    folder = SharedFolder(tmp_path / "shared").ensure_layout()
    for run_id in ("baseline", "judged"):
        dump_dir = _run(folder, run_id, ["ref", "cand"])
        write_small_dump(os.path.join(dump_dir, "ref.h5"), run_id, "ref")
        write_small_dump(os.path.join(dump_dir, "cand.h5"), run_id, "cand", scale=1e-3)
    first = procs.start("watch", "--once", folder.root, name="first")
    assert first.wait(timeout=120) == 0, first.log()
    baseline = folder.pair_report_base("baseline", "ref", "cand") + ".json"
    assert read_json(baseline)["verdict"] == "diverged"  # 1e-3 drift is over the float32 default tolerance
    write_thresholds(build_thresholds([baseline], stat="max", margin=2.0), str(tmp_path / "th.json"))
    os.unlink(folder.pair_report_base("judged", "ref", "cand") + ".json")  # judge it again, with thresholds
    second = procs.start("watch", "--once", "--thresholds", tmp_path / "th.json", folder.root, name="second")
    assert second.wait(timeout=120) == 0, second.log()
    judged = read_json(folder.pair_report_base("judged", "ref", "cand") + ".json")
    assert judged["thresholds"] is not None and judged["verdict"] == "pass", judged["thresholds"]
    assert second.log().count(" vs ref: ") == 1  # the baseline pair was not analysed again
    with open(tmp_path / "bad.json", "w") as fh:
        fh.write("{}")
    bad = procs.start("watch", "--thresholds", tmp_path / "bad.json", folder.root, name="bad")
    assert bad.wait(timeout=60) == 3 and "not a thresholds file" in bad.log()
