"""Process helpers for the end-to-end tests: real ``parity`` processes on a temporary shared folder.

Every process a test starts is registered with ``procs``, which stops it (SIGTERM, then SIGKILL of its whole
process group) in a finally and fails the test when one had to be killed or left a child behind. Every wait is
bounded and fails with the processes' logs instead of hanging.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from protocol import DumpWriter, InputSample, Manifest, RecordKey, SharedFolder, write_input_set
from protocol.claims import ClaimSite, read_claim, read_current_claim
from protocol.jobs import Job

PARITY = os.path.join(os.path.dirname(sys.executable), "parity")
#: Keep each process on one thread: the machine has 2 cores shared by many processes.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


class Proc:
    """One ``parity`` process with its log file."""

    def __init__(self, args: list[str], log_path: str):
        self.args, self.log_path = args, log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen([PARITY, *args], stdout=self._log, stderr=subprocess.STDOUT, env=ENV,
                                      start_new_session=True)  # its own group: the watcher's workers die with it

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the process and everything in its group (a crash of the host process and its workers)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL the group and fail when it does not stop in time."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail(f"parity {' '.join(self.args)} did not stop within {timeout} s of SIGTERM:\n{self.log()}")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail(f"parity {' '.join(self.args)} did not finish within {timeout} s:\n{self.log()}")

    def close(self) -> None:
        self._log.close()


class Procs:
    """Starts processes and stops them all at the end of the test."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.started: list[Proc] = []

    def start(self, *args: str, name: str) -> Proc:
        proc = Proc([str(a) for a in args], os.path.join(self.log_dir, f"{name}.{len(self.started)}.log"))
        self.started.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {' '.join(p.args)}\n{p.log()}" for p in self.started)

    def stop_all(self) -> list[str]:
        problems = []
        for proc in self.started:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.started:
            try:
                proc.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                problems.append(f"{' '.join(proc.args)} ignored SIGTERM")
            if not _group_gone(proc.pid, timeout=10.0):  # a worker, forkserver or tracker still running: a leak
                problems.append(f"{' '.join(proc.args)} left processes behind")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.popen.wait(timeout=30)
            proc.close()
        return problems


def _group_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of a group has exited within ``timeout`` (helpers such as multiprocessing's
    forkserver exit a moment after their parent)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@pytest.fixture
def procs(tmp_path):
    """Start ``parity`` processes with ``procs.start(*args, name=...)``; all are stopped after the test."""
    helper = Procs(str(tmp_path))
    try:
        yield helper
    finally:
        problems = helper.stop_all()
    assert not problems, "; ".join(problems) + "\n" + helper.logs()


def wait_for(predicate, timeout: float, what: str, procs: Procs | None = None, alive: tuple = ()):
    """Poll ``predicate`` until it returns a true value; fail (with the logs) on timeout or when a process in
    ``alive`` exits early."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for proc in alive:
            if not proc.alive():
                pytest.fail(f"{what}: parity {' '.join(proc.args)} exited with {proc.popen.returncode}:\n"
                            f"{proc.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n" + (procs.logs() if procs else ""))
        time.sleep(0.05)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A tiny random Llama (hidden 64, 2 layers) saved once per session."""
    from capture.tiny_models import build_tiny_llama
    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")), seed=0)


def make_inputs(path: str, samples: int = 2, length: int = 8, seed: int = 0) -> str:
    """A tiny token input set; returns its path."""
    rng = np.random.default_rng(seed)
    write_input_set(path, [InputSample({"input_ids": rng.integers(4, 1000, size=(1, length), dtype=np.int64),
                                        "attention_mask": np.ones((1, length), dtype=np.int64)})
                           for _ in range(samples)], {"source": "tests/e2e random tokens"})
    return path


@pytest.fixture
def shared_root(tmp_path, tiny_llama_dir) -> str:
    """A shared folder holding the tiny Llama under models/tiny-llama."""
    root = tmp_path / "shared"
    SharedFolder(root).ensure_layout()
    shutil.copytree(tiny_llama_dir, root / "models" / "tiny-llama")
    return str(root)


def submit_job(root: str, inputs_path: str, run_id: str, labels: list[str], reference: str, **fields) -> str:
    """Submit a job through the library (tests of the CLI itself use ``parity submit``)."""
    from capture.agent import submit_job as submit
    job = Job(run_id=run_id, model={"path": "models/tiny-llama"}, backend="torch", inputs="0" * 64,
              labels=labels, reference=reference, **fields)
    return submit(root, job, inputs_path)


def no_failed_claims(root: str) -> None:
    """Fail at once when any claim of ROOT failed (a wait for a report would otherwise run into its timeout)."""
    for path in glob.glob(os.path.join(root, "claims", "*", "*.json")):
        if ".attempt" not in os.path.basename(path):  # attempt 1 names the label; the latest attempt counts
            first = read_claim(path)
            claim = claim_of(root, first.run_id, first.label)
            if claim.status == "failed":
                pytest.fail(f"{claim.run_id}/{claim.label} failed: {claim.error}")


def claim_of(root: str, run_id: str, label: str):
    """The current claim (its latest attempt), or None when there is none."""
    return read_current_claim(ClaimSite.capture(SharedFolder(root), run_id, label))


def write_small_dump(path: str, run_id: str, label: str, *, inputs_sha256: str = "cd" * 32, records: int = 3,
                     scale: float = 0.0, seed: int = 0) -> str:
    """A real dump of a few small records (``scale`` adds noise, for a candidate that drifts)."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(seed + 1)
    manifest = Manifest(run_id=run_id, label=label, inputs_sha256=inputs_sha256, dtype="float32")
    with DumpWriter(path, manifest) as writer:
        for i in range(records):
            x = rng.standard_normal((4, 16)).astype(np.float32)
            x = x + scale * noise.standard_normal(x.shape).astype(np.float32)
            writer.add(RecordKey(0, 0, f"model.layers.{i}:out", 0), x, module_type="Linear")
    return path


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
