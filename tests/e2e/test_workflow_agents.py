"""Capture agents on a shared folder: racing agents, killed and stopped agents, refused jobs (real processes)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess

import pytest

from protocol import SharedFolder, open_dump
from protocol.claims import read_claim

from .conftest import claim_of, make_inputs, submit_job, wait_for

AGENT = ("agent", "--poll-interval", "0.1", "--heartbeat-timeout", "30")


def test_four_agents_of_one_label_capture_each_of_20_jobs_exactly_once(procs, shared_root, tmp_path):
    inputs = make_inputs(str(tmp_path / "tiny.h5"), samples=1, length=4)
    for i in range(20):
        submit_job(shared_root, inputs, f"run{i:02d}", ["cpu"], "cpu")
    agents = [procs.start(*AGENT, shared_root, "--label", "cpu", "--once", name=f"agent{n}") for n in range(4)]
    for agent in agents:
        assert agent.wait(timeout=150) == 0, agent.log()
    folder = SharedFolder(shared_root)
    done_lines = [line for a in agents for line in a.log().splitlines() if ": done in " in line]
    assert len(done_lines) == 20, "\n".join(done_lines)
    for i in range(20):
        claim = claim_of(shared_root, f"run{i:02d}", "cpu")
        assert claim.status == "done" and claim.attempt == 1 and claim.taken_over is None
        assert claim.dump == f"dumps/run{i:02d}/cpu.h5"
        with open_dump(folder.dump_path(f"run{i:02d}", "cpu")) as dump:
            assert dump.manifest.run_id == f"run{i:02d}" and dump.manifest.label == "cpu" and len(dump) > 10
    assert sorted(os.listdir(os.path.join(shared_root, "dumps", "run00"))) == ["cpu.h5"]
    assert not any("took over" in a.log() for a in agents)


def _partial(shared_root: str, run_id: str, attempt: int = 1) -> str | None:
    """The partial dump an attempt is writing in its work folder (dumps/<run>/.<label>.attempt<n>.<agent>/), if any."""
    found = glob.glob(os.path.join(shared_root, "dumps", run_id, f".cpu.attempt{attempt}.*", "cpu.h5.partial"))
    return found[0] if found else None


def _slow_job(shared_root: str, tmp_path, run_id: str, samples: int = 60) -> None:
    """A job whose capture takes seconds (many samples), so that an agent can be stopped in the middle of it."""
    inputs = make_inputs(str(tmp_path / f"{run_id}-inputs.h5"), samples=samples, length=16, seed=1)
    submit_job(shared_root, inputs, run_id, ["cpu"], "cpu")


def test_agent_killed_mid_capture_is_resumed_once_and_its_partial_kept_aside(procs, shared_root, tmp_path):
    _slow_job(shared_root, tmp_path, "slow")
    dump_dir = os.path.join(shared_root, "dumps", "slow")
    first = procs.start(*AGENT, shared_root, "--label", "cpu", name="first")
    wait_for(lambda: _partial(shared_root, "slow"), 120, "the first capture to start writing", procs, alive=(first,))
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(timeout=30)
    assert claim_of(shared_root, "slow", "cpu").status == "running"  # nobody said otherwise
    second = procs.start(*AGENT, shared_root, "--label", "cpu", "--once", name="second")
    assert second.wait(timeout=150) == 0, second.log()
    claim = claim_of(shared_root, "slow", "cpu")
    assert claim.status == "done" and claim.attempt == 2
    assert claim.taken_over["previous_agent"]["pid"] == first.pid
    assert "is gone" in claim.taken_over["reason"]
    assert claim.taken_over["stale_files"] == ["dumps/slow/cpu.h5.stale-1/cpu.h5.partial"]
    assert sorted(os.listdir(dump_dir)) == ["cpu.h5", "cpu.h5.stale-1"]
    with open_dump(os.path.join(dump_dir, "cpu.h5")) as dump:
        assert dump.manifest.run_id == "slow" and len({r.key.sample for r in dump.records()}) == 60
    assert second.log().count(": done in ") == 1


def test_sigterm_abandons_the_capture_cleanly_and_a_restart_resumes_it(procs, shared_root, tmp_path):
    _slow_job(shared_root, tmp_path, "slow")
    first = procs.start(*AGENT, shared_root, "--label", "cpu", name="first")
    wait_for(lambda: _partial(shared_root, "slow"), 120, "the capture to start writing", procs, alive=(first,))
    assert first.terminate(timeout=30) == 0, first.log()
    claim = claim_of(shared_root, "slow", "cpu")
    assert claim.status == "failed" and claim.error == "abandoned" and claim.finished
    assert os.listdir(os.path.join(shared_root, "dumps", "slow")) == []  # partial file and work folder removed
    assert "abandoned (agent stopped)" in first.log()
    second = procs.start(*AGENT, shared_root, "--label", "cpu", "--once", name="second")
    assert second.wait(timeout=150) == 0, second.log()
    claim = claim_of(shared_root, "slow", "cpu")
    assert claim.status == "done" and claim.attempt == 2 and claim.taken_over["reason"] == "abandoned by its agent"
    assert claim.taken_over["stale_files"] == []


def test_a_stop_whose_exception_is_lost_still_ends_the_capture_at_the_next_sample(shared_root, tmp_path,
                                                                                  monkeypatch):
    """The stop signal's AgentStopped is raised wherever the main thread happens to be; should the code there swallow
    it, the agent's progress check ends the capture after the current sample (in process: the loss is staged by a
    hook that calls the real signal handler and swallows what it raises)."""
    import capture.agent as agent_module
    from capture.agent import Agent, AgentSettings, AgentStopped
    _slow_job(shared_root, tmp_path, "slow")  # 60 samples
    agent = Agent(AgentSettings(root=shared_root, label="cpu", once=True, poll_interval=0.1, heartbeat_timeout=30))
    forwards = []

    def swallow_a_stop_in_the_third_forward(module, args):
        forwards.append(1)
        if len(forwards) == 3:
            try:
                agent.handle_signal(signal.SIGTERM, None)
            except AgentStopped:
                pass  # lost

    handles = []

    def load_backend(*args, **kwargs):
        backend = real_load_backend(*args, **kwargs)
        handles.append(backend.model.register_forward_pre_hook(swallow_a_stop_in_the_third_forward))
        return backend
    real_load_backend = agent_module.load_backend
    monkeypatch.setattr(agent_module, "load_backend", load_backend)
    try:
        assert agent.run() == 0
    finally:
        for handle in handles:
            handle.remove()
    assert len(forwards) == 3  # not 60: the capture ended after the sample the stop came in
    claim = claim_of(shared_root, "slow", "cpu")
    assert claim.status == "failed" and claim.error == "abandoned"
    assert os.listdir(os.path.join(shared_root, "dumps", "slow")) == []


def _hand_written_job(root: str, run_id: str, model_path: str) -> None:
    sha = os.path.basename(glob.glob(os.path.join(root, "inputs", "*.h5"))[0])[:-3]
    doc = {"format": "tensorparity.job", "format_version": "1.0", "run_id": run_id, "created": "2026-01-01T00:00:00",
           "model": {"path": model_path}, "backend": "torch", "inputs": sha, "mode": "forward",
           "max_new_tokens": 0, "policy": {"rules": [], "default": "stats", "byte_budget": None},
           "labels": ["cpu"], "reference": "cpu", "targets": {}, "thresholds": None}
    with open(os.path.join(root, "jobs", f"{run_id}.json"), "w") as fh:
        json.dump(doc, fh)


def test_jobs_escaping_the_shared_folder_are_refused_not_executed(procs, shared_root, tmp_path, parity_exe):
    inputs = make_inputs(str(tmp_path / "tiny.h5"), samples=1, length=4)
    submit_job(shared_root, inputs, "good", ["cpu"], "cpu")
    outside = tmp_path / "outside-model"
    shutil.copytree(os.path.join(shared_root, "models", "tiny-llama"), outside)  # a real model, but outside ROOT
    os.symlink(outside, os.path.join(shared_root, "models", "link-out"))
    _hand_written_job(shared_root, "dotdot", "../outside-model")
    _hand_written_job(shared_root, "symlink", "models/link-out")
    _hand_written_job(shared_root, "nomodel", "models/missing")
    agent = procs.start(*AGENT, shared_root, "--label", "cpu", "--once", name="agent")
    assert agent.wait(timeout=120) == 0, agent.log()
    assert claim_of(shared_root, "good", "cpu").status == "done"
    for run_id, message in (("dotdot", "'../outside-model' escapes the shared folder"),
                            ("symlink", "'models/link-out' escapes the shared folder"),
                            ("nomodel", "model not found")):
        claim = claim_of(shared_root, run_id, "cpu")
        assert claim.status == "failed" and message in claim.error, claim.error
        assert not os.path.exists(os.path.join(shared_root, "dumps", run_id, "cpu.h5"))
    assert agent.log().count("refused, not executed") == 1  # dotdot: invalid as a document
    out = subprocess.run([parity_exe, "status", shared_root], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split("\t")[:4] == ["run", "label", "role", "claim"]  # the header
    lines = {line.split("\t")[0]: line.split("\t") for line in out.stdout.splitlines()}
    assert lines["good"][3] == "done" and lines["dotdot"][3] == "failed"
    assert "escapes the shared folder" in lines["dotdot"][-1]


PAUSE_ROUNDS = 4
PAUSE_SAMPLES = 30  # a capture of a few seconds: long enough to be paused in the middle of it
#: short timeouts: a paused agent is taken over 3 s after its last heartbeat
FAST = ("agent", "--poll-interval", "0.1", "--heartbeat-timeout", "3", "--heartbeat-interval", "0.1")


@pytest.mark.slow
def test_an_agent_paused_past_the_timeout_never_publishes_nor_touches_the_winners_claim(procs, shared_root,
                                                                                        tmp_path):
    """SIGSTOP the agent that captures, let the other take over, SIGCONT it: in every round there is exactly one
    dump, the winner's, and the winner's claim is intact. Rounds resume the paused agent at different moments:
    as soon as it was taken over (both then run at once) or after the winner has published."""
    agents = [procs.start(*FAST, shared_root, "--label", "cpu", name=f"agent{n}") for n in range(2)]
    by_pid = {a.pid: a for a in agents}
    folder = SharedFolder(shared_root)
    for round_ in range(PAUSE_ROUNDS):
        run_id = f"paused{round_}"
        _slow_job(shared_root, tmp_path, run_id, samples=PAUSE_SAMPLES)
        wait_for(lambda: _partial(shared_root, run_id), 120, f"round {round_}: a capture to start writing", procs,
                 alive=agents)
        paused = by_pid[claim_of(shared_root, run_id, "cpu").agent["pid"]]
        winner = next(a for a in agents if a is not paused)
        os.kill(paused.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: (c := claim_of(shared_root, run_id, "cpu")).attempt == 2 and (
                round_ % 2 == 0 or c.status == "done"), 120, f"round {round_}: the takeover", procs, alive=agents)
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        wait_for(lambda: claim_of(shared_root, run_id, "cpu").status == "done", 120,
                 f"round {round_}: the winner's dump", procs, alive=agents)
        wait_for(lambda: f"job {run_id} label cpu: attempt 1 was taken over by another agent (attempt 2); "
                         "nothing published" in paused.log(), 60, f"round {round_}: the paused agent to give up",
                 procs, alive=agents)
        claim = claim_of(shared_root, run_id, "cpu")
        assert claim.status == "done" and claim.attempt == 2 and claim.agent["pid"] == winner.pid, claim
        assert claim.dump == f"dumps/{run_id}/cpu.h5" and claim.error is None
        assert claim.taken_over["previous_agent"]["pid"] == paused.pid
        assert claim.taken_over["reason"].startswith("heartbeat ") and claim.taken_over["previous_claim"] == "cpu.json"
        first = read_claim(folder.claim_path(run_id, "cpu"))
        assert first.attempt == 1 and first.agent["pid"] == paused.pid and first.status == "running"
        dump_dir = os.path.join(shared_root, "dumps", run_id)
        assert sorted(os.listdir(dump_dir)) == ["cpu.h5", "cpu.h5.stale-1"]  # one dump, the loser's work aside
        assert claim.taken_over["stale_files"] == [f"dumps/{run_id}/cpu.h5.stale-1/cpu.h5.partial"]
        with open_dump(os.path.join(dump_dir, "cpu.h5")) as dump:  # the winner's: its manifest names its claim
            assert dump.manifest.extra["claim"] == {"attempt": 2, "agent": claim.agent["id"],
                                                    "host": claim.agent["host"]}
            assert len({r.key.sample for r in dump.records()}) == PAUSE_SAMPLES
        assert winner.log().count(f"job {run_id} label cpu: done in ") == 1
        assert f"job {run_id} label cpu: done" not in paused.log()
    for agent in agents:
        assert agent.terminate(timeout=60) == 0, agent.log()
