"""Analysis on a Dask cluster (``--scheduler``): a real ``dask scheduler`` and two ``dask worker`` processes (each
under its nanny) on loopback, real dumps, real ``parity`` processes. A distributed compare's report equals the local
one; the watcher writes each report once even when the worker analysing a pair is killed mid-analysis; an
unreachable scheduler is one line and exit code 3.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import analyze
from analyze.distributed import ClusterSettings, _measure_batch, _tensorparity_version
from analyze.errors import ClusterError
from analyze.compare import measure_pair
from analyze.render.text import summary_lines
from protocol import SharedFolder, compute_stats, open_dump, read_input_set
from protocol.jobs import Job, write_job

from ..analyze.conftest import input_set, write_dump  # noqa: F401 (input_set: a fixture used below)
from ..analyze.torch_dumps import capture
from .conftest import ENV, PARITY, make_inputs, read_json, wait_for, write_small_dump

pytestmark = pytest.mark.slow

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


class DaskCluster:
    """A scheduler and its workers as separate process groups, with a client of the test's own."""

    def __init__(self, folder: str):
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.logs: list[str] = []
        self.client = None
        self.address = ""

    def _start(self, name: str, *args: str) -> None:
        log = os.path.join(self.folder, f"{name}.log")
        self.logs.append(log)
        with open(log, "ab") as fh:
            self.procs.append(subprocess.Popen([DASK, *args], stdout=fh, stderr=subprocess.STDOUT, env=ENV,
                                               cwd=self.folder, start_new_session=True))

    def start(self, workers: int = 2) -> "DaskCluster":
        from distributed import Client
        sched_file = os.path.join(self.folder, "scheduler.json")
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", sched_file)
        wait_for(lambda: os.path.exists(sched_file) and os.path.getsize(sched_file), 60, "the scheduler file")
        time.sleep(0.1)  # written in one go, but give the writer its close
        with open(sched_file, encoding="utf-8") as fh:
            self.address = json.load(fh)["address"]
        for i in range(workers):
            self._start(f"worker{i}", "worker", self.address, "--nthreads", "1", "--no-dashboard",
                        "--host", "127.0.0.1", "--name", f"w{i}")
        self.client = Client(self.address, timeout=30, set_as_default=False)
        self.client.wait_for_workers(workers, timeout=60)
        return self

    def log_text(self) -> str:
        parts = []
        for path in self.logs:
            with open(path, encoding="utf-8", errors="replace") as fh:
                parts.append(f"--- {os.path.basename(path)}\n{fh.read()[-4000:]}")
        return "\n".join(parts)

    def executing(self, prefix: str) -> dict:
        """worker address -> keys of the tasks it is running right now whose key starts with ``prefix``."""
        running = self.client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])
        return {w: [k for k in keys if k.startswith(prefix)] for w, keys in running.items()
                if any(k.startswith(prefix) for k in keys)}

    def times_processed(self, key: str) -> int:
        """How many times the scheduler handed the task ``key`` to a worker."""
        story = self.client.run_on_scheduler(lambda dask_scheduler: [list(map(str, s))
                                                                    for s in dask_scheduler.story(key)])
        return sum(1 for s in story if s[1:3] == ["waiting", "processing"])

    def stop(self) -> list[str]:
        problems = []
        if self.client is not None:
            self.client.close()
        for proc in reversed(self.procs):  # workers first, then the scheduler
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                problems.append(f"{proc.args} ignored SIGTERM")
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # a nanny's worker left behind
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=30)
        return problems


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One scheduler and two single-thread workers for the module's tests."""
    helper = DaskCluster(str(tmp_path_factory.mktemp("dask")))
    try:
        yield helper.start()
    finally:
        problems = helper.stop()
    assert not problems, "; ".join(problems) + "\n" + helper.log_text()


def _comparable(report_doc: dict) -> str:
    """A report's JSON text without what may differ between two runs of the same comparison (its timing)."""
    doc = {k: v for k, v in report_doc.items() if k not in ("created", "duration_s")}
    return json.dumps(doc, sort_keys=True)


def _parity(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PARITY, *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def test_distributed_compare_of_real_captures_equals_the_local_one(cluster, tmp_path, tiny_llama_dir):
    inputs = make_inputs(str(tmp_path / "inputs.h5"), samples=2, length=12)
    ref = capture(tiny_llama_dir, read_input_set(inputs), str(tmp_path / "fp32.h5"), label="fp32")
    cand = capture(tiny_llama_dir, read_input_set(inputs), str(tmp_path / "bf16.h5"), dtype="bfloat16",
                   label="bf16")
    local = analyze.compare(ref, cand, inputs=inputs)
    dist = _parity("compare", ref, cand, "--inputs", inputs, "-o", str(tmp_path / "dist.json"), "--tokens",
                   "--scheduler", cluster.address)
    assert dist.returncode == local.exit_code == 1, dist.stderr  # bf16 drifts over tolerance
    assert "Traceback" not in dist.stderr, dist.stderr
    assert dist.stdout.splitlines()[:-1] == summary_lines(local)  # the terminal lines, then "report: ..."
    a = local.to_dict(tokens=True)
    assert len(a["sites"]) > 20 and a["logits"] and a["logits"][0]["records"][0]["per_token"]
    assert _comparable(read_json(str(tmp_path / "dist.json"))) == _comparable(json.loads(json.dumps(a)))


def test_every_record_kind_and_rank_is_merged_in_the_local_order(cluster, tmp_path, input_set):
    path, sha, _ = input_set
    rng = np.random.default_rng(3)
    vals = np.array([[5.0, 4.0, 3.0]], np.float32)
    topk = {"storage": "topk", "reduction": {"kind": "topk", "k": 3}, "stats": compute_stats(vals)}
    for side, noise in (("ref", 0.0), ("cand", 0.02)):
        for rank in range(2):
            r = np.random.default_rng(rank)
            recs = []
            for s in range(2):
                for layer in range(4):  # full records, read in several blocks (chunk_elements below)
                    h = r.standard_normal((1, 12, 40)).astype(np.float32)
                    recs.append((f"s{s}/t0/model.layers.{layer}:out#0",
                                 h + noise * rng.standard_normal(h.shape).astype(np.float32)))
                recs.append(("stats", f"s{s}/t0/model.norm:out#0", compute_stats(h * (1 + noise)), "float32",
                             h.shape))
                lg = (3 * r.standard_normal((1, 12, 50))).astype(np.float32)
                recs.append((f"s{s}/t0/:out.logits#0", lg + noise * rng.standard_normal(lg.shape).astype(np.float32)))
            recs.append(("s0/t0/head:out#0", vals, {**topk, "aux": np.array([[1, 2, 3 if side == "ref" else 9]])}))
            recs.append(("s0/t0/odd:out#0", np.ones((2, 3) if side == "ref" else (3, 2), np.float32)))  # an error
            recs.append((f"s0/t0/only_{side}:out#0", np.ones(4, np.float32)))  # unmatched
            write_dump(tmp_path / f"{side}.rank{rank}.h5", recs, sha=sha, rank=rank, world_size=2, label=side)
    ref = sorted(str(p) for p in tmp_path.glob("ref.rank*.h5"))
    cand = sorted(str(p) for p in tmp_path.glob("cand.rank*.h5"))
    kwargs = {"inputs": path, "chunk_elements": 100}
    local = analyze.compare(ref, cand, **kwargs)
    # a batch per record pair or so: the merge order is what is tested
    many = ClusterSettings(cluster.address, batches_per_thread=40)
    dist = analyze.compare(ref, cand, scheduler=many, **kwargs)
    assert local.errors and local.unmatched["reference_only"] and local.logits and local.exit_code == 1
    assert {r.kind for s in local.sites for r in s.records} >= {"full", "stats-only", "topk"}
    assert _comparable(dist.to_dict(tokens=True)) == _comparable(local.to_dict(tokens=True))
    # an open client is used as it is, and left open
    assert _comparable(analyze.compare(ref, cand, scheduler=cluster.client, **kwargs).to_dict(tokens=True)) \
        == _comparable(local.to_dict(tokens=True))
    assert cluster.client.status == "running"


def test_a_worker_that_sees_no_dump_or_another_file_or_runs_another_tensorparity_names_it(tmp_path):
    ref = write_dump(tmp_path / "ref.h5", [("s0/t0/a:out#0", np.ones(4, np.float32))], label="ref")
    with open_dump(ref) as r:
        info = r.records()[0]
        created = r.manifest.created
    size = os.path.getsize(ref)
    options = {"atol": 1e-5, "rtol": 1e-5, "table": None, "topk": 5, "chunk_elements": 1 << 20}
    version = _tensorparity_version()
    missing = (str(tmp_path / "elsewhere.h5"), size, "ref", created)
    with pytest.raises(ClusterError, match="does not see this dump.*same path on every host"):
        _measure_batch(measure_pair, version, missing, missing, 0, [(info, info)], [False], None, options)
    other = (ref, size, "ref", "2001-01-01T00:00:00+00:00")
    with pytest.raises(ClusterError, match="sees another file at this path"):
        _measure_batch(measure_pair, version, other, other, 0, [(info, info)], [False], None, options)
    same = (ref, size, "ref", created)
    # a worker that joined after the client's check, with another tensorparity: refused before it computes
    with pytest.raises(ClusterError, match=f"runs tensorparity {version}, the client 0.0.0.*same tensorparity"):
        _measure_batch(measure_pair, "0.0.0", same, same, 0, [(info, info)], [False], None, options)
    [(rec, logit)] = _measure_batch(measure_pair, version, same, same, 0, [(info, info)], [False], None, options)
    assert rec.status == "ok" and rec.metrics["rel_l2"] == 0.0 and logit is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_one_line_and_exit_code_3(tmp_path):
    ref = write_dump(tmp_path / "ref.h5", [("s0/t0/a:out#0", np.ones(4, np.float32))], label="ref")
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    folder = SharedFolder(tmp_path / "shared").ensure_layout()
    runs = [_parity("compare", ref, ref, "--scheduler", address, "--scheduler-timeout", "1"),
            _parity("watch", folder.root, "--once", "--scheduler", address, "--scheduler-timeout", "1")]
    for run in runs:
        assert run.returncode == 3, run.stdout + run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        lines = [ln for ln in run.stderr.splitlines() if "cannot reach the Dask scheduler" in ln]
        assert len(lines) == 1 and address in lines[0], run.stderr
    with pytest.raises(ClusterError, match="is not a Dask scheduler address"):
        analyze.compare(ref, ref, scheduler="tcp://127.0.0.1:notaport")


def test_watch_on_the_cluster_writes_each_report_once_when_a_worker_dies_mid_analysis(cluster, procs, tmp_path):
    folder = SharedFolder(tmp_path / "shared").ensure_layout()
    write_job(folder, Job(run_id="r1", model={"path": "models/none"}, backend="torch", inputs="cd" * 32,
                          labels=["ref", "a", "b"], reference="ref"))
    dump_dir = os.path.join(folder.root, "dumps", "r1")
    os.makedirs(dump_dir)
    n = 300  # ~1 s of analysis on a worker: time to see it running and kill it
    write_small_dump(os.path.join(dump_dir, "ref.h5"), "r1", "ref", records=n)
    for label, scale in (("a", 0.5), ("b", 0.01)):
        write_small_dump(os.path.join(dump_dir, f"{label}.h5"), "r1", label, records=n, scale=scale)
    before = cluster.client.run(os.getpid)
    watcher = procs.start("watch", folder.root, "--once", "--debounce", "0.1", "--scheduler", cluster.address,
                          name="watcher")
    running = wait_for(lambda: cluster.executing("parity-pair-"), 60, "a pair's analysis on a worker", procs,
                       alive=(watcher,))
    worker, [key] = next(iter(running.items()))
    os.kill(before[worker], signal.SIGKILL)  # the worker process itself; its nanny starts a new one
    assert watcher.wait(timeout=120) == 0, watcher.log()
    log = watcher.log()
    assert f"Dask scheduler {cluster.address}, 2 worker thread(s)" in log, log
    assert cluster.times_processed(key) >= 2, cluster.log_text()  # the killed worker's task ran again elsewhere
    reports = folder.report_dir("r1")
    for label in ("a", "b"):
        assert log.count(f"run r1: {label} vs ref: diverged") == 1, log
        local = analyze.compare(os.path.join(dump_dir, "ref.h5"), os.path.join(dump_dir, f"{label}.h5"))
        assert _comparable(read_json(os.path.join(reports, f"ref__vs__{label}.json"))) \
            == _comparable(local.to_dict())
    assert "watcher stopped: 2 report(s), 0 error report(s)" in log, log
    assert "appeared meanwhile" not in log and "taken over" not in log and "analysis failed" not in log, log
    assert sorted(n for n in os.listdir(reports) if n.endswith(".json")) == ["ref__vs__a.json", "ref__vs__b.json"]
    cluster.client.wait_for_workers(2, timeout=60)  # the nanny's new worker, for whatever runs next
