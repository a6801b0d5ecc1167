"""Two-pass capture (analyze/zoom.py, ``parity zoom``, ``parity capture torch --policy-file``) on real captures of
a tiny Llama with a planted fault: pass 1 (statistics only) finds the region, pass 2 (full tensors in a window
around it) names the same faulty module by replay as one full capture does, and writes fewer bytes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import analyze
from analyze.zoom import module_pattern, zoom_policy
from capture.base import CaptureOptions
from capture.policy import RecordPolicy
from capture.tiny_models import build_tiny_llama
from capture.torch_backend import TorchBackend
from workflows.demo import plant_fault

from .torch_dumps import capture, input_set

FAULT = "model.layers.1.mlp.down_proj"
#: the installed entry point (the parity_exe fixture is function-scoped; the captures below are module-scoped)
PARITY = os.path.join(os.path.dirname(sys.executable), "parity")


def _stats_capture(model_folder: str, inputs, out: str) -> str:
    """Pass 1: every site of every module as statistics only."""
    backend = TorchBackend.from_pretrained(model_folder, device="cpu", dtype="float32")
    backend.capture(inputs, out, CaptureOptions(label=os.path.basename(out)[:-3],
                                                policy=RecordPolicy(default="stats")))
    return out


def _bytes(*paths: str) -> int:
    return sum(os.path.getsize(p) for p in paths)


@pytest.fixture(scope="module")
def two_pass(corpus_file, tmp_path_factory):
    """A 4-layer model and its faulty copy, captured in full and in two passes (pass 2 through the CLI)."""
    folder = tmp_path_factory.mktemp("zoom")
    model = build_tiny_llama(str(folder / "model"), num_layers=4)
    faulty = plant_fault(model, str(folder / "faulty"), f"{FAULT}.weight", scale=0.05)
    inputs_path = str(folder / "inputs.h5")
    inputs = input_set(model, corpus_file, inputs_path)
    full = [capture(model, inputs, str(folder / "ref-full.h5")), capture(faulty, inputs, str(folder / "cand-full.h5"))]
    pass1 = [_stats_capture(model, inputs, str(folder / "ref-stats.h5")),
             _stats_capture(faulty, inputs, str(folder / "cand-stats.h5"))]
    report1 = str(folder / "pass1.json")
    analyze.compare(*pass1).write_json(report1)
    policy = str(folder / "zoom.json")
    run = subprocess.run([PARITY, "zoom", report1, "--window", "3", "-o", policy], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    pass2 = []
    for name, src in (("ref-zoom", model), ("cand-zoom", faulty)):
        out = str(folder / f"{name}.h5")
        run = subprocess.run([PARITY, "capture", "torch", src, "--inputs", inputs_path, "--label", name,
                              "-o", out, "--policy-file", policy], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        pass2.append(out)
    return {"folder": folder, "model": model, "full": full, "pass1": pass1, "pass2": pass2, "report1": report1,
            "policy": policy, "zoom_stdout": run.stdout}


def test_pass_two_names_the_faulty_module_like_a_full_capture(two_pass):
    full = analyze.compare(*two_pass["full"], replay=two_pass["model"])
    zoomed = analyze.compare(*two_pass["pass2"], replay=two_pass["model"])
    assert full.local["first_introduced"]["module_path"] == FAULT
    assert zoomed.local["first_introduced"]["module_path"] == FAULT
    assert zoomed.first_divergence["site"] == full.first_divergence["site"] == f"{FAULT}:out"
    # the logits are full in pass 2 too: the logit block is there
    assert zoomed.logits and zoomed.logits[0].site == ":out.logits"


def test_pass_one_then_two_writes_fewer_bytes_than_one_full_capture(two_pass):
    full, pass1, pass2 = (_bytes(*two_pass[k]) for k in ("full", "pass1", "pass2"))
    print(f"\nzoom bytes: full {full}, pass 1 {pass1}, pass 2 {pass2}, two-pass total {pass1 + pass2} "
          f"({(pass1 + pass2) / full:.1%} of full)")
    assert pass2 < full and pass1 + pass2 < full


def test_zoom_policy_keeps_the_window_its_inputs_and_the_logits_full(two_pass):
    plan = zoom_policy(two_pass["report1"], window=3)
    with open(two_pass["policy"], encoding="utf-8") as fh:
        assert json.load(fh) == plan.policy  # the CLI wrote what the library returns
    policy = RecordPolicy.from_dict(plan.policy)  # the document the torch capture accepts
    assert plan.centre == f"{FAULT}:out" and plan.centred_on == "first_divergence"
    assert policy.default == "stats"
    for site in (f"{FAULT}:in.0", f"{FAULT}:out", ":out.logits"):
        assert policy.decide(site).action == "full", site
    for site in ("model.layers.3.mlp.down_proj:out", "model.layers.0.self_attn:out", "model.embed_tokens:out"):
        assert policy.decide(site).action == "stats", site
    # a report with replay results centres on the first module that introduces error
    replayed = analyze.compare(*two_pass["pass2"], replay=two_pass["model"])
    assert zoom_policy(replayed, window=0).centred_on == "first_introduced"


@pytest.mark.parametrize("module, site, hit", [
    ("model.layers.1", "model.layers.1:in.0", True),
    ("model.layers.1", "model.layers.1.mlp.up_proj:out", True),
    ("model.layers.1", "model.layers.10:out", False),
    ("model.layers.1", "xmodel.layers.1:out", False),
], ids=["own-input", "submodule", "not-layer-10", "anchored"])
def test_module_pattern(module, site, hit):
    assert bool(re.search(module_pattern(module), site)) is hit


def test_no_divergence_writes_nothing_and_exits_zero(two_pass, parity_exe, tmp_path):
    same = str(tmp_path / "same.json")
    analyze.compare(two_pass["pass1"][0], two_pass["pass1"][0]).write_json(same)
    out = tmp_path / "zoom.json"
    run = subprocess.run([parity_exe, "zoom", same, "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0 and "no divergence, nothing to zoom on" in run.stdout
    assert not out.exists()


def test_bad_report_and_bad_policy_file_exit_three(parity_exe, tmp_path, two_pass):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    run = subprocess.run([parity_exe, "zoom", str(bad)], capture_output=True, text=True)
    assert run.returncode == 3 and "report is not valid JSON" in run.stderr and "Traceback" not in run.stderr
    bad.write_text(json.dumps({"rules": [{"pattern": "(", "action": "full"}]}), encoding="utf-8")
    run = subprocess.run([parity_exe, "capture", "torch", two_pass["model"], "--inputs",
                          str(two_pass["folder"] / "inputs.h5"), "--label", "x", "-o", str(tmp_path / "x.h5"),
                          "--policy-file", str(bad)], capture_output=True, text=True)
    assert run.returncode == 3 and "invalid policy file" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.h5").exists()


def test_the_watcher_submits_pass_two_once_from_what_is_on_disk(two_pass, tmp_path):
    """submit_zoom_job decides from the job and the published reports alone (a restarted watcher catches up) and
    writes ``<run>.zoom`` once; a run without zoom, a run with nothing divergent yet and an unusable report are no."""
    import shutil

    from analyze.watch_zoom import submit_zoom_job
    from protocol import SharedFolder
    from protocol.jobs import Job, read_job, write_job

    folder = SharedFolder(str(tmp_path / "shared"))
    os.makedirs(os.path.join(folder.root, "jobs"))
    stats = {"rules": [], "default": "stats", "byte_budget": None}
    for run_id, zoom in (("plain", None), ("twopass", 1)):
        write_job(folder, Job(run_id=run_id, model={"path": "models/m"}, backend="torch", inputs="0" * 64,
                              labels=["ref", "bad"], reference="ref", policy=stats, zoom=zoom))
    assert submit_zoom_job(folder, "twopass") is None  # no report yet
    reports = folder.report_dir("twopass")
    os.makedirs(reports)
    with open(os.path.join(reports, "ref__vs__bad.json"), "w", encoding="utf-8") as fh:
        fh.write("{damaged")  # skipped with a warning; another pair's report may do
    assert submit_zoom_job(folder, "twopass") is None
    shutil.copy(two_pass["report1"], os.path.join(reports, "ref__vs__worse.json"))
    os.makedirs(folder.report_dir("plain"))
    shutil.copy(two_pass["report1"], os.path.join(folder.report_dir("plain"), "ref__vs__bad.json"))
    assert submit_zoom_job(folder, "plain") is None  # not a two-pass run
    path = submit_zoom_job(folder, "twopass")
    assert path == folder.job_path("twopass.zoom")
    job = read_job(path)
    assert job.zoom is None and job.policy == zoom_policy(two_pass["report1"], window=1).policy
    before = os.stat(path).st_mtime_ns
    assert submit_zoom_job(folder, "twopass") is None and os.stat(path).st_mtime_ns == before  # once
    assert submit_zoom_job(folder, "twopass.zoom") is None  # pass 2 never zooms again
    assert sorted(os.listdir(os.path.join(folder.root, "jobs"))) == ["plain.json", "twopass.json", "twopass.zoom.json"]


def test_the_stack_around_the_layers_brings_only_its_own_sites():
    """A window that reaches a site of ``model`` (the decoder holding every layer) keeps that module's own sites,
    not its subtree (the whole network); a layer in the window still brings its projections."""
    from types import SimpleNamespace
    sites = [(":in.input_ids", ""), ("model:in.kwargs.input_ids", "model"),
             ("model.embed_tokens:out", "model.embed_tokens"), ("model.layers.0:in.0", "model.layers.0"),
             ("model.layers.0.self_attn.q_proj:out", "model.layers.0.self_attn.q_proj"),
             ("model.layers.0:out", "model.layers.0"), ("model.layers.1:out", "model.layers.1"),
             ("model.norm:out", "model.norm"), ("model:out.last_hidden_state", "model"), ("lm_head:out", "lm_head"),
             (":out.logits", "")]
    report = SimpleNamespace(localization={"curve": [{"site": s, "module": m} for s, m in sites]}, local=None,
                             first_divergence={"site": "model.embed_tokens:out"})
    plan = zoom_policy(report, window=1)
    assert plan.modules == ["model", "model.embed_tokens", "model.layers.0"]
    policy = RecordPolicy.from_dict(plan.policy)
    full = {s for s, _ in sites if policy.decide(s).action == "full"}
    assert full == {"model:in.kwargs.input_ids", "model.embed_tokens:out", "model.layers.0:in.0",
                    "model.layers.0.self_attn.q_proj:out", "model.layers.0:out", "model:out.last_hidden_state",
                    ":out.logits"}
