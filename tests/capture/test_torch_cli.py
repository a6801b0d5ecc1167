"""``parity capture torch`` and ``parity inputs text|tokens`` through click, the real entry point, and hostile disks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from workflows.cli.main import cli
from protocol import open_dump, read_input_set


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.parametrize("argv", [["capture", "torch", "--help"], ["inputs", "text", "--help"],
                                  ["inputs", "tokens", "--help"]])
def test_help_ends_with_an_example(argv):
    result = _run(argv)
    assert result.exit_code == 0 and "Example:" in result.output


def test_text_inputs_then_capture_with_policies(tiny_llama, corpus_file, tmp_path):
    inputs = str(tmp_path / "in.h5")
    result = _run(["inputs", "text", tiny_llama, "--text-file", corpus_file, "-n", "32", "--max-samples", "2",
                   "-o", inputs])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {inputs}: 2 samples, 32-32 tokens each, sha256 ")
    out = str(tmp_path / "cpu.h5")
    result = _run(["capture", "torch", tiny_llama, "--inputs", inputs, "--label", "cpu-fp32", "-o", out,
                   "--policy", r"mlp\.=stats", "--policy", r"^:out\.logits=topk:3", "--check-perturbation",
                   "--run-id", "r1", "--compression", "lz4"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote {out}: ") and " records, " in lines[0]
    with open_dump(out) as dump:
        m = dump.manifest
        assert (m.label, m.run_id, m.inputs_sha256) == ("cpu-fp32", "r1", read_input_set(inputs).sha256)
        assert m.perturbation_check["bit_identical"] is True
        assert m.capture["policy"]["rules"][0] == {"pattern": r"mlp\.", "action": "stats", "params": {}}
        assert dump.record("s1/t0/:out.logits#0").storage == "topk"
        assert dump.record("s0/t0/model.layers.0.mlp.up_proj:out#0").storage == "stats"


def test_tokens_npz_and_generate_mode(tiny_llama, tmp_path):
    npz = str(tmp_path / "ids.npz")
    np.savez(npz, input_ids=np.arange(10, 26, dtype=np.int64).reshape(2, 8))
    inputs = str(tmp_path / "in.h5")
    assert _run(["inputs", "tokens", npz, "-o", inputs]).exit_code == 0
    out = str(tmp_path / "gen.h5")
    result = _run(["capture", "torch", tiny_llama, "--inputs", inputs, "--label", "g", "-o", out, "--mode",
                   "generate", "--max-new-tokens", "3", "--default-policy", "stats", "--max-samples", "1"])
    assert result.exit_code == 0, result.output
    with open_dump(out) as dump:
        assert dump.array_names() == ["generated_tokens.s0"] and dump.array("generated_tokens.s0").shape == (3,)
        assert {r.storage for r in dump.records()} == {"stats"}


@pytest.mark.parametrize("extra, message", [
    (["--policy", "x=explode"], "invalid policy action 'explode'"),
    (["--byte-budget", "lots"], "invalid size 'lots'"),
    (["--include", "("], "invalid module regex"),
])
def test_bad_options_are_usage_errors(tiny_llama, llama_inputs_file, tmp_path, extra, message):
    result = CliRunner().invoke(cli, ["capture", "torch", tiny_llama, "--inputs", llama_inputs_file, "--label", "x",
                                      "-o", str(tmp_path / "x.h5"), *extra])
    assert result.exit_code == 2 and message in result.output


def test_under_torchrun_the_cli_refuses_rather_than_have_every_rank_write_one_file(tiny_llama, llama_inputs_file,
                                                                                    tmp_path):
    out = tmp_path / "x.h5"
    result = CliRunner().invoke(cli, ["capture", "torch", tiny_llama, "--inputs", llama_inputs_file, "--label", "x",
                                      "-o", str(out)], env={"WORLD_SIZE": "2", "RANK": "1"})
    assert result.exit_code == 2 and "WORLD_SIZE is 2" in result.output and "TorchBackend" in result.output
    assert not out.exists()


def test_unusable_inputs_exit_3_with_one_line(tiny_llama, llama_inputs_file, tmp_path):
    result = CliRunner().invoke(cli, ["capture", "torch", str(tmp_path / "missing-model"), "--inputs",
                                      llama_inputs_file, "--label", "x", "-o", str(tmp_path / "x.h5")])
    assert result.exit_code == 3
    assert result.output.strip() == f"Error: {tmp_path / 'missing-model'}: no such model folder. Pass a local " \
                                    "Hugging Face model folder or a hub id"
    result = CliRunner().invoke(cli, ["capture", "torch", tiny_llama, "--inputs", str(tmp_path / "none.h5"),
                                      "--label", "x", "-o", str(tmp_path / "x.h5")])
    assert result.exit_code == 3 and "none.h5: no such file" in result.output


def test_cuda_device_fails_clearly_through_the_entry_point(parity_exe, tiny_llama, llama_inputs_file, tmp_path):
    proc = subprocess.run([parity_exe, "capture", "torch", tiny_llama, "--inputs", llama_inputs_file, "--label",
                           "gpu", "-o", str(tmp_path / "gpu.h5"), "--device", "cuda"], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip() == "Error: device 'cuda' was asked for but CUDA is not available on this machine. " \
                                  "Available devices: cpu"
    assert os.listdir(tmp_path) == []


_HOSTILE_DISKS = textwrap.dedent("""
    import json, os, sys
    from capture.base import CaptureOptions
    from capture.torch_backend import TorchBackend
    from protocol import CaptureError, read_input_set
    model, inputs, full, readonly = sys.argv[1:5]
    backend = TorchBackend.from_pretrained(model)
    result = {}
    for name, folder in (("full", full), ("readonly", readonly)):
        try:
            backend.capture(read_input_set(inputs), os.path.join(folder, "d.h5"), CaptureOptions(label=name))
            result[name] = "no error"
        except CaptureError as exc:
            result[name] = str(exc)
        result[name + "_left"] = sorted(os.listdir(folder))
    print(json.dumps(result))
""")


@pytest.mark.slow
def test_disk_full_and_read_only_folder_are_clean_errors(tiny_llama, llama_inputs_file, tmp_path):
    """Runs in a private mount namespace (unshare) with a 96 KiB tmpfs and a read-only tmpfs."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("user and mount namespaces (unshare -rm) are not available here")
    full, readonly = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    readonly.mkdir()
    script = (f"mount -t tmpfs -o size=96k tmpfs {full} && mount -t tmpfs -o ro,size=64k tmpfs {readonly} && "
              f'exec "$0" -c "$1" {tiny_llama} {llama_inputs_file} {full} {readonly}')
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, sys.executable, _HOSTILE_DISKS],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["full"].startswith(f"{full}/d.h5: the disk is full")
    assert result["full"].endswith("the dump was not written. Free space or write elsewhere")
    assert result["full_left"] == []
    assert result["readonly"].startswith(f"{readonly}/d.h5") and "not writable" in result["readonly"]
    assert result["readonly_left"] == []
