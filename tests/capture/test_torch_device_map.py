"""Sharded models loaded with accelerate's dispatch (``parity capture torch --device-map``): a model spread over host
memory and disk, its weights brought in per module by accelerate's hooks, captures the same keys and bit-identical
values as the plain one-device capture; bad placement options are one-line errors; host memory stays bounded.

The checkpoints are real safetensors shards (``save_pretrained`` with a small ``max_shard_size``), and the memory
figures come from real subprocesses (README "Big models").
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from protocol import open_dump
from workflows.cli.main import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: host memory for a 4-layer hidden-64 Llama (~1.1 MB of float32 weights): the embedding and the first layers fit,
#: the rest goes to disk
SPLIT_MEMORY = "cpu=800KB"


def _shard(src: str, dst: str, max_shard_size: str) -> str:
    """Re-save a model folder as several safetensors shards with an index (as big checkpoints come)."""
    import transformers
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        transformers.AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, max_shard_size=max_shard_size)
    finally:
        hf_logging.enable_progress_bar()
    return dst


@pytest.fixture(scope="module")
def sharded_llama(tmp_path_factory) -> str:
    """A random 4-layer Llama (hidden 64) saved in 9 safetensors shards of at most 100 KB."""
    from capture.tiny_models import build_tiny_llama
    root = tmp_path_factory.mktemp("sharded-llama")
    build_tiny_llama(str(root / "src"), num_layers=4, tokenizer=False)
    folder = _shard(str(root / "src"), str(root / "sharded"), "100KB")
    assert len([n for n in os.listdir(folder) if n.endswith(".safetensors")]) > 4
    return folder


def _capture(model: str, inputs: str, out: str, *extra: str):
    result = CliRunner().invoke(cli, ["capture", "torch", model, "--inputs", inputs, "--label", "x", "-o", out,
                                      *extra], catch_exceptions=False)
    return result


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.slow
def test_a_model_offloaded_to_host_memory_and_disk_captures_what_the_plain_capture_does(
        sharded_llama, llama_inputs_file, tmp_path):
    plain, spread = str(tmp_path / "plain.h5"), str(tmp_path / "spread.h5")
    result = _capture(sharded_llama, llama_inputs_file, plain)
    assert result.exit_code == 0, result.output
    result = _capture(sharded_llama, llama_inputs_file, spread, "--device-map", "auto", "--max-memory",
                      SPLIT_MEMORY, "--offload-folder", str(tmp_path / "offload"), "--check-perturbation")
    assert result.exit_code == 0, result.output
    with open_dump(plain) as ref, open_dump(spread) as cand:
        placement = cand.manifest.capture["placement"]
        assert set(placement["modules"].values()) == {"cpu", "disk"}  # really split, weights really offloaded
        assert placement["device_map"] == "auto" and placement["max_memory"] == {"cpu": 800 << 10}
        assert cand.manifest.model["hash"] == ref.manifest.model["hash"] != ""
        assert cand.manifest.perturbation_check["bit_identical"] is True
        keys = [str(r.key) for r in ref.records()]
        # the hooks skip meta tensors: a weight that stayed on "meta" would have dropped its module's records
        assert [str(r.key) for r in cand.records()] == keys and len(keys) > 100
        for key in keys:
            assert _same_bits(ref.read(key, raw=True), cand.read(key, raw=True)), key


@pytest.mark.slow
def test_accelerate_hooks_and_capture_hooks_coexist_in_generate_mode(sharded_llama, llama_inputs_file, tmp_path):
    import torch

    from capture.base import CaptureOptions
    from capture.torch_backend import TorchBackend
    from protocol import read_input_set
    inputs = read_input_set(llama_inputs_file)
    options = CaptureOptions(label="g", mode="generate", max_new_tokens=3, max_samples=1)
    TorchBackend.from_pretrained(sharded_llama).capture(inputs, str(tmp_path / "plain.h5"), options)
    backend = TorchBackend.from_pretrained(sharded_llama, device_map="auto", max_memory=SPLIT_MEMORY,
                                           offload_folder=str(tmp_path / "offload"))
    model = backend.model
    offloaded = model.lm_head
    assert type(offloaded._hf_hook).__name__ == "AlignDevicesHook" and offloaded._hf_hook.offload
    assert offloaded.weight.is_meta and backend.device == torch.device("cpu")
    backend.capture(inputs, str(tmp_path / "spread.h5"), options)
    # ours are gone after the capture, accelerate's stay, and the offloaded weight went back to disk
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert hasattr(offloaded, "_hf_hook") and offloaded.weight.is_meta
    with open_dump(tmp_path / "plain.h5") as ref, open_dump(tmp_path / "spread.h5") as cand:
        np.testing.assert_array_equal(ref.array("generated_tokens.s0"), cand.array("generated_tokens.s0"))
        keys = [str(r.key) for r in ref.records()]
        assert [str(r.key) for r in cand.records()] == keys
        assert any(k.startswith("s0/t2/lm_head:out") for k in keys)  # a decode step of a module on disk
        for key in keys:
            assert _same_bits(ref.read(key, raw=True), cand.read(key, raw=True)), key


def test_a_device_map_that_keeps_everything_on_one_device_is_a_plain_capture(sharded_llama, llama_inputs_file,
                                                                              tmp_path):
    plain, mapped = str(tmp_path / "plain.h5"), str(tmp_path / "mapped.h5")
    assert _capture(sharded_llama, llama_inputs_file, plain, "--max-samples", "1").exit_code == 0
    (tmp_path / "map.json").write_text(json.dumps({"": "cpu"}))
    result = _capture(sharded_llama, llama_inputs_file, mapped, "--max-samples", "1", "--device-map",
                      str(tmp_path / "map.json"))
    assert result.exit_code == 0, result.output
    with open_dump(plain) as ref, open_dump(mapped) as cand:
        assert cand.manifest.capture["placement"]["device_map"] == {"": "cpu"}
        keys = [str(r.key) for r in ref.records()]
        assert [str(r.key) for r in cand.records()] == keys
        assert all(_same_bits(ref.read(k, raw=True), cand.read(k, raw=True)) for k in keys)


@pytest.mark.parametrize("extra, message", [
    (["--device-map", "everywhere"], "Error: unknown device map 'everywhere'. Use auto, balanced, balanced_low_0, "
                                     "sequential or a JSON file mapping module paths to devices"),
    (["--device-map", "{tmp}/missing.json"], "Error: {tmp}/missing.json: device map file not found. Use auto"),
    (["--device-map", "{tmp}/bad.json"], "Error: {tmp}/bad.json: cannot read the device map (Expecting property name"),
    (["--device-map", "{tmp}/list.json"], "Error: {tmp}/list.json: a device map must be a non-empty JSON object"),
    (["--device-map", "{tmp}/gpu.json"], "Error: {tmp}/gpu.json: device map entry 'model': accelerator 0 does not "
                                         "exist here (0 accelerator(s)). Available devices: cpu, and disk"),
    (["--device-map", "auto", "--max-memory", "cpu"], "Error: invalid --max-memory entry 'cpu'. Write DEVICE=SIZE "
                                                      "pairs separated by commas, e.g. 0=2GiB,cpu=4GiB"),
    (["--device-map", "auto", "--max-memory", "cpu=lots"], "Error: invalid --max-memory entry 'cpu=lots'"),
    (["--device-map", "auto", "--max-memory", "0=2GiB,cpu=4GiB"], "Error: --max-memory 0: accelerator 0 does not "
                                                                  "exist here"),
    (["--max-memory", "cpu=1GiB"], "Error: --max-memory and --offload-folder only apply to a model loaded with a "
                                   "device map. Add --device-map auto"),
    (["--device-map", "auto", "--device", "cpu"], "Error: --device cpu and a device map both say where the model "
                                                  "goes. Pass one of them"),
    (["--device-map", "auto", "--offload-folder", "{tmp}/bad.json/sub"],
     "Error: {tmp}/bad.json/sub: the offload folder is not writable (Not a directory). Pass --offload-folder on a "
     "disk this user can write"),
])
def test_bad_placement_options_are_one_line_errors(tiny_llama, llama_inputs_file, tmp_path, extra, message):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "gpu.json").write_text(json.dumps({"model": 0, "lm_head": "cpu"}))
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    result = _capture(tiny_llama, llama_inputs_file, str(tmp_path / "x.h5"), *extra)
    assert result.exit_code == 3
    assert result.output.startswith(message.replace("{tmp}", str(tmp_path))) and result.output.count("\n") == 1
    assert not (tmp_path / "x.h5").exists()


def test_an_offload_folder_on_a_read_only_filesystem_is_refused_before_loading(readonly_folder, tiny_llama,
                                                                               llama_inputs_file, tmp_path):
    for folder in (readonly_folder, os.path.join(readonly_folder, "new")):
        result = _capture(tiny_llama, llama_inputs_file, str(tmp_path / "x.h5"), "--device-map", "auto",
                          "--offload-folder", folder)
        assert result.exit_code == 3
        assert result.output == f"Error: {folder}: the offload folder is not writable (Read-only file system). " \
                                "Pass --offload-folder on a disk this user can write, with room for the offloaded " \
                                "weights\n"


@pytest.mark.slow
def test_without_accelerate_a_device_map_fails_with_the_install_hint(tiny_llama, llama_inputs_file, tmp_path):
    # None in sys.modules is how Python marks a module as not importable: the same ImportError as a missing package
    code = ("import sys; sys.modules['accelerate'] = None; sys.argv[0] = 'parity'; "
            "from workflows.cli.main import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "capture", "torch", tiny_llama, "--inputs", llama_inputs_file,
                           "--label", "x", "-o", str(tmp_path / "x.h5"), "--device-map", "auto"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 3
    assert proc.stderr == "Error: loading with a device map needs accelerate, which is not installed here. Pip " \
                          "install 'tensorparity[torch]' (or pip install 'accelerate>=1.4')\n"


_PEAK_RSS = textwrap.dedent("""
    import json, sys
    import accelerate, safetensors.torch, torch, transformers  # imported before the baseline
    from transformers.models.llama import modeling_llama
    from capture.torch_backend import TorchBackend
    folder, max_memory, offload = sys.argv[1:4]
    def status(field):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) << 10 for line in fh if line.startswith(field + ":"))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current RSS: the imports' own peak is not counted
    base = status("VmRSS")
    placement = {"device_map": "auto", "max_memory": max_memory, "offload_folder": offload} if max_memory else {}
    backend = TorchBackend.from_pretrained(folder, **placement)
    loaded = status("VmHWM")
    with torch.no_grad():
        backend.model(input_ids=torch.arange(4, 20).reshape(1, -1), use_cache=False)
    placed = getattr(backend.model, "hf_device_map", None) or {}
    print(json.dumps({"load": loaded - base, "forward": status("VmHWM") - base,
                      "where": sorted({str(d) for d in placed.values()})}))
""")


def _peak_rss(folder: str, max_memory: str = "", offload: str = "") -> dict:
    """Peak RSS (VmHWM) above the RSS after the imports, in a fresh process that loads ``folder`` (returned as
    ``load``) and then runs one forward (``forward``)."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, folder, max_memory, offload], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_host_memory_of_an_offloaded_load_is_bounded_by_its_memory_limit_and_a_shard(tmp_path):
    """README "Big models" -> "Sharded models" quotes these figures (printed with -s)."""
    from capture.tiny_models import build_tiny_llama
    build_tiny_llama(str(tmp_path / "src"), num_layers=8, hidden=512, heads=8, kv_heads=4, intermediate=1024,
                     tokenizer=False)  # 19.9 M parameters: 80 MB of float32
    folder = _shard(str(tmp_path / "src"), str(tmp_path / "sharded"), "8MB")
    shards = [os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.endswith(".safetensors")]
    plain = _peak_rss(folder)
    limit = 16 << 20
    spread = _peak_rss(folder, f"cpu={limit}", str(tmp_path / "offload"))
    mib = 1 << 20
    print(f"\n{len(shards)} shards of at most {max(shards) / mib:.1f} MiB, {sum(shards) / mib:.0f} MiB in all; peak "
          f"RSS above the imports (load / load + forward): plain {plain['load'] / mib:.0f} / "
          f"{plain['forward'] / mib:.0f} MiB; device_map auto, max_memory cpu=16MiB, rest on disk: "
          f"{spread['load'] / mib:.0f} / {spread['forward'] / mib:.0f} MiB")
    assert spread["where"] == ["cpu", "disk"] and plain["where"] == []
    assert plain["forward"] > 0.9 * sum(shards)  # every weight was read into memory
    slack = 32 << 20  # allocator, the forward's activations
    assert spread["load"] < max(shards) + slack
    assert spread["forward"] < limit + 2 * max(shards) + slack < plain["forward"]
