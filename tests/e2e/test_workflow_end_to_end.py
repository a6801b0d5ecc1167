"""The whole shared-folder workflow: `parity submit`, two agents (CPU fp32, CPU bf16), a watcher, `parity status`."""
from __future__ import annotations

import json
import os
import subprocess

from click.testing import CliRunner

from workflows.cli.main import cli
from protocol import SharedFolder, open_dump

from .conftest import ENV, claim_of, make_inputs, no_failed_claims, read_json, wait_for

AGENT = ("agent", "--poll-interval", "0.1")


def _submit(parity_exe: str, root: str, inputs: str, run_id: str, *extra: str) -> str:
    out = subprocess.run([parity_exe, "submit", root, "--model", "models/tiny-llama", "--inputs", inputs,
                          "--label", "cpu-fp32", "--label", "cpu-bf16", "--reference", "cpu-fp32",
                          "--run-id", run_id, *extra], capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_two_agents_and_a_watcher_report_both_runs_with_the_right_verdicts(procs, shared_root, tmp_path,
                                                                           parity_exe):
    folder = SharedFolder(shared_root)
    inputs = make_inputs(str(tmp_path / "prompts.h5"), samples=2, length=8)
    watcher = procs.start("watch", "--debounce", "0.1", shared_root, name="watcher")
    agents = (procs.start(*AGENT, shared_root, "--label", "cpu-fp32", "--dtype", "float32", name="fp32"),
              procs.start(*AGENT, shared_root, "--label", "cpu-bf16", "--dtype", "bfloat16", name="bf16"))
    job_path = _submit(parity_exe, shared_root, inputs, "bf16-drift")
    assert job_path == folder.job_path("bf16-drift")
    _submit(parity_exe, shared_root, inputs, "same-dtype", "--target", "cpu-bf16:dtype=float32")
    reports = {run: folder.pair_report_base(run, "cpu-fp32", "cpu-bf16") + ".json"
               for run in ("bf16-drift", "same-dtype")}
    wait_for(lambda: no_failed_claims(shared_root) or all(os.path.exists(p) for p in reports.values()), 180, "both reports", procs,
             alive=(watcher, *agents))

    for base in (p[:-len(".json")] for p in reports.values()):  # the tables and the page come with the JSON
        assert all(os.path.getsize(base + ext) > 0 for ext in (".csv", ".records.csv", ".html"))
        with open(base + ".html", encoding="utf-8") as fh:
            assert "<canvas" in fh.read()
    drift, same = read_json(reports["bf16-drift"]), read_json(reports["same-dtype"])
    assert same["verdict"] == "pass" and same["first_divergence"] is None
    # bfloat16 keeps 8 bits of mantissa: its error (~4e-3 per rounding) grows through the layers past 1e-2
    assert drift["verdict"] == "diverged"
    first = drift["first_divergence"]
    assert first["tolerance"] == 1e-2 and 1e-2 < first["rel_l2"] < 0.5, first
    # the job's model is a PyTorch folder inside ROOT: the watcher replayed every module on it, and bf16's
    # accumulated drift is nobody's fault (the same-dtype run is exact module by module)
    assert drift["local"]["replayed"] > 20 and drift["local"]["first_introduced"] is None, drift["local"]["modules"][:2]
    assert drift["local"]["model"].endswith("models/tiny-llama")
    assert all(e["local"] == 0.0 for e in same["local"]["modules"])
    with open_dump(folder.dump_path("bf16-drift", "cpu-bf16")) as dump:
        assert dump.manifest.dtype == "bfloat16" and dump.manifest.inputs_sha256 == read_json(job_path)["inputs"]
    with open_dump(folder.dump_path("same-dtype", "cpu-bf16")) as dump:
        assert dump.manifest.dtype == "float32"  # the job's per-label target won over the agent's --dtype
    for run in reports:
        for label in ("cpu-fp32", "cpu-bf16"):
            claim = claim_of(shared_root, run, label)
            assert claim.status == "done" and claim.attempt == 1 and claim.dump == f"dumps/{run}/{label}.h5"
    lines = ("run bf16-drift: cpu-bf16 vs cpu-fp32: diverged, first divergence: " + first["site"],
             "run same-dtype: cpu-bf16 vs cpu-fp32: pass, first divergence: none")
    # a watcher logs a report's line just after writing its JSON, an agent its "done" line just after publishing
    wait_for(lambda: all(line in watcher.log() for line in lines), 30, "the watcher's report lines", procs)
    wait_for(lambda: all(a.log().count(": done in ") >= 2 for a in agents), 30, "the agents' done lines", procs)
    log = watcher.log()
    assert [log.count(line) for line in lines] == [1, 1], log
    for agent in agents:
        assert agent.log().count(": done in ") == 2, agent.log()

    result = CliRunner().invoke(cli, ["status", shared_root, "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["run_id"], r["label"]): r for r in json.loads(result.output)}
    assert rows[("bf16-drift", "cpu-bf16")]["verdict"] == "diverged"
    assert rows[("bf16-drift", "cpu-bf16")]["first_divergence"] == first["site"]
    assert rows[("same-dtype", "cpu-bf16")]["verdict"] == "pass"
    assert rows[("same-dtype", "cpu-fp32")]["role"] == "reference" and rows[("same-dtype", "cpu-fp32")]["claim"] == "done"
    for proc in (watcher, *agents):
        assert proc.terminate(timeout=60) == 0, proc.log()


def test_submit_refuses_what_agents_could_not_run(shared_root, tmp_path):
    inputs = make_inputs(str(tmp_path / "prompts.h5"), samples=1, length=4)
    runner = CliRunner()
    base = ["submit", shared_root, "--inputs", inputs, "--label", "a", "--label", "b", "--reference", "a"]
    outside = tmp_path / "model-outside"
    outside.mkdir()
    for args, message in (
            (["--model", str(outside)], "model is outside the shared folder"),
            (["--model", "models/missing"], "model not found"),
            (["--model", "models/tiny-llama", "--reference", "c"], "reference 'c' is not one of labels"),
            (["--model", "models/tiny-llama", "--label", "x/y"], "invalid label 'x/y'"),
            (["--model", "models/tiny-llama", "--run-id", "../up"], "invalid run id '../up'")):
        result = runner.invoke(cli, base + args)
        assert result.exit_code == 3 and message in result.output, result.output
    result = runner.invoke(cli, base + ["--model", "models/tiny-llama", "--policy", "x=bogus"])
    assert result.exit_code == 2 and "invalid policy action 'bogus'" in result.output
    result = runner.invoke(cli, base + ["--model", "models/tiny-llama", "--run-id", "r1", "--policy", "logits=topk:5"])
    assert result.exit_code == 0, result.output
    job = read_json(os.path.join(shared_root, "jobs", "r1.json"))
    assert job["policy"]["rules"] == [{"pattern": "logits", "action": "topk", "params": {"k": 5}}]
    assert os.path.exists(os.path.join(shared_root, "inputs", job["inputs"] + ".h5"))
    result = runner.invoke(cli, base + ["--model", "models/tiny-llama", "--run-id", "r1"])
    assert result.exit_code == 3 and "a job with this run id exists already" in result.output
    assert not os.path.exists(os.path.join(shared_root, "jobs", "up.json"))


def test_help_of_every_workflow_command_ends_with_an_example():
    for name in ("submit", "agent", "watch", "status"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and f"parity {name} " in result.output.split("Example:")[1]
