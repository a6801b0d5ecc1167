"""Scale: a watcher started on 1,000 finished runs catches up and writes each report exactly once (slow)."""
from __future__ import annotations

import os
import shutil

import pytest

from protocol import SharedFolder
from protocol.jobs import Job, write_job

from .conftest import read_json, wait_for, write_small_dump

RUNS = 1000


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> str:
    """The dumps of one finished run (reference and a drifting candidate), copied into every run of a test."""
    folder = tmp_path_factory.mktemp("template")
    write_small_dump(str(folder / "ref.h5"), "template", "ref", records=2)
    write_small_dump(str(folder / "cand.h5"), "template", "cand", records=2, scale=1e-3)
    return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_watcher_catches_up_on_1000_finished_runs_once(procs, tmp_path, one_run, polling):
    folder = SharedFolder(tmp_path / "shared").ensure_layout()
    for i in range(RUNS):
        write_job(folder, Job(run_id=f"run{i:04d}", model={"path": "models/none"}, backend="torch",
                              inputs="cd" * 32, labels=["ref", "cand"], reference="ref"))
        shutil.copytree(one_run, os.path.join(folder.root, "dumps", f"run{i:04d}"))
    reports_dir = os.path.join(folder.root, "reports")
    count = lambda: sum(1 for d in os.listdir(reports_dir) if os.path.exists(
        os.path.join(reports_dir, d, "ref__vs__cand.json")))
    args = ["watch", "--workers", "2", folder.root] + (["--polling", "--poll-interval", "0.5"] if polling else [])
    watcher = procs.start(*args, name="watcher")
    wait_for(lambda: count() == RUNS, 600, f"{RUNS} reports", procs, alive=(watcher,))
    assert watcher.terminate(timeout=60) == 0
    log = watcher.log()
    assert f"catching up on {RUNS} run(s)" in log
    assert log.count("cand vs ref: diverged") == RUNS  # one analysis per pair, none repeated
    assert f"watcher stopped: {RUNS} report(s), 0 error report(s)" in log
    assert read_json(folder.pair_report_base("run0999", "ref", "cand") + ".json")["verdict"] == "diverged"
    again = procs.start(*args, "--once", name="restart")  # a restart finds nothing left to do
    assert again.wait(timeout=300) == 0
    assert " vs ref: " not in again.log() and "0 report(s)" in again.log()
