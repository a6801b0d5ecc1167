"""Agents of different backends on one run: PyTorch reference, ONNX Runtime candidate (per-label job targets)."""
from __future__ import annotations

import os
import shutil

import pytest

from protocol import SharedFolder, open_dump

from .conftest import claim_of, make_inputs, no_failed_claims, read_json, submit_job, wait_for

AGENT = ("agent", "--poll-interval", "0.1")


@pytest.mark.slow
def test_torch_reference_and_onnx_runtime_candidate_are_captured_and_compared(procs, shared_root, tmp_path):
    from tests.capture.onnx_fixtures import SEQ, exported
    onnx_dir = os.path.join(shared_root, "models", "tiny-llama-onnx")
    shutil.copytree(os.path.dirname(exported("llama", "dynamo")), onnx_dir)  # graph and data; same seeded weights
    inputs = make_inputs(str(tmp_path / "prompts.h5"), samples=2, length=SEQ)
    submit_job(shared_root, inputs, "torch-vs-ort", ["torch-fp32", "ort-cpu"], "torch-fp32",
               targets={"ort-cpu": {"backend": "onnx", "model": {"path": "models/tiny-llama-onnx"},
                                    "provider": "cpu"}})
    folder = SharedFolder(shared_root)
    watcher = procs.start("watch", "--debounce", "0.1", shared_root, name="watcher")
    agents = (procs.start(*AGENT, shared_root, "--label", "torch-fp32", name="torch"),
              procs.start(*AGENT, shared_root, "--label", "ort-cpu", name="ort"))
    report_path = folder.pair_report_base("torch-vs-ort", "torch-fp32", "ort-cpu") + ".json"
    wait_for(lambda: no_failed_claims(shared_root) or os.path.exists(report_path), 300, "the torch vs ORT report", procs, alive=(watcher, *agents))
    assert claim_of(shared_root, "torch-vs-ort", "ort-cpu").status == "done"
    with open_dump(folder.dump_path("torch-vs-ort", "ort-cpu")) as dump:
        assert dump.manifest.capture["method"] == "onnx-output-injection"
    with open_dump(folder.dump_path("torch-vs-ort", "torch-fp32")) as dump:
        assert dump.manifest.capture["method"] == "torch-hooks"
    report = read_json(report_path)
    logits = [s for s in report["sites"] if s["site"].endswith(":out.logits") or s["site"].endswith("logits")]
    assert logits, [s["site"] for s in report["sites"]][:20]
    # ONNX Runtime's fp32 kernels move the logits by ~1e-6 (docs/ENVIRONMENT.md section 4): paired and far below 1e-3
    assert max(s["aggregates"]["rel_l2"]["max"] for s in logits) < 1e-3
