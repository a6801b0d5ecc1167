"""The watcher daemon on a shared folder: bad dumps, partial files, a killed watcher (real processes, real observers)."""
from __future__ import annotations

import glob
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

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
    expected = sorted(["broken.error.json", "oldver.error.json", "ref__vs__cand.json", "ref__vs__cand.csv",
                       "ref__vs__cand.records.csv", "ref__vs__cand.logits.csv", "ref__vs__cand.unmatched.csv",
                       "ref__vs__cand.html"])
    # the watcher's own .watch/ (leases, scratch) may be there a moment longer than the report, while it runs
    assert sorted(n for n in os.listdir(reports) if not n.startswith(".")) == expected
    assert {p: _digest(p) for p in before} == before  # no dump (nor the partial) was rewritten or removed
    assert sorted(os.listdir(dump_dir)) == ["broken.h5", "cand.h5", "cand.h5.partial", "oldver.h5", "ref.h5"]
    assert watcher.alive()
    assert watcher.terminate(timeout=30) == 0
    assert sorted(os.listdir(reports)) == expected  # and nothing of its own left once it stopped
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
    assert glob.glob(os.path.join(folder.root, "reports", "*", ".watch", ".cand.attempt1.*")), \
        "the killed watcher left no scratch folder"
    second = procs.start(*WATCH, "--workers", "2", folder.root, name="second")
    wait_for(lambda: len(done()) == len(runs), 120, "every report after the restart", procs, alive=(second,))
    assert second.terminate(timeout=30) == 0
    for run_id, st in before.items():  # a pair reported before the crash is not analysed again
        again = os.stat(folder.pair_report_base(run_id, "ref", "cand") + ".json")
        assert (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert second.log().count(" vs ref: ") == len(runs) - len(before), second.log()
    for run_id in runs:
        assert read_json(folder.pair_report_base(run_id, "ref", "cand") + ".json")["verdict"] == "diverged"
    assert _leftovers(folder) == []  # its scratch folders and leases are gone


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


def _leftovers(folder: SharedFolder) -> list[str]:
    """Hidden entries under ROOT/reports (leases, scratch folders, temporary files) and probe folders at ROOT."""
    found = glob.glob(os.path.join(folder.root, "reports", "*", ".*"))
    return sorted(found + glob.glob(os.path.join(folder.root, ".parity-probe.*")))


def _finished_runs(folder: SharedFolder, runs: list[str], staging: str | None = None) -> None:
    """Runs with a reference and a drifting candidate; with ``staging``, the dumps are renamed into place (as
    agents publish them), else written in place."""
    for run_id in runs:
        dump_dir = _run(folder, run_id, ["ref", "cand"])
        for label, scale in (("ref", 0.0), ("cand", 1e-3)):
            path = os.path.join(staging or dump_dir, f"{run_id}-{label}.h5" if staging else f"{label}.h5")
            write_small_dump(path, run_id, label, records=40, scale=scale)
            if staging:
                os.rename(path, os.path.join(dump_dir, f"{label}.h5"))


WATCHER_ROUNDS = 3


@pytest.mark.slow
def test_two_watchers_on_one_folder_write_each_report_exactly_once(procs, tmp_path):
    """Two watchers started at once on one ROOT (catch-up race), then dumps arriving while both run (event race):
    every pair gets exactly one analysis and one report, and neither watcher fails. Rounds use inotify, polling,
    and one of each."""
    modes = [((), ()), (("--polling", "--poll-interval", "0.2"),) * 2, ((), ("--polling", "--poll-interval", "0.2"))]
    for round_ in range(WATCHER_ROUNDS):
        folder = SharedFolder(tmp_path / f"shared{round_}").ensure_layout()
        early, late = [f"early{i}" for i in range(6)], [f"late{i}" for i in range(6)]
        _finished_runs(folder, early)
        watchers = [procs.start(*WATCH, "--workers", "1", *modes[round_][n], folder.root, name=f"w{round_}.{n}")
                    for n in range(2)]
        done = lambda runs: all(os.path.exists(folder.pair_report_base(r, "ref", "cand") + ".json") for r in runs)
        wait_for(lambda: done(early), 120, f"round {round_}: the catch-up reports", procs, alive=watchers)
        wait_for(lambda: all("catching up on" in w.log() for w in watchers), 60, "both watchers to start", procs,
                 alive=watchers)
        staging = tmp_path / f"staging{round_}"
        staging.mkdir()
        _finished_runs(folder, late, str(staging))
        wait_for(lambda: done(late), 120, f"round {round_}: the reports of new dumps", procs, alive=watchers)
        stamps = {r: os.stat(folder.pair_report_base(r, "ref", "cand") + ".json").st_mtime_ns for r in early + late}
        for watcher in watchers:
            assert watcher.terminate(timeout=60) == 0, watcher.log()
        logs = [w.log() for w in watchers]
        for run_id in early + late:  # one analysis per pair, in one of the two watchers
            assert sum(log.count(f"run {run_id}: cand vs ref: diverged") for log in logs) == 1, (run_id, logs)
            report = folder.pair_report_base(run_id, "ref", "cand")
            assert os.stat(report + ".json").st_mtime_ns == stamps[run_id]  # never rewritten
            assert read_json(report + ".json")["verdict"] == "diverged"
            assert sorted(os.listdir(folder.report_dir(run_id))) == sorted(
                f"ref__vs__cand{ext}" for ext in (".json", ".csv", ".records.csv", ".logits.csv", ".unmatched.csv",
                                                  ".html"))
        totals = [int(log.split("watcher stopped: ")[1].split(" report(s)")[0]) for log in logs]
        assert sum(totals) == len(early + late), totals
        assert not any("Traceback" in log or " ERROR " in log for log in logs), logs
        assert _leftovers(folder) == []


def _lease(folder: SharedFolder, run_id: str, pid: int, agent_id: str) -> str:
    """Plant the lease and scratch of a watcher (pid, on this host) that was killed while analysing the pair."""
    from protocol import create_exclusive_json
    from protocol.claims import Claim
    from analyze.watch_leases import lease_site
    site = lease_site(folder, run_id, "cand")
    lease = Claim(run_id, "cand", {"host": socket.gethostname(), "pid": pid, "id": agent_id})
    scratch = site.work_dir(lease)
    os.makedirs(scratch)
    with open(os.path.join(scratch, ".owner"), "w") as fh:
        fh.write(f"{socket.gethostname()} {pid} {agent_id} 1\n")
    with open(os.path.join(scratch, "ref__vs__cand.csv"), "w") as fh:
        fh.write("index,site\n0,model.la")  # cut off mid-write
    assert create_exclusive_json(site.claim_path(1), lease.to_dict())
    return scratch


def _old_file(path: str, text: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    os.utime(path, (1_000_000_000, 1_000_000_000))  # 2001: older than any heartbeat timeout


def test_a_restarted_watcher_removes_what_a_killed_one_left_and_nothing_else(procs, tmp_path):
    folder = SharedFolder(tmp_path / "shared").ensure_layout()
    _finished_runs(folder, ["r1", "r2"])
    first = procs.start(*WATCH, "--once", folder.root, name="first")
    assert first.wait(timeout=120) == 0, first.log()
    os.unlink(folder.pair_report_base("r1", "ref", "cand") + ".json")  # r1 was being analysed again when killed
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    host = socket.gethostname()
    _lease(folder, "r1", dead, "dead0001")
    _lease(folder, "r2", dead, "dead0002")  # r2's report is complete: only its lease and scratch were left
    r1 = folder.report_dir("r1")
    _old_file(os.path.join(r1, ".watch", ".cand.attempt2.dead0003", ".owner"), f"{host} {dead} dead0003 2\n")
    os.utime(os.path.join(r1, ".watch", ".cand.attempt2.dead0003"))  # fresh: killed while taking the lease over
    _old_file(os.path.join(r1, ".watch", ".cand.json.4242.tmp"), "{")  # another host's (or version's), old
    with open(os.path.join(r1, ".watch", f".cand.json.{host}.{dead}.tmp"), "w") as fh:  # killed while writing
        fh.write("{")
    _old_file(os.path.join(r1, ".ref__vs__cand.csv.4242", "sites.csv"), "index")  # an earlier version's scratch
    os.utime(os.path.join(r1, ".ref__vs__cand.csv.4242"), (1_000_000_000, 1_000_000_000))
    _old_file(os.path.join(folder.root, f".parity-probe.{host}.{dead}.0badc0de", "a"))
    _old_file(os.path.join(r1, ".ref__vs__cand.json.4242.tmp"), "{")  # an earlier version's temp file
    user_files = [os.path.join(r1, "notes.txt"), os.path.join(r1, ".my-notes"), os.path.join(r1, ".notes.1.tmp"),
                  os.path.join(folder.root, "dumps", "r1", ".user-file")]
    for path in user_files:
        _old_file(path, "a user's")
    dumps = {p: _digest(p) for p in glob.glob(os.path.join(folder.root, "dumps", "*", "*.h5"))}
    second = procs.start(*WATCH, "--once", folder.root, name="second")
    assert second.wait(timeout=120) == 0, second.log()
    log = second.log()
    assert f"removed 8 leftover(s) of stopped watchers from {folder.sub('reports')}" in log, log
    assert f"run r1: cand: took over the lease of attempt 1 (its owner (pid {dead} on this host) is gone)" in log
    assert log.count("cand vs ref: diverged") == 1 and "run r1: cand vs ref: diverged" in log
    assert _leftovers(folder) == [os.path.join(r1, ".my-notes"), os.path.join(r1, ".notes.1.tmp")]
    for path in user_files:
        with open(path) as fh:
            assert fh.read() == "a user's"
    assert {p: _digest(p) for p in dumps} == dumps
    assert read_json(folder.pair_report_base("r1", "ref", "cand") + ".json")["verdict"] == "diverged"
    with open(folder.pair_report_base("r1", "ref", "cand") + ".csv") as fh:
        assert fh.read().startswith("index,site,call,")  # the new analysis, not the planted half file


@pytest.mark.slow
def test_a_paused_watcher_is_taken_over_and_publishes_nothing_after_it_resumes(procs, tmp_path):
    """SIGSTOP one watcher's whole process group (a suspended host) while it holds leases; the other takes them over
    once their heartbeats are 2 s old and writes every report; after SIGCONT the paused one publishes nothing, no
    report is written twice, and no lease or scratch is left behind."""
    folder = SharedFolder(tmp_path / "shared").ensure_layout()
    runs = [f"r{i}" for i in range(8)]
    _finished_runs(folder, runs)
    fast = (*WATCH, "--workers", "1", "--heartbeat-timeout", "2")
    paused = procs.start(*fast, folder.root, name="paused")
    wait_for(lambda: glob.glob(os.path.join(folder.root, "reports", "*", ".watch", "cand.json")), 60,
             "the first watcher to take a lease", procs, alive=(paused,))
    os.killpg(paused.pid, signal.SIGSTOP)
    try:
        other = procs.start(*fast, folder.root, name="other")
        done = lambda: all(os.path.exists(folder.pair_report_base(r, "ref", "cand") + ".json") for r in runs)
        wait_for(done, 120, "the other watcher to write every report", procs, alive=(other,))
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    stamps = {r: os.stat(folder.pair_report_base(r, "ref", "cand") + ".json").st_mtime_ns for r in runs}
    wait_for(lambda: "the lease was taken over by another watcher" in paused.log(), 60,
             "the resumed watcher to notice", procs, alive=(paused, other))
    time.sleep(1.0)  # time for anything it might still publish
    assert other.terminate(timeout=60) == 0 and paused.terminate(timeout=60) == 0
    logs = paused.log() + other.log()
    assert "took over the lease of attempt 1" in other.log()
    for run_id in runs:
        assert logs.count(f"run {run_id}: cand vs ref: diverged") == 1, logs
        assert os.stat(folder.pair_report_base(run_id, "ref", "cand") + ".json").st_mtime_ns == stamps[run_id]
    assert not any("Traceback" in log for log in (paused.log(), other.log())), logs
    assert _leftovers(folder) == []
