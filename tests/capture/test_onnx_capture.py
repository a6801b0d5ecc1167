"""ONNX capture: tiny Llama and BERT exported by both exporters, captured by ONNX Runtime, paired with PyTorch."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from workflows.cli.main import cli
from capture.base import CaptureOptions
from capture.onnx_backend import OnnxBackend, run_capture
from capture.onnx_inject import inject_outputs, load_graph_only, select_values
from protocol import CaptureError, open_dump, read_input_set

from . import onnx_fixtures as fx

BLOCKS = {"llama": r"^model\.layers\.\d+(\.self_attn|\.mlp)?:out(\.0)?$",
          "bert": r"^encoder\.layer\.\d+(\.attention|\.intermediate|\.output)?:out(\.0)?$"}


@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_dump_pairs_with_torch_dump_by_module_path(tmp_path, kind, exporter):
    model = fx.exported(kind, exporter)
    reference = fx.torch_dump(kind)
    out = str(tmp_path / "ort.h5")
    summary = run_capture(OnnxBackend(model, reference=reference), fx.token_inputs(), out,
                          CaptureOptions(label="ort-cpu"), show_progress=False)
    assert summary.records > 0
    with open_dump(out) as onnx_dump, open_dump(reference) as torch_dump:
        records = onnx_dump.records()
        # every intermediate value (constants and initializers aside) is captured, for every sample
        expected = {v.name for v in select_values(inject_outputs_graph(model))}
        for sample in (0, 1):
            seen = {r.meta["onnx_value"] for r in records if r.key.sample == sample}
            assert expected <= seen
        # records follow the graph's topological order and carry node and op type
        orders = [r.meta["order"] for r in records if r.key.sample == 0]
        assert orders == sorted(orders)
        assert all(r.meta["onnx_node"] and r.module_type for r in records if r.meta["order"] >= 0)
        manifest = onnx_dump.manifest
        assert manifest.capture["method"] == "onnx-output-injection"
        assert manifest.capture["graph_optimization"] == "all"
        assert "fuse" in manifest.capture["injection_note"]
        # block outputs (decoder/encoder layers, attention, MLP) pair by key and agree to ~1e-5
        torch_blocks = [r for r in torch_dump.records() if re.match(BLOCKS[kind], r.key.site)]
        assert len({r.key.site for r in torch_blocks}) >= 6
        onnx_keys = {r.key for r in records}
        for rec in torch_blocks:
            assert rec.key in onnx_keys, f"{rec.key} is missing from the ONNX dump"
            a, b = onnx_dump.read(rec.key), torch_dump.read(rec.key)
            assert a.shape == b.shape
            scale = max(1.0, float(np.abs(b).max()))
            assert float(np.abs(a - b).max()) <= 1e-5 * scale, rec.key
        final = ":out.logits" if kind == "llama" else ":out.last_hidden_state"
        key = next(r.key for r in records if r.key.site == final)
        assert np.abs(onnx_dump.read(key) - torch_dump.read(key)).max() <= 1e-4


def test_an_onnx_candidate_records_leaf_inputs_and_replays_on_the_torch_model(tmp_path):
    """Rule 6 of SPEC.md section 12: with the reference's sites, single-tensor modules get their input records, the
    same tensors as the PyTorch capture's, so a replay runs the reference module on ONNX Runtime's own inputs."""
    from analyze.compare import compare
    model, reference = fx.exported("llama", "dynamo"), fx.torch_dump("llama")
    out = str(tmp_path / "ort.h5")
    run_capture(OnnxBackend(model, reference=reference), fx.token_inputs(), out, CaptureOptions(label="ort"),
                show_progress=False)
    with open_dump(out) as onnx_dump, open_dump(reference) as torch_dump:
        inputs = {r.key for r in onnx_dump.records() if ":in." in r.key.site}
        assert any(k.site == "model.layers.0.self_attn.q_proj:in.args.0" for k in inputs)
        for key in inputs:
            assert np.abs(onnx_dump.read(key) - torch_dump.read(key)).max() <= 1e-5 * max(
                1.0, float(np.abs(torch_dump.read(key)).max())), key
    report = compare(reference, out, replay=fx.tiny_llama_dir())
    local = report.local
    replayed = {e["module"] for e in local["modules"]}
    assert {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"} <= replayed
    # float32 in ONNX Runtime's kernels against torch's: rounding only, nothing introduced
    assert local["first_introduced"] is None, local["modules"][:3]
    assert any("only a leaf module" in why for why in local["skipped"])  # parents: no call structures in ONNX dumps


def inject_outputs_graph(model):
    from capture.onnx_inject import infer_shapes
    return infer_shapes(model, os.path.dirname(model), bool(os.path.exists(model + ".data"))).graph


def test_scratch_copy_is_removed_and_user_model_untouched(tmp_path):
    model = fx.exported("llama", "dynamo")
    before = sorted(os.listdir(os.path.dirname(model)))
    stat = os.stat(model)
    injected = inject_outputs(model)
    assert os.path.isdir(injected.folder) and injected.folder != os.path.dirname(model)
    injected.cleanup()
    assert sorted(os.listdir(os.path.dirname(model))) == before
    assert os.stat(model).st_mtime_ns == stat.st_mtime_ns
    assert len(load_graph_only(model).graph.output) == 1


def test_filters_and_stats_policy(tmp_path):
    from capture.policy import RecordPolicy
    model = fx.exported("llama", "torchscript")
    out = str(tmp_path / "mm.h5")
    options = CaptureOptions(label="mm", policy=RecordPolicy.from_strings([":out.logits=topk:5"], "stats"))
    run_capture(OnnxBackend(model, include_ops=["MatMul"]), fx.token_inputs(), out, options, show_progress=False)
    with open_dump(out) as dump:
        records = dump.records()
        ops = {r.module_type for r in records if r.meta["onnx_value"] != "logits"}
        assert ops == {"MatMul"}
        assert all(r.storage == "stats" for r in records if r.key.site != ":out.logits")
        top = next(r for r in records if r.key.site == ":out.logits" and r.key.sample == 0)
        assert top.storage == "topk" and top.shape == (1, fx.SEQ, 5)


def test_perturbation_check_and_optimization_level(tmp_path):
    model = fx.exported("llama", "torchscript")
    out = str(tmp_path / "p.h5")
    backend = OnnxBackend(model, graph_optimization="disable")
    run_capture(backend, fx.token_inputs(), out, CaptureOptions(label="p", check_perturbation=True, max_samples=1),
                show_progress=False)
    with open_dump(out) as dump:
        assert dump.manifest.capture["graph_optimization"] == "disable"
        check = dump.manifest.perturbation_check
        assert set(check["max_abs_diff"]) == {"logits"} and isinstance(check["bit_identical"], bool)
        assert check["max_abs_diff"]["logits"] < 1e-4


def test_missing_provider_lists_available_ones():
    with pytest.raises(CaptureError) as err:
        OnnxBackend(fx.exported("llama", "torchscript"), ep="cuda")
    assert "CUDAExecutionProvider" in str(err.value) and "available: " in str(err.value)
    assert "CPUExecutionProvider" in str(err.value)
    with pytest.raises(CaptureError, match="unknown execution provider 'warp9'"):
        OnnxBackend(fx.exported("llama", "torchscript"), ep="warp9")


def test_composite_folder_fails_fast(tmp_path):
    folder = tmp_path / "seq2seq"
    folder.mkdir()
    for name in ("encoder_model.onnx", "decoder_model.onnx"):
        (folder / name).write_bytes(b"")
    with pytest.raises(CaptureError) as err:
        OnnxBackend(str(folder))
    text = str(err.value)
    assert "composite model of 2 ONNX files" in text and "capture each component separately" in text.lower()
    assert "decoder_model.onnx" in text


def test_input_mismatch_names_missing_extra_and_dtype(tmp_path):
    from protocol import InputSample, write_input_set
    model = fx.exported("llama", "torchscript")
    bad = str(tmp_path / "bad.h5")
    write_input_set(bad, [InputSample({"input_ids": np.zeros((1, fx.SEQ), np.int64),
                                       "pixel_values": np.zeros((1, 3), np.float32)})])
    with pytest.raises(CaptureError) as err:
        run_capture(OnnxBackend(model), bad, str(tmp_path / "x.h5"), CaptureOptions(label="x"), show_progress=False)
    # attention_mask has a standard default (derived, see test_standard_inputs.py); pixel_values has none
    assert str(err.value) == (
        f"{bad}: sample 0 of the input set does not match the model: input(s) pixel_values that the model does not "
        f"take (the model takes input_ids, attention_mask). Build an input set with exactly the model's inputs "
        f"('parity inputs tokens FILE.npz' from arrays of those names, or 'parity inputs random MODEL' for an ONNX "
        f"model)")
    wrong = str(tmp_path / "wrong.h5")
    write_input_set(wrong, [InputSample({"input_ids": np.zeros((1, fx.SEQ), np.int32),
                                         "attention_mask": np.ones((1, fx.SEQ), np.int64)})])
    with pytest.raises(CaptureError, match="input 'input_ids' of sample 0 is int32, the model wants int64"):
        run_capture(OnnxBackend(model), wrong, str(tmp_path / "y.h5"), CaptureOptions(label="y"), show_progress=False)
    assert not os.path.exists(tmp_path / "x.h5") and not os.path.exists(tmp_path / "y.h5")


def test_cli_capture_onnx_and_errors(tmp_path):
    model = fx.exported("llama", "torchscript")
    out = str(tmp_path / "cli.h5")
    runner = CliRunner()
    result = runner.invoke(cli, ["capture", "onnx", model, "--inputs", fx.token_inputs(), "--label", "cli",
                                 "-o", out, "--op", "MatMul,Add", "--graph-optimization", "basic",
                                 "--rename", "self_attn=attention"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out}")
    with open_dump(out) as dump:
        sites = {r.key.site for r in dump.records()}
        assert "model.layers.0.attention.o_proj:out" in sites
        assert dump.manifest.capture["graph_optimization"] == "basic"
    missing = runner.invoke(cli, ["capture", "onnx", model, "--inputs", fx.token_inputs(), "--label", "c",
                                  "-o", str(tmp_path / "c.h5"), "--ep", "dml"])
    assert missing.exit_code == 3 and "DmlExecutionProvider" in missing.output
    helped = runner.invoke(cli, ["capture", "onnx", "--help"])
    assert helped.exit_code == 0 and "Example:" in helped.output
    assert runner.invoke(cli, ["capture", "genai", "--help"]).exit_code == 0
