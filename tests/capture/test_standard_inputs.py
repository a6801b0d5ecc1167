"""Standard inputs (attention_mask, position_ids, token_type_ids) between an input set and a model that takes more
or fewer of them: dropped when uninformative, refused when informative, derived when missing (capture/
standard_inputs.py), through real exports and the real CLI."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from workflows.cli.main import cli
from capture.base import CaptureOptions
from capture.onnx_backend import OnnxBackend, run_capture
from capture.standard_inputs import InputAdjustments, default_value, fit_inputs
from protocol import CaptureError, InputSample, open_dump, read_input_set, write_input_set

from . import onnx_fixtures as fx

BLOCKS = {"llama": r"^model\.layers\.\d+(\.self_attn|\.mlp)?:out(\.0)?$",
          "bert": r"^encoder\.layer\.\d+(\.attention|\.intermediate|\.output)?:out(\.0)?$"}
FINAL = {"llama": ":out.logits", "bert": ":out.last_hidden_state"}
DROPPED_MASK = {"why": "all ones of input_ids' shape (no padding), which the model assumes: it takes no "
                       "attention_mask", "samples": 2}


def _ids(count: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, 1000, size=(count, fx.SEQ), dtype=np.int64)


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _hf_dir(kind: str) -> str:
    return fx.tiny_llama_dir() if kind == "llama" else fx.tiny_bert_dir()


# -- the rule -------------------------------------------------------------------------------------------------------

def test_uninformative_inputs_are_dropped_and_missing_ones_derived():
    ids = _ids(1)
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(fx.SEQ)[None],
              "token_type_ids": np.zeros(fx.SEQ, np.int64)}  # a 1-D array stands for the sample's [1, L]
    fitted = fit_inputs(arrays, {"input_ids": np.int64}, sample=0)
    assert list(fitted.arrays) == ["input_ids"] and fitted.arrays["input_ids"] is ids
    assert set(fitted.dropped) == {"attention_mask", "position_ids", "token_type_ids"}
    assert fitted.dropped["position_ids"] == ("0..L-1 along the last dimension, which the model assumes: it takes "
                                              "no position_ids")
    derived = fit_inputs({"input_ids": ids}, {"input_ids": np.int64, "attention_mask": np.bool_,
                                              "position_ids": np.int32, "token_type_ids": None}, sample=0)
    assert derived.arrays["attention_mask"].dtype == np.bool_ and derived.arrays["attention_mask"].all()
    assert derived.arrays["position_ids"].dtype == np.int32
    assert derived.arrays["position_ids"].tolist() == [list(range(fx.SEQ))]
    assert derived.arrays["token_type_ids"].dtype == np.int64 and not derived.arrays["token_type_ids"].any()
    assert derived.derived["attention_mask"] == ("all ones of input_ids' shape (no padding): the input set has no "
                                                 "attention_mask")
    log = InputAdjustments()
    log.add(derived)
    log.add(derived)
    assert log.to_manifest()["derived_inputs"]["position_ids"]["samples"] == 2
    assert log.to_manifest()["dropped_inputs"] == {}
    assert default_value("position_ids", np.zeros((2, 3))).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_informative_inputs_and_unknown_ones_are_refused_with_exact_messages():
    ids = _ids(1)
    shifted = {"input_ids": ids, "position_ids": np.arange(fx.SEQ)[None] + 4,
               "token_type_ids": np.ones_like(ids)}
    with pytest.raises(CaptureError) as err:
        fit_inputs(shifted, {"input_ids": None}, sample=3, path="in.h5")
    assert str(err.value) == (
        "in.h5: sample 3 of the input set does not match the model: position_ids are not 0..L-1, but the model "
        "takes no position_ids; token_type_ids has 8 nonzero value(s), but the model takes no token_type_ids (the "
        "model takes input_ids). Without position_ids and token_type_ids the model computes as if positions were "
        "0..L-1 and every token were in segment 0; build the input set without padding or custom positions (e.g. "
        "'parity inputs tokens' from unpadded input_ids)")
    with pytest.raises(CaptureError) as err:
        fit_inputs({"input_ids": ids, "attention_mask": np.ones((1, 4), np.int64), "pixel_values": np.zeros(3)},
                   {"input_ids": None, "past_key_values.0.key": np.float32}, sample=0)
    assert str(err.value) == (
        "sample 0 of the input set does not match the model: missing model input(s) past_key_values.0.key; input(s) "
        "pixel_values that the model does not take; attention_mask has shape [1, 4], not input_ids' [1, 8], but the "
        "model takes no attention_mask (the model takes input_ids, past_key_values.0.key). Without attention_mask "
        "the model computes as if every position were a real token; build the input set without padding or custom "
        "positions (e.g. 'parity inputs tokens' from unpadded input_ids); build an input set with exactly the "
        "model's inputs ('parity inputs tokens FILE.npz' from arrays of those names, or 'parity inputs random "
        "MODEL' for an ONNX model)")
    # a backend whose model takes undeclared keyword arguments can leave unknown extras out
    assert list(fit_inputs({"input_ids": ids, "labels": ids}, {"input_ids": None}, sample=0,
                           refuse_unknown=False).arrays) == ["input_ids"]
    # without input_ids nothing can be derived
    missing = r"missing model input\(s\) attention_mask \(no input_ids to derive it from\) \(the model takes "
    with pytest.raises(CaptureError, match=missing):
        fit_inputs({"inputs_embeds": np.zeros((1, 2, 4), np.float32)},
                   {"inputs_embeds": None, "attention_mask": None}, sample=0)


# -- real exports, the real CLI -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_input_ids_only_export_pairs_with_torch_on_a_tokens_input_set(tmp_path, kind, exporter):
    model = fx.exported(kind, exporter, ("input_ids",))
    np.savez(tmp_path / "ids.npz", input_ids=_ids())
    inputs, ref, cand = tmp_path / "inputs.h5", tmp_path / "torch.h5", tmp_path / "ort.h5"
    made = _invoke("inputs", "tokens", tmp_path / "ids.npz", "-o", inputs)
    assert made.exit_code == 0, made.output
    torch_run = _invoke("capture", "torch", _hf_dir(kind), "--inputs", inputs, "--label", "torch-fp32", "-o", ref,
                        "--attn-implementation", "eager")
    assert torch_run.exit_code == 0, torch_run.output
    ort_run = _invoke("capture", "onnx", model, "--inputs", inputs, "--label", "ort-cpu", "-o", cand,
                      "--sites-like", ref)
    assert ort_run.exit_code == 0, ort_run.output
    with open_dump(cand) as onnx_dump, open_dump(ref) as torch_dump:
        capture = onnx_dump.manifest.capture
        assert capture["dropped_inputs"] == {"attention_mask": DROPPED_MASK} and capture["derived_inputs"] == {}
        assert onnx_dump.manifest.inputs_sha256 == torch_dump.manifest.inputs_sha256
        blocks = {r.key for r in torch_dump.records() if re.match(BLOCKS[kind], r.key.site)}
        assert len({k.site for k in blocks}) >= 6 and {k.sample for k in blocks} == {0, 1}
        assert blocks <= {r.key for r in onnx_dump.records()}  # every layer pairs by key, for both samples
    report = tmp_path / "report.json"
    compared = _invoke("compare", ref, cand, "--inputs", inputs, "-o", report)
    assert compared.exit_code == 0, compared.output
    doc = json.loads(report.read_text())
    assert doc["verdict"] == "pass" and doc["totals"]["records"] >= len(blocks)
    paired = {s["site"] for s in doc["sites"]}
    assert {k.site for k in blocks} | {FINAL[kind]} <= paired


def test_padded_mask_is_refused_by_the_cli_with_an_exact_message(tmp_path):
    model = fx.exported("llama", "dynamo", ("input_ids",))
    mask = np.ones((2, fx.SEQ), np.int64)
    mask[1, :3] = 0  # left padding in the second sample
    np.savez(tmp_path / "padded.npz", input_ids=_ids(), attention_mask=mask)
    inputs = tmp_path / "padded.h5"
    assert _invoke("inputs", "tokens", tmp_path / "padded.npz", "-o", inputs).exit_code == 0
    out = tmp_path / "x.h5"
    result = _invoke("capture", "onnx", model, "--inputs", inputs, "--label", "x", "-o", out)
    assert result.exit_code == 3
    assert result.output == (
        f"Error: {inputs}: sample 1 of the input set does not match the model: attention_mask masks 3 of 8 "
        f"positions, but the model takes no attention_mask (the model takes input_ids). Without attention_mask the "
        f"model computes as if every position were a real token; build the input set without padding or custom "
        f"positions (e.g. 'parity inputs tokens' from unpadded input_ids), or export the model with attention_mask "
        f"among its inputs (torch.onnx.export(..., input_names=[..., 'attention_mask']))\n")
    assert not out.exists()


@pytest.mark.parametrize("kind,inputs", [("llama", ("input_ids", "attention_mask", "position_ids")),
                                         ("bert", ("input_ids", "attention_mask", "token_type_ids"))],
                         ids=["llama-mask-positions", "bert-mask-token-types"])
def test_model_inputs_the_set_lacks_are_derived(tmp_path, kind, inputs):
    from capture.torch_backend import TorchBackend
    model = fx.exported(kind, "torchscript", inputs)
    path = str(tmp_path / "ids-only.h5")
    write_input_set(path, [InputSample({"input_ids": row[None]}) for row in _ids()], {"source": "test"})
    ref, cand = str(tmp_path / "torch.h5"), str(tmp_path / "ort.h5")
    TorchBackend.from_pretrained(_hf_dir(kind), attn_implementation="eager").capture(
        read_input_set(path), ref, CaptureOptions(label="torch"))
    run_capture(OnnxBackend(model, reference=ref), path, cand, CaptureOptions(label="ort"), show_progress=False)
    with open_dump(cand) as onnx_dump, open_dump(ref) as torch_dump:
        capture = onnx_dump.manifest.capture
        assert capture["dropped_inputs"] == {}
        assert set(capture["derived_inputs"]) == set(inputs) - {"input_ids"}
        assert capture["derived_inputs"]["attention_mask"] == {
            "why": "all ones of input_ids' shape (no padding): the input set has no attention_mask", "samples": 2}
        for sample in (0, 1):  # the derived inputs are the defaults the torch model used
            key = f"s{sample}/t0/{FINAL[kind]}#0"
            assert np.abs(onnx_dump.read(key) - torch_dump.read(key)).max() < 1e-4


# -- building sets for other inputs ---------------------------------------------------------------------------------

def test_tokens_help_examples_run_as_written(tmp_path):
    text = _invoke("inputs", "tokens", "--help").output
    for name in ("pixel_values", "input_features", "decoder_input_ids", "token_type_ids"):
        assert name in text
    block = text[text.index("Example:"):text.index("Options:")]
    script = "\n".join(line for line in block.splitlines() if line.startswith("    "))  # the commands, not headers
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    images = read_input_set(str(tmp_path / "images.h5"))
    assert len(images) == 2 and set(images.samples[0].arrays) == {"pixel_values"}
    assert images.samples[0].arrays["pixel_values"].shape == (1, 3, 224, 224)
    asr = _invoke("inputs", "tokens", tmp_path / "asr.npz", "-o", tmp_path / "asr.h5")
    assert asr.exit_code == 0, asr.output
    arrays = read_input_set(str(tmp_path / "asr.h5")).samples[0].arrays
    assert set(arrays) == {"input_features", "decoder_input_ids"} and arrays["input_features"].dtype == np.float32
