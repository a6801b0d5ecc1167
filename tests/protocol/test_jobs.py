"""Job and claim documents (protocol/jobs.py, protocol/claims.py): strict validation, exclusive claims, takeover with
one winner, and a former owner that can neither publish nor touch the new owner's claim."""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import time

import pytest

from protocol import CaptureError, DumpWriter, JobError, Manifest, SharedFolder, atomic_write_json
from protocol.claims import (
    ABANDONED, Claim, ClaimSite, new_agent_identity, publish_work, read_claim, read_current_claim, stale_reason,
    take_over, try_claim, update_claim,
)
from protocol.jobs import Job, read_job, write_job

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
    assert job.format == "tensorparity.job" and job.format_version == "1.1"
    assert "zoom" not in doc  # null is left out: the document reads as a 1.0 job did
    assert job.target("cpu-bf16") == {"dtype": "bfloat16"} and job.target("cpu-fp32") == {}


@pytest.mark.parametrize("changes, message", [
    ({"format_version": "2.0"}, "job format version 2.0 is not supported (this reader: 1.1)"),
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
    ({"zoom": -1}, "zoom -1 must be a window (integer >= 0) or null"),
    ({"zoom": True}, "zoom True must be a window"),
    ({"zoom": "3"}, "zoom '3' must be a window"),
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


def test_a_zoom_job_round_trips_and_a_job_of_format_1_0_still_reads():
    doc = _job_dict(zoom=2, policy={"rules": [], "default": "stats", "byte_budget": None})
    job = Job.from_dict(json.loads(json.dumps(doc)))
    assert job.zoom == 2 and job.to_dict() == doc
    old = _job_dict(format_version="1.0")  # written before zoom existed: no such key
    assert Job.from_dict(old).zoom is None


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


def _site(folder: SharedFolder, run_id: str = "run1", label: str = "cpu") -> ClaimSite:
    return ClaimSite.capture(folder, run_id, label)


def test_claim_validation_and_owner_only_updates(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    site = _site(folder)
    me, other = new_agent_identity(), new_agent_identity()
    claim = try_claim(site, me)
    assert claim is not None and try_claim(site, other) is None
    on_disk = read_current_claim(site)
    assert on_disk.status == "running" and on_disk.attempt == 1 and on_disk.owned_by(me)
    assert os.path.isdir(site.work_dir(claim))  # made before the claim: a takeover can always move it aside
    assert os.listdir(os.path.dirname(site.work_dir(claim))) == [os.path.basename(site.work_dir(claim))]
    impostor = Claim("run1", "cpu", other)
    assert not update_claim(site, impostor, status="done")
    assert update_claim(site, claim, status="done", dump="dumps/run1/cpu.h5")
    assert read_claim(folder.claim_path("run1", "cpu")).dump == "dumps/run1/cpu.h5"
    with pytest.raises(JobError, match="unknown claim status 'paused'"):
        Claim.from_dict({**claim.to_dict(), "status": "paused"})
    with pytest.raises(JobError) as err:
        Claim.from_dict({**claim.to_dict(), "format_version": "3.1"})
    assert str(err.value) == "claim format version 3.1 is not supported (this reader: 2.0). Upgrade tensorparity " \
                             "on this host"
    with pytest.raises(JobError) as err:
        Claim.from_dict({**claim.to_dict(), "agent": {**me, "id": "../../x"}})
    assert str(err.value) == "claim agent id '../../x' is not 1-64 letters, digits, '_' or '-'"


def test_a_refused_job_is_claimed_as_failed_without_a_work_folder(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    claim = try_claim(_site(folder), new_agent_identity(), failed="invalid job: bad")
    assert read_current_claim(_site(folder)).to_dict() == claim.to_dict()
    assert claim.status == "failed" and claim.error == "invalid job: bad" and claim.finished
    assert not os.path.exists(os.path.join(folder.root, "dumps", "run1"))


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
        site = _site(folder, f"run{i}")
        if kind == "claim":
            if try_claim(site, me) is not None:
                won.append(f"run{i}")
        else:
            seen = read_current_claim(site)
            if seen.attempt == 1 and take_over(site, seen, me, "heartbeat 999 s old") is not None:
                won.append(f"run{i}")
    return won


def _run_race(kind: str, root: str, jobs: int, racers: int = 4) -> list[list]:
    start_at = time.time() + 1.5  # after every process has started
    with cf.ProcessPoolExecutor(racers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_race, kind, root, start_at, jobs) for _ in range(racers)]
        return [f.result(timeout=60) for f in futures]


def test_racing_processes_claim_each_job_exactly_once(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    wins = _run_race("claim", str(tmp_path), 40)
    claimed = sorted(run for won in wins for run in won)
    assert claimed == sorted(f"run{i}" for i in range(40))
    for i in range(40):  # the losers removed their work folders again
        claim = read_current_claim(_site(folder, f"run{i}"))
        assert os.listdir(os.path.join(folder.root, "dumps", f"run{i}")) == [
            os.path.basename(_site(folder, f"run{i}").work_dir(claim))]


def test_racing_takeovers_have_exactly_one_winner_and_keep_the_stale_partial(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    dead = {"host": "gone-host", "pid": 1, "id": "dead0000"}
    for i in range(20):
        site = _site(folder, f"run{i}")
        claim = try_claim(site, dead)
        with open(os.path.join(site.work_dir(claim), "cpu.h5.partial"), "wb") as fh:
            fh.write(b"half a dump")
    wins = _run_race("takeover", str(tmp_path), 20)
    assert sorted(run for won in wins for run in won) == sorted(f"run{i}" for i in range(20))
    for i in range(20):
        site = _site(folder, f"run{i}")
        claim = read_current_claim(site)
        assert claim.attempt == 2 and claim.agent["id"] != "dead0000" and site.latest_attempt() == 2
        assert claim.taken_over["previous_claim"] == "cpu.json"
        assert claim.taken_over["stale_files"] == [f"dumps/run{i}/cpu.h5.stale-1/cpu.h5.partial"]
        with open(folder.root + f"/dumps/run{i}/cpu.h5.stale-1/cpu.h5.partial", "rb") as fh:
            assert fh.read() == b"half a dump"
        assert read_claim(folder.claim_path(f"run{i}", "cpu")).agent == dead  # attempt 1 is never rewritten
        assert sorted(os.listdir(os.path.join(folder.root, "dumps", f"run{i}"))) == sorted(
            [os.path.basename(site.work_dir(claim)), "cpu.h5.stale-1"])


def test_takeover_backs_off_when_the_owner_is_alive(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    site = _site(folder)
    owner = try_claim(site, new_agent_identity())
    seen = read_current_claim(site)
    time.sleep(0.01)
    assert update_claim(site, owner, heartbeat=Claim("r", "l", {}).heartbeat)  # a heartbeat after it was seen
    assert take_over(site, seen, new_agent_identity(), "heartbeat 999 s old") is None
    assert read_current_claim(site).owned_by(owner.agent) and site.latest_attempt() == 1
    assert os.path.isdir(site.work_dir(owner))  # not moved aside


def _stale_owner(folder: SharedFolder) -> tuple[ClaimSite, Claim]:
    """A claim whose owner finished its dump in its work folder, then was paused past the timeout."""
    site = _site(folder)
    owner = try_claim(site, new_agent_identity())
    with open(os.path.join(site.work_dir(owner), "cpu.h5"), "wb") as fh:
        fh.write(b"the former owner's dump")
    return site, read_current_claim(site)


def test_a_taken_over_owner_can_neither_publish_nor_touch_the_new_claim(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    site, owner = _stale_owner(folder)
    winner = take_over(site, owner, new_agent_identity(), "heartbeat 999 s old")
    assert winner is not None and winner.attempt == 2
    final = folder.dump_path("run1", "cpu")
    # the owner wakes up between its last ownership check and its publish: its link finds nothing to link
    assert publish_work(site, owner, "cpu.h5", final) is False
    assert not os.path.exists(final)
    # its heartbeat: refused, and even a write that passed the check before the takeover lands in its own file
    new_claim = read_current_claim(site).to_dict()
    assert update_claim(site, owner, heartbeat=Claim("r", "l", {}).heartbeat) is False
    atomic_write_json(site.claim_path(owner.attempt), {**owner.to_dict(), "status": "done"})
    assert read_current_claim(site).to_dict() == new_claim == winner.to_dict()
    assert winner.taken_over["stale_files"] == ["dumps/run1/cpu.h5.stale-1/cpu.h5"]  # kept, never published
    # the winner publishes its own dump
    with open(os.path.join(site.work_dir(winner), "cpu.h5"), "wb") as fh:
        fh.write(b"the winner's dump")
    assert publish_work(site, winner, "cpu.h5", final) is True
    with open(final, "rb") as fh:
        assert fh.read() == b"the winner's dump"
    assert sorted(os.listdir(os.path.dirname(final))) == ["cpu.h5", "cpu.h5.stale-1"]
    # a second publish never replaces it
    with pytest.raises(CaptureError) as err:
        os.mkdir(site.work_dir(winner))
        with open(os.path.join(site.work_dir(winner), "cpu.h5"), "wb") as fh:
            fh.write(b"another")
        publish_work(site, winner, "cpu.h5", final)
    assert str(err.value) == (f"{os.path.join(site.work_dir(winner), 'cpu.h5')}: a dump of this label exists already;"
                              " this capture is kept aside")


def test_an_owner_paused_before_its_writer_started_cannot_write_after_a_takeover(tmp_path):
    folder = SharedFolder(tmp_path).ensure_layout()
    site = _site(folder)
    owner = try_claim(site, new_agent_identity())
    assert take_over(site, owner, new_agent_identity(), "heartbeat 999 s old") is not None
    work = os.path.join(site.work_dir(owner), "cpu.h5")
    with pytest.raises(CaptureError, match="the output folder does not exist"):
        DumpWriter(work, Manifest(run_id="run1", label="cpu"))
    assert os.listdir(os.path.join(folder.root, "dumps", "run1")) == [
        os.path.basename(site.work_dir(read_current_claim(site)))]  # the empty folder moved aside was dropped


def test_a_takeover_that_stopped_after_moving_the_work_folder_leaves_nothing_to_publish(tmp_path):
    from protocol.claims import _fence
    folder = SharedFolder(tmp_path).ensure_layout()
    site, owner = _stale_owner(folder)
    _fence(site, owner)  # the taking agent died right after this, before it made attempt 2
    assert publish_work(site, owner, "cpu.h5", folder.dump_path("run1", "cpu")) is False
    assert site.latest_attempt() == 1 and update_claim(site, owner, status="failed", error=ABANDONED)
    assert stale_reason(read_current_claim(site), 60.0) == "abandoned by its agent"
