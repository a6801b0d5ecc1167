"""Two-pass capture in the shared-folder workflow: a job with ``zoom`` is pass 1 (statistics only); after its
divergent report a watcher submits ``<run>.zoom`` (full tensors around the divergence) exactly once, although two
watchers serve the folder, and the agents and watchers then capture and replay it into a report that names the
planted fault. Real agent and watcher processes."""
from __future__ import annotations

import os
import subprocess

from protocol import SharedFolder, open_dump
from protocol.jobs import read_job
from workflows.demo import plant_fault

from .conftest import ENV, make_inputs, no_failed_claims, read_json, wait_for

AGENT = ("agent", "--poll-interval", "0.1")
FAULT = "model.layers.1.mlp.down_proj"


def test_a_zoom_job_gets_one_pass_two_job_that_names_the_fault(procs, shared_root, tmp_path, parity_exe):
    folder = SharedFolder(shared_root)
    plant_fault(os.path.join(shared_root, "models", "tiny-llama"), os.path.join(shared_root, "models", "faulty"),
                f"{FAULT}.weight", scale=0.05)
    inputs = make_inputs(str(tmp_path / "prompts.h5"), samples=2, length=8)
    watchers = [procs.start("watch", "--debounce", "0.1", shared_root, name=f"watcher{i}") for i in (1, 2)]
    agents = (procs.start(*AGENT, shared_root, "--label", "ref", name="ref"),
              procs.start(*AGENT, shared_root, "--label", "bad", name="bad"))
    out = subprocess.run([parity_exe, "submit", shared_root, "--model", "models/tiny-llama", "--inputs", inputs,
                          "--label", "ref", "--label", "bad", "--reference", "ref", "--run-id", "twopass",
                          "--target", "bad:model=models/faulty", "--zoom", "1"],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stderr
    pass1 = folder.pair_report_base("twopass", "ref", "bad") + ".json"
    pass2 = folder.pair_report_base("twopass.zoom", "ref", "bad") + ".json"
    wait_for(lambda: no_failed_claims(shared_root) or (os.path.exists(pass1) and os.path.exists(pass2)), 240,
             "both passes' reports", procs, alive=(*watchers, *agents))

    first = read_json(pass1)
    assert first["verdict"] == "diverged" and first["first_divergence"]["site"] == f"{FAULT}:out"
    zoom_job = read_job(folder.job_path("twopass.zoom"))
    assert zoom_job.zoom is None and zoom_job.labels == ["ref", "bad"] and zoom_job.reference == "ref"
    assert zoom_job.target("bad")["model"] == {"path": "models/faulty"}
    assert zoom_job.inputs == read_job(folder.job_path("twopass")).inputs
    assert zoom_job.policy["default"] == "stats" and zoom_job.policy["rules"]
    assert read_job(folder.job_path("twopass")).policy["default"] == "stats"  # --zoom: pass 1 keeps statistics
    assert sorted(n for n in os.listdir(os.path.join(shared_root, "jobs")) if n.endswith(".json")) == \
        ["twopass.json", "twopass.zoom.json"]  # pass 2 never zooms again, and no temporary file is left
    second = read_json(pass2)
    assert second["local"]["first_introduced"]["module_path"] == FAULT
    with open_dump(folder.dump_path("twopass.zoom", "bad")) as dump:  # full in the window, stats elsewhere
        storage = {str(info.key.site): info.storage for info in dump.records()}
    assert storage[f"{FAULT}:out"] == "full" and storage["model.layers.0.mlp:out"] == "stats"
    for proc in (*watchers, *agents):
        assert proc.terminate(timeout=60) == 0, proc.log()
    submitted = sum(w.log().count("pass 2 submitted as twopass.zoom") for w in watchers)
    assert submitted == 1, "\n".join(w.log() for w in watchers)
