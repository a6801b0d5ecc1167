"""Shared-folder helpers: names that cannot escape, JSON writes that are never torn, exclusive creation races."""
from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

from protocol import (
    JobError, SharedFolder, atomic_write_json, check_name, create_exclusive_json, link_no_replace, parse_dump_name,
    read_json, resolve_inside, write_new_json,
)
from protocol.folder import remove_dead_temp_files, temp_name


@pytest.mark.parametrize("name", ["..", "a..b", "../x", "a/b", "a\\b", "/abs", "", ".hidden", "-x", "x" * 129,
                                  "cpu.h5", "job.json", "cpu.attempt2", "a b", "a\x00b", "é"])
def test_check_name_rejects_unsafe_names(name):
    with pytest.raises(JobError, match="invalid label"):
        check_name(name, "label")


@pytest.mark.parametrize("name", ["cpu-fp32", "a100_bf16", "run.2026-01-01", "x" * 128, "0"])
def test_check_name_accepts_plain_names(name):
    assert check_name(name, "label") == name


@pytest.mark.parametrize("rel", ["../outside", "a/../../outside", "/etc/passwd", "~/x", "\\\\server\\share",
                                 "C:\\x", "c:/x"])
def test_resolve_inside_refuses_escapes_and_absolute_paths(tmp_path, rel):
    with pytest.raises(JobError, match="absolute path|escapes the shared folder"):
        resolve_inside(str(tmp_path), rel, "model path")


def test_resolve_inside_follows_symlinks_before_judging(tmp_path):
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    (root / "models" / "tiny").mkdir()
    os.symlink(str(tmp_path), str(root / "models" / "sneaky"))
    assert resolve_inside(str(root), "models/tiny", "model path") == str((root / "models" / "tiny").resolve())
    assert resolve_inside(str(root), "models/./tiny/../tiny", "m") == str((root / "models" / "tiny").resolve())
    with pytest.raises(JobError, match="escapes the shared folder"):
        resolve_inside(str(root), "models/sneaky/root2", "model path")
    for bad in ("", None):
        with pytest.raises(JobError, match="missing or not a string"):
            resolve_inside(str(root), bad, "model path")


def test_shared_folder_paths_validate_every_name(tmp_path):
    sf = SharedFolder(str(tmp_path)).ensure_layout()
    assert sorted(os.listdir(tmp_path)) == ["claims", "dumps", "inputs", "jobs", "reports"]
    assert sf.dump_path("r1", "cpu", 2) == os.path.join(str(tmp_path), "dumps", "r1", "cpu.rank2.h5")
    assert sf.claim_path("r1", "cpu").endswith(os.path.join("claims", "r1", "cpu.json"))
    assert sf.pair_report_base("r1", "a", "b").endswith(os.path.join("reports", "r1", "a__vs__b"))
    for call in (lambda: sf.dump_path("..", "cpu"), lambda: sf.job_path("../jobs"), lambda: sf.input_path("abc"),
                 lambda: sf.claim_path("r1", "x/y")):
        with pytest.raises(JobError):
            call()
    assert parse_dump_name("cpu-fp32.h5") == ("cpu-fp32", None)
    assert parse_dump_name("cpu.rank3.h5") == ("cpu", 3)
    assert parse_dump_name("cpu.h5.partial") is None and parse_dump_name(".x.json.1.tmp") is None


def _rewrite_loop(path: str, tag: int, seconds: float) -> None:
    # the time window starts when this process does (spawned processes can take seconds to start on a busy
    # machine), and at least 20 writes happen whatever the clock says
    stop_at = time.time() + seconds
    i = 0
    while time.time() < stop_at or i < 20:
        # large enough that a plain write would be observed half done
        atomic_write_json(path, {"writer": tag, "i": i, "payload": [tag] * 20000})
        i += 1


def test_atomic_write_json_is_never_seen_torn(tmp_path):
    path = str(tmp_path / "job.json")
    atomic_write_json(path, {"writer": -1, "i": 0, "payload": []})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rewrite_loop, args=(path, t, 1.0)) for t in (1, 2)]
    for p in procs:
        p.start()
    reads = 0
    writers = set()
    while any(p.is_alive() for p in procs):
        doc = read_json(path, "job")  # JobError if it were ever torn
        assert doc["payload"] == [doc["writer"]] * len(doc["payload"])
        writers.add(doc["writer"])
        reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reads > 10 and writers & {1, 2}
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def _race(path: str, tag: int, barrier, results) -> None:
    barrier.wait()
    results.put((tag, create_exclusive_json(path, {"winner": tag})))


def test_create_exclusive_json_has_exactly_one_winner(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        path = str(tmp_path / f"claims{round_}" / "cpu.json")
        barrier = ctx.Barrier(8)
        results = ctx.Queue()
        procs = [ctx.Process(target=_race, args=(path, t, barrier, results)) for t in range(8)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join()
            assert p.exitcode == 0
        winners = [tag for tag, won in outcomes if won]
        assert len(winners) == 1, outcomes
        with open(path, encoding="utf-8") as fh:
            assert json.load(fh) == {"winner": winners[0]}
        assert os.listdir(os.path.dirname(path)) == ["cpu.json"]  # no temp files left behind


def test_read_json_names_the_file_when_missing_or_malformed(tmp_path):
    with pytest.raises(JobError, match="job not found"):
        read_json(str(tmp_path / "none.json"), "job")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    with pytest.raises(JobError, match=r"bad\.json: job is not valid JSON"):
        read_json(str(bad), "job")


def test_link_no_replace_never_replaces_and_says_when_the_source_is_gone(tmp_path):
    src, dst = tmp_path / "work.h5", tmp_path / "final.h5"
    src.write_bytes(b"mine")
    assert link_no_replace(src, dst) is True and dst.read_bytes() == b"mine"
    assert link_no_replace(src, dst) is True  # the same file under both names: ours (a retransmitted link on NFS)
    other = tmp_path / "other.h5"
    other.write_bytes(b"theirs")
    assert link_no_replace(other, dst) is False and dst.read_bytes() == b"mine"
    with pytest.raises(FileNotFoundError):
        link_no_replace(tmp_path / "moved-aside.h5", tmp_path / "x.h5")
    assert not os.path.exists(tmp_path / "x.h5")


def test_write_new_json_refuses_an_existing_file_and_a_missing_folder(tmp_path):
    path = tmp_path / "scratch" / "a.json"
    with pytest.raises(FileNotFoundError):  # it never makes a folder (a takeover may have removed it)
        write_new_json(path, {"a": 1})
    assert not os.path.exists(tmp_path / "scratch")
    os.mkdir(tmp_path / "scratch")
    write_new_json(path, {"a": float("nan")})
    assert read_json(path, "doc")["a"] != read_json(path, "doc")["a"]  # NaN, as atomic_write_json writes it
    with pytest.raises(FileExistsError):
        write_new_json(path, {"a": 2})


def test_temporary_files_of_dead_processes_on_this_host_are_removed_and_nothing_else(tmp_path):
    import socket
    import subprocess
    import sys
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True).stdout)
    host = socket.gethostname()
    assert temp_name(tmp_path / "cpu.json") == f".cpu.json.{host}.{os.getpid()}.tmp"
    names = {"dead": f".cpu.json.{host}.{dead}.tmp", "dead-unique": f".cpu.json.{host}.{dead}.0123abcd.tmp",
             "alive": temp_name(tmp_path / "cpu.json"), "elsewhere": f".cpu.json.other-{host}.{dead}.tmp",
             "user": f".notes.{dead}.tmp", "plain": "cpu.json"}
    for name in names.values():
        (tmp_path / name).write_text("{")
    assert sorted(remove_dead_temp_files(tmp_path)) == sorted([names["dead"], names["dead-unique"]])
    assert sorted(os.listdir(tmp_path)) == sorted(names[k] for k in ("alive", "elsewhere", "user", "plain"))
