"""One backend registry (protocol/backends.py): the jobs, the manifest's capture methods, the agent and the
``parity capture`` commands all derive from it, and an option a backend cannot honour is refused, never dropped."""
from __future__ import annotations

import importlib

import click
import pytest
from click.testing import CliRunner

from capture.agent import load_backend
from protocol import CAPTURE_METHODS, CaptureError, JobError
from protocol.backends import BACKENDS, OPTIONS, unhonoured
from protocol.jobs import BACKENDS as JOB_BACKENDS
from protocol.jobs import Job
from workflows.cli.main import cli

SHA = "0" * 64


def _resolve(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_entry_resolves_and_matches_its_backend(name):
    spec = BACKENDS[name]
    factory = _resolve(spec.factory)
    assert callable(factory) and factory.__self__.method == spec.method  # a classmethod of the backend class
    assert isinstance(_resolve(spec.command), click.Command)
    assert spec.honours <= set(OPTIONS)


def test_jobs_methods_and_commands_derive_from_the_registry():
    assert JOB_BACKENDS == tuple(BACKENDS)
    assert CAPTURE_METHODS == tuple(s.method for s in BACKENDS.values()) + ("external",)
    listed = CliRunner().invoke(cli, ["capture", "--help"])
    assert listed.exit_code == 0
    commands = listed.output.split("Commands:")[1].split()
    assert [w for w in commands if w in BACKENDS] == sorted(BACKENDS)


def _job(targets: dict, backend: str = "torch") -> Job:
    return Job(run_id="run1", model={"path": "models/tiny"}, backend=backend, inputs=SHA, labels=["a", "b"],
               reference="a", targets=targets)


def test_a_job_asking_a_backend_for_what_it_cannot_honour_is_refused():
    _job({"b": {"dtype": "bfloat16", "device": "cpu"}}).validate()
    with pytest.raises(JobError, match=r"^targets\['b'\] sets provider, which the torch backend cannot honour \(it "
                                       r"takes device, dtype, attn_implementation, device_map, max_memory, "
                                       r"offload_folder\)$"):
        _job({"b": {"provider": "cuda"}}).validate()
    with pytest.raises(JobError, match=r"targets\['b'\] sets dtype, which the genai backend cannot honour \(it "
                                       r"takes none of device, dtype, provider, attn_implementation, device_map, "
                                       r"max_memory, offload_folder\)"):
        _job({"b": {"backend": "genai", "dtype": "int4"}}).validate()
    assert unhonoured("onnx", {"device": "cuda", "provider": None, "dtype": "float16"}) == ["dtype"]
    # a job may spread a torch model; an ONNX graph has no device map
    _job({"b": {"device_map": "auto", "max_memory": "cpu=4GiB"}}).validate()
    with pytest.raises(JobError, match=r"targets\['b'\] sets device_map, which the onnx backend cannot honour"):
        _job({"b": {"backend": "onnx", "device_map": "auto"}}).validate()
    # the offload folder is a path on the agent's host, never the job's
    with pytest.raises(JobError, match=r"targets\['b'\] has unknown key\(s\) \['offload_folder'\]"):
        _job({"b": {"device_map": "auto", "offload_folder": "/tmp/x"}}).validate()


def test_the_agent_passes_job_options_strictly_and_host_defaults_where_they_apply(tmp_path):
    defaults = {"device": "cpu", "dtype": "float32", "provider": None, "attn_implementation": None}
    # a job's option the backend cannot honour: refused before anything is loaded
    with pytest.raises(CaptureError, match=r"the genai backend cannot honour device='cuda'"):
        load_backend("genai", str(tmp_path), target={"device": "cuda"}, defaults=defaults)
    # the agent's own defaults describe the host: a GenAI backend gets none of them, and opens the folder
    with pytest.raises(CaptureError, match=r"not an ORT GenAI model folder \(no genai_config.json\)"):
        load_backend("genai", str(tmp_path), target={}, defaults=defaults)
    with pytest.raises(CaptureError, match=r"the onnx backend cannot honour dtype='bfloat16'"):
        load_backend("onnx", str(tmp_path / "m.onnx"), target={"dtype": "bfloat16"}, defaults=defaults)
    with pytest.raises(CaptureError, match=r"^unknown backend 'tflite'"):
        load_backend("tflite", str(tmp_path))


def test_a_device_map_replaces_the_hosts_default_device_and_host_limits_wait_for_one(tiny_llama, tmp_path):
    defaults = {"device": "cpu", "dtype": "float32", "provider": None, "attn_implementation": None,
                "device_map": None, "max_memory": "cpu=1GiB", "offload_folder": str(tmp_path / "offload")}
    # no device map anywhere: the host's memory limit and offload folder are not passed (nothing to apply to)
    assert load_backend("torch", tiny_llama, target={}, defaults=defaults).placement is None
    # the job's device map: the host's default device gives way, its limit and folder apply
    backend = load_backend("torch", tiny_llama, target={"device_map": "auto"}, defaults=defaults)
    assert backend.placement.max_memory == {"cpu": 1 << 30} and (tmp_path / "offload").is_dir()
    # a device the job names beside a device map contradicts it: refused, not dropped
    with pytest.raises(CaptureError, match=r"^--device cpu and a device map both say where the model goes"):
        load_backend("torch", tiny_llama, target={"device_map": "auto", "device": "cpu"}, defaults=defaults)
    with pytest.raises(CaptureError, match=r"the onnx backend cannot honour device_map='auto'"):
        load_backend("onnx", str(tmp_path / "m.onnx"), target={"device_map": "auto"}, defaults=defaults)
