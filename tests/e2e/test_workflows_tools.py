"""The workflows users already run, end to end on tiny models: KL across backends, layer metrics and thresholds,
eval-compare, perplexity on identical inputs (tools/ scripts and the parity CLI)."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from workflows.cli.main import cli
from tests.capture.onnx_fixtures import (
    exported, genai_build, short_context_genai_build, short_context_llama_dir, tiny_llama_dir,
)
from tests.protocol.support import REPO, load_script

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _tool(name: str):
    return load_script("tools", f"{name}.py")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> str:
    from capture.tiny_models import corpus_text
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(corpus_text()[:40_000], encoding="utf-8")
    return str(path)


def test_kl_tool_shape_and_values(tmp_path, small_corpus):
    out = tmp_path / "results.json"
    cmd = [sys.executable, os.path.join(REPO, "tools", "compute_kl_divergence.py"), "--hf_model", tiny_llama_dir(),
           "--ep", "cpu", "--path", genai_build("fp32"), "--ep", "cpu", "--path", genai_build("int8"),
           "--python", sys.executable, "--ep", "cpu", "--path", genai_build("int4"), "--text-file", small_corpus,
           "--max-chunks", "1", "--output", str(out), "--keep_logits"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1/6] tokenizing" in done.stdout and "capturing cpu_3" in done.stdout  # progress without --debug
    doc = json.loads(out.read_text())
    kl = doc["kl_divergences"]
    assert set(kl) == {"hf_vs_cpu", "hf_vs_cpu_2", "hf_vs_cpu_3", "cpu_vs_cpu_2", "cpu_vs_cpu_3",
                       "cpu_2_vs_cpu_3"}
    assert {"total", "average", "tokens"} <= set(kl["hf_vs_cpu"]) and kl["hf_vs_cpu"]["tokens"] == 1023
    assert kl["hf_vs_cpu"]["average"] < 1e-8                          # fp32 GenAI vs HF: the same function
    assert kl["hf_vs_cpu_3"]["average"] > 10 * kl["hf_vs_cpu_2"]["average"] > 0  # int4 clearly above int8
    assert doc["kl_abs_variant"]["hf_vs_cpu_3"]["average"] >= kl["hf_vs_cpu_3"]["average"]
    assert [m["name"] for m in doc["models"]] == ["hf", "cpu", "cpu_2", "cpu_3"]
    assert doc["run"]["models"][2]["python"] == sys.executable
    assert all(os.path.exists(p) for p in doc["run"]["dumps"])      # --keep_logits


def test_kl_tool_usage_and_failing_interpreter(tmp_path, small_corpus):
    tool = _tool("compute_kl_divergence")
    with pytest.raises(SystemExit) as exc:
        tool.main(["--ep", "cpu", "--output", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    code = tool.main(["--hf_model", tiny_llama_dir(), "--ep", "cpu", "--path", genai_build("fp32"), "--python",
                      str(tmp_path / "no-python"), "--text-file", small_corpus, "--max-chunks", "1",
                      "--output", str(tmp_path / "r.json")])
    assert code == 3 and not (tmp_path / "r.json").exists()


def test_kl_tool_shrinks_default_chunks_to_the_smallest_context(tmp_path, small_corpus):
    out = tmp_path / "kl.json"
    cmd = [sys.executable, os.path.join(REPO, "tools", "compute_kl_divergence.py"), "--hf_model",
           short_context_llama_dir(), "--ep", "cpu", "--path", short_context_genai_build(), "--text-file",
           small_corpus, "--max-chunks", "2", "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    note = ("note: --chunk-tokens defaults to 1024, more than the context of hf (256 tokens), cpu (256 tokens): "
            "using 256-token chunks\n")
    assert done.stderr == note  # said once, on stderr, and nothing else there
    assert "into 256-token chunks" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["run"]["chunk_tokens"] == 256 and doc["run"]["context_lengths"] == {"hf": 256, "cpu": 256}
    assert doc["kl_divergences"]["hf_vs_cpu"]["tokens"] == 2 * 255
    assert doc["kl_divergences"]["hf_vs_cpu"]["average"] < 1e-8  # fp32 GenAI vs HF at the full context
    # an explicit chunk length over the context is a usage error naming the option and the context
    too_long = subprocess.run(cmd[:-2] + ["--output", str(tmp_path / "x.json"), "--chunk-tokens", "512"],
                              capture_output=True, text=True, env=ENV, timeout=300)
    assert too_long.returncode == 2 and too_long.stdout == ""
    assert too_long.stderr.startswith("usage: compute_kl_divergence.py ")
    assert too_long.stderr.endswith("compute_kl_divergence.py: error: --chunk-tokens 512 is more than the context "
                                    "of hf (256 tokens), cpu (256 tokens); pass --chunk-tokens 256 or less\n")
    assert not (tmp_path / "x.json").exists()


def test_perplexity_tool_shrinks_the_default_window_to_the_smallest_context(tmp_path, small_corpus):
    out = tmp_path / "ppl.json"
    cmd = [sys.executable, os.path.join(REPO, "tools", "calculate_perplexity.py"), "--hf_model",
           short_context_llama_dir(), "--model", short_context_genai_build(), "--text-file", small_corpus,
           "--max-samples", "2", "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.startswith("note: --max_length defaults to 1024, more than the context of hf (256 tokens), "
                                  "genai (256 tokens): using 256-token chunks\n")
    doc = json.loads(out.read_text())
    assert doc["max_length"] == 256 and doc["stride"] == 128  # the stride follows the window: half of it
    assert doc["tokens"] == 255 + 128 and abs(doc["ratio"] - 1) < 1e-4
    too_long = subprocess.run(cmd[:-2] + ["--output", str(tmp_path / "x.json"), "--max_length", "512"],
                              capture_output=True, text=True, env=ENV, timeout=300)
    assert too_long.returncode == 2 and not (tmp_path / "x.json").exists()
    assert too_long.stderr.endswith("calculate_perplexity.py: error: --max_length 512 is more than the context of hf "
                                    "(256 tokens), genai (256 tokens); pass --max_length 256 or less\n")


def test_chunk_tokens_choice_and_context_lengths(tmp_path):
    from workflows.context_lengths import ChunkTooLongError, choose_chunk_tokens, model_context_length
    assert model_context_length("hf", short_context_llama_dir()) == 256
    assert model_context_length("genai", short_context_genai_build()) == 256
    assert model_context_length("hf", str(tmp_path)) is None and model_context_length("onnx", str(tmp_path)) is None
    (tmp_path / "config.json").write_text('{"text_config": {"n_positions": 64}}')
    assert model_context_length("hf", str(tmp_path)) == 64
    assert choose_chunk_tokens(None, 1024, {"hf": 4096, "cpu": None}) == (1024, None)
    assert choose_chunk_tokens(None, 1024, {"hf": 2048, "cpu": 512, "int4": 512})[0] == 512
    assert choose_chunk_tokens(300, 1024, {"hf": 2048, "cpu": 512}) == (300, None)
    with pytest.raises(ChunkTooLongError, match=r"^--chunk-tokens 600 is more than the context of cpu \(512 tokens\); "
                                                r"pass --chunk-tokens 512 or less$"):
        choose_chunk_tokens(600, 1024, {"hf": 2048, "cpu": 512})


def test_layer_metrics_and_thresholds_round_trip(tmp_path, small_corpus, monkeypatch, capsys):
    out = tmp_path / "layers"
    monkeypatch.setenv("MODEL_PATHS", tiny_llama_dir())
    monkeypatch.setenv("BATCH_SIZES", "1,2")
    monkeypatch.setenv("SEQ_LENGTHS", "12")
    monkeypatch.setenv("MAX_NEW_TOKENS", "2")
    monkeypatch.setenv("OUTPUT_PATH", str(out))
    gen = _tool("generate_layers_metrics")
    assert gen.main(["--mode", "model-forward", "--candidate-device", "cpu", "--candidate-dtype", "float16",
                     "--text-file", small_corpus]) == 0
    assert gen.main(["--mode", "generate", "--candidate-device", "cpu", "--candidate-dtype", "bfloat16",
                     "--batch_sizes", "1", "--text-file", small_corpus, "--output_path", str(tmp_path / "bf16")]) == 0
    csvs = glob.glob(str(out / "*--model.layers.0.mlp.abs_diff.csv"))
    assert len(csvs) == 2 and glob.glob(str(out / "*--model.layers.1.self_attn.o_proj.cos_sim.csv"))
    with open(csvs[0]) as fh:
        head = [next(fh) for _ in range(4)]
    assert head[0] == "# site: model.layers.0.mlp:out\n" and head[2] == "abs_diff\n" and float(head[3]) >= 0
    capsys.readouterr()
    model_id = tiny_llama_dir().strip("/").replace("/", "--")
    th = _tool("get_thresholds")
    assert th.main(["--models", tiny_llama_dir(), "--metrics", "abs_diff", "cos_sim", "--file_base", str(out),
                    "--layer_io"]) == 0
    printed = capsys.readouterr().out
    assert "Layer model.layers.0.mlp avg abs_diff = " in printed and "Layer model.norm avg cos_sim = 0.99" in printed
    th_file = out / f"{model_id}-thresholds.json"
    doc = json.loads(th_file.read_text())
    assert doc["sites"]["model.layers.0.mlp:out"]["metrics"]["max_abs_diff"]["limit"] > 0
    base = str(out / f"{model_id}_max-new-tokens-2_batch-size-2_seq-length-12_dtype-float16")
    runner = CliRunner()
    ok = runner.invoke(cli, ["compare", base + ".reference.h5", base + ".candidate.h5", "--inputs",
                             base + ".inputs.h5", "--thresholds", str(th_file)])
    assert ok.exit_code == 0, ok.output
    bf = glob.glob(str(tmp_path / "bf16" / "*.reference.h5"))[0].replace(".reference.h5", "")
    bad = runner.invoke(cli, ["compare", bf + ".reference.h5", bf + ".candidate.h5", "--inputs", bf + ".inputs.h5",
                              "--thresholds", str(th_file)])
    assert bad.exit_code == 1 and "FAIL" in bad.output and "(threshold)" in bad.output


def test_eval_compare_twenty_keys_per_output(tmp_path):
    onnx_path = exported("llama", "torchscript")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(cli, ["eval-compare", onnx_path, "--hf", tiny_llama_dir(), "--samples", "3",
                                      "--precision", "fp32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    keys = doc["outputs"]["logits"]
    assert len(keys) == 20 and set(keys) == {f"{m}_{s}" for m in ("sqnr", "psnr", "cosine", "mse", "max_abs_diff")
                                             for s in ("mean", "std", "min", "max")}
    assert keys["cosine_min"] > 0.99999 and keys["sqnr_mean"] > 60 and keys["max_abs_diff_max"] < 1e-3
    assert doc["samples"] == 3 and doc["only_onnx"] == [] and doc["only_hf"] == []


def test_eval_compare_refuses_composite(tmp_path, parity_exe):
    folder = tmp_path / "composite"
    folder.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        (folder / name).write_bytes(b"")
    done = subprocess.run([parity_exe, "eval-compare", str(folder), "--hf", tiny_llama_dir()], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert done.returncode == 3
    assert "composite" in done.stderr and "compare each component separately" in done.stderr.lower()


def test_perplexity_hf_and_genai_fp32_agree(tmp_path, small_corpus, capsys):
    tool = _tool("calculate_perplexity")
    out = tmp_path / "ppl.json"
    assert tool.main(["--hf_model", tiny_llama_dir(), "--model", genai_build("fp32"), "--text-file", small_corpus,
                      "--max_length", "128", "--stride", "64", "--max-samples", "4", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    ref, cand = doc["reference"]["ppl"], doc["candidate"]["ppl"]
    assert abs(cand - ref) / ref < 1e-4 and abs(doc["ratio"] - 1) < 1e-4
    assert doc["tokens"] == 127 + 3 * 64 and doc["windows"] == 4 and doc["ratio_se"] is not None
    assert "ratio PPL(genai)/PPL(hf) = 1.0000" in capsys.readouterr().out
