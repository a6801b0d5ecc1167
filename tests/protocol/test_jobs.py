"""Job and claim documents (protocol/jobs.py): strict validation, exclusive claims, takeover with one winner."""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import time

import pytest

from protocol import JobError, SharedFolder
from protocol.jobs import (
    ABANDONED, Claim, Job, new_agent_identity, read_claim, read_job, stale_reason, take_over, try_claim,
    update_claim, work_dump_name, write_job,
)

SHA = "ab" * 32


def _job_dict(**changes) -> dict:
    doc = Job(run_id="run1", model={"path": "models/tiny"}, backend="torch", inputs=SHA,
              labels=["cpu-fp32", "cpu-bf16"], reference="cpu-fp32").to_dict()
    doc.update(changes)
    return doc


def test_job_round_trips_and_defaults():
    doc = _job_dict(targets={"cpu-bf16": {"dtype": "bfloat16"}}, thresholds="th/th.json")
    job = Job.from_dict(json.loads(json.dumps(doc)))
    assert job.to_dict() == doc
    assert job.format == "tensorparity.job" and job.format_version == "1.0"
    assert job.target("cpu-bf16") == {"dtype": "bfloat16"} and job.target("cpu-fp32") == {}


@pytest.mark.parametrize("changes, message", [
    ({"format_version": "2.0"}, "job format version 2.0 is not supported (this reader: 1.0)"),
    ({"format": "tensorparity.dump"}, "not a job"),
    ({"backend": "tensorrt"}, "unknown backend 'tensorrt'"),
    ({"model": {"path": "/etc/passwd"}}, "escapes the shared folder"),
    ({"model": {"path": "models/../../outside"}}, "escapes the shared folder"),
    ({"model": {"path": "x", "id": "org/name"}}, "model must be"),
    ({"model": {"id": "../../x"}}, "is not a hub id"),
    ({"thresholds": "../th.json"}, "escapes the shared folder"),
    ({"labels": ["cpu/fp32"], "reference": "cpu/fp32"}, "invalid label 'cpu/fp32'"),
    ({"labels": ["a", "a"], "reference": "a"}, "repeat a label"),
    ({"run_id": "../run"}, "invalid run id"),
    ({"reference": "gpu"}, "reference 'gpu' is not one of labels"),
    ({"inputs": "abc"}, "is not an input set's sha256"),
    ({"mode": "generate", "max_new_tokens": 0}, "mode generate needs max_new_tokens >= 1"),
    ({"targets": {"cpu-bf16": {"colour": "red"}}}, "unknown key(s) ['colour']"),
    ({"targets": {"gpu": {"device": "cuda"}}}, "names label 'gpu', which is not in labels"),
    ({"policy": {"rules": [{"pattern": ".*"}], "default": "full"}}, "invalid policy rule"),
    ({"priority": 3}, "unknown field(s) ['priority']"),
])
def test_invalid_jobs_are_refused_with_the_reason(changes, message):
    with pytest.raises(JobError) as err:
        Job.from_dict(_job_dict(**changes), "jobs/run1.json")
    assert message in str(err.value)


def test_newer_minor_may_add_fields_but_missing_fields_are_refused():
    assert Job.from_dict(_job_dict(format_version="1.7", priority=3)).run_id == "run1"
    doc = _job_dict()
    del doc["labels"]
    with pytest.raises(JobError, match=r"lacks field\(s\) \['labels'\]"):
        Job.from_dict(doc)


def test_files_are_resolved_inside_root_only(tmp_path):
    folder = SharedFolder(tmp_path / "root").ensure_layout()
    job = Job.from_dict(_job_dict())
    with pytest.raises(JobError, match="input set not found"):
        job.check_files(folder)
    open(folder.input_path(SHA), "wb").close()
    with pytest.raises(JobError, match="model not found"):
        job.check_files(folder)
    os.makedirs(tmp_path / "outside")
    os.symlink(tmp_path / "outside", tmp_path / "root" / "models")  # a link that leads out of ROOT
    job = Job.from_dict(_job_dict(model={"path": "models"}))
    with pytest.raises(JobError, match="escapes the shared folder"):
        job.check_files(folder)
    os.makedirs(tmp_path / "root" / "m")
    files = Job.from_dict(_job_dict(model={"path": "m"})).check_files(folder)
    assert files["model"] == os.path.realpath(tmp_path / "root" / "m")
    assert files["inputs"] == folder.input_path(SHA)


def test_write_job_is_exclusive_and_read_job_checks_the_name(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    path = write_job(folder, Job.from_dict(_job_dict()))
    assert read_job(path).labels == ["cpu-fp32", "cpu-bf16"]
    with pytest.raises(JobError, match="exists already"):
        write_job(folder, Job.from_dict(_job_dict()))
    renamed = os.path.join(os.path.dirname(path), "other.json")
    os.link(path, renamed)
    with pytest.raises(JobError, match="does not match its run id"):
        read_job(renamed)
    with open(path + ".bad", "w") as fh:
        fh.write("{not json")
    with pytest.raises(JobError, match="not valid JSON"):
        read_job(path + ".bad")


def test_claim_validation_and_owner_only_updates(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    me, other = new_agent_identity(), new_agent_identity()
    claim = try_claim(folder, "run1", "cpu", me)
    assert claim is not None and try_claim(folder, "run1", "cpu", other) is None
    on_disk = read_claim(folder.claim_path("run1", "cpu"))
    assert on_disk.status == "running" and on_disk.attempt == 1 and on_disk.owned_by(me)
    impostor = Claim("run1", "cpu", other)
    assert not update_claim(folder, impostor, status="done")
    assert update_claim(folder, claim, status="done", dump="dumps/run1/cpu.h5")
    assert read_claim(folder.claim_path("run1", "cpu")).dump == "dumps/run1/cpu.h5"
    with pytest.raises(JobError, match="unknown claim status 'paused'"):
        Claim.from_dict({**claim.to_dict(), "status": "paused"})
    with pytest.raises(JobError, match="claim format version 3.1 is not supported"):
        Claim.from_dict({**claim.to_dict(), "format_version": "3.1"})


def test_stale_reasons():
    me = new_agent_identity()
    fresh = Claim("r", "l", {"host": "elsewhere", "pid": 1, "id": "x"})
    assert stale_reason(fresh, 60.0, me) is None
    old = Claim("r", "l", {"host": "elsewhere", "pid": 1, "id": "x"}, heartbeat="2020-01-01T00:00:00+00:00")
    assert "heartbeat" in stale_reason(old, 60.0, me)
    dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    gone = Claim("r", "l", {**new_agent_identity(), "pid": dead.pid, "id": "y"})
    assert "is gone" in stale_reason(gone, 60.0, me)
    assert stale_reason(Claim("r", "l", me, status="failed", error=ABANDONED), 60.0, me) == "abandoned by its agent"
    assert stale_reason(Claim("r", "l", me, status="failed", error="boom"), 0.0, me) is None
    assert stale_reason(Claim("r", "l", me, status="done", heartbeat="2020-01-01T00:00:00+00:00"), 0.0, me) is None


def _race(kind: str, root: str, start_at: float, jobs: int) -> list:
    """One racing process: claim (or take over) every (run, label) it can; returns what it won."""
    folder = SharedFolder(root)
    me = new_agent_identity()
    time.sleep(max(0.0, start_at - time.time()))
    won = []
    for i in range(jobs):
        if kind == "claim":
            if try_claim(folder, f"run{i}", "cpu", me) is not None:
                won.append(f"run{i}")
        else:
            try:
                seen = read_claim(folder.claim_path(f"run{i}", "cpu"))
            except JobError:  # another racer is between removing the stale claim and creating its own
                continue
            if seen.attempt == 1 and take_over(folder, seen, me, "heartbeat 999 s old") is not None:
                won.append(f"run{i}")
    return won


def _run_race(kind: str, root: str, jobs: int, racers: int = 4) -> list[list]:
    start_at = time.time() + 1.5  # after every process has started
    with cf.ProcessPoolExecutor(racers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_race, kind, root, start_at, jobs) for _ in range(racers)]
        return [f.result(timeout=60) for f in futures]


def test_racing_processes_claim_each_job_exactly_once(tmp_path):
    SharedFolder(tmp_path).ensure_layout()
    wins = _run_race("claim", str(tmp_path), 40)
    claimed = sorted(run for won in wins for run in won)
    assert claimed == sorted(f"run{i}" for i in range(40))


def test_racing_takeovers_have_exactly_one_winner_and_keep_the_stale_partial(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    dead = {"host": "gone-host", "pid": 1, "id": "dead0000"}
    for i in range(20):
        assert try_claim(folder, f"run{i}", "cpu", dead)
        os.makedirs(os.path.dirname(folder.dump_path(f"run{i}", "cpu")), exist_ok=True)
        with open(os.path.join(os.path.dirname(folder.dump_path(f"run{i}", "cpu")),
                               work_dump_name("cpu", 1) + ".partial"), "wb") as fh:
            fh.write(b"half a dump")
    wins = _run_race("takeover", str(tmp_path), 20)
    assert sorted(run for won in wins for run in won) == sorted(f"run{i}" for i in range(20))
    for i in range(20):
        claim = read_claim(folder.claim_path(f"run{i}", "cpu"))
        assert claim.attempt == 2 and claim.agent["id"] != "dead0000"
        assert claim.taken_over["previous_claim"] == "cpu.attempt1.json"
        assert claim.taken_over["stale_files"] == [f"dumps/run{i}/cpu.h5.partial.stale-1"]
        with open(folder.root + f"/dumps/run{i}/cpu.h5.partial.stale-1", "rb") as fh:
            assert fh.read() == b"half a dump"
        assert read_claim(os.path.join(folder.root, "claims", f"run{i}", "cpu.attempt1.json")).agent == dead


def test_takeover_backs_off_when_the_owner_is_alive(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    owner = try_claim(folder, "run1", "cpu", new_agent_identity())
    seen = read_claim(folder.claim_path("run1", "cpu"))
    time.sleep(0.01)
    assert update_claim(folder, owner, heartbeat=Claim("r", "l", {}).heartbeat)  # a heartbeat after it was seen
    assert take_over(folder, seen, new_agent_identity(), "heartbeat 999 s old") is None
    assert read_claim(folder.claim_path("run1", "cpu")).owned_by(owner.agent)
    assert not os.path.exists(os.path.join(folder.root, "claims", "run1", "cpu.attempt1.json"))
