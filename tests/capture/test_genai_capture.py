"""ORT GenAI capture of the tiny Llama built by the GenAI builder (fp32, int8, int4), offline."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from capture.base import CaptureOptions
from capture.genai_backend import GenaiBackend
from capture.onnx_backend import run_capture
from protocol import CaptureError, open_dump, read_input_set

from . import onnx_fixtures as fx


def _capture(tmp_path, backend, name, **kw):
    out = str(tmp_path / f"{name}.h5")
    run_capture(backend, fx.token_inputs(), out, CaptureOptions(label=name, **kw), show_progress=False)
    return out


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_logits_for_every_prompt_position(tmp_path, precision):
    out = _capture(tmp_path, GenaiBackend(fx.genai_build(precision)), precision)
    inputs = read_input_set(fx.token_inputs())
    with open_dump(out) as dump:
        assert dump.manifest.capture["method"] == "ort-genai"
        assert dump.manifest.framework["name"] == "onnxruntime-genai"
        assert dump.manifest.capture["execution_provider"] == "cpu"
        assert dump.manifest.capture["prompt_logits"] == "whole prompt at once"
        # the generator makes its own all-ones mask: the input set's (all ones) is left out, and recorded
        assert dump.manifest.capture["dropped_inputs"] == {"attention_mask": {
            "why": "all ones of input_ids' shape (no padding), which the model assumes: it takes no attention_mask",
            "samples": 2}}
        for i, sample in enumerate(inputs.samples):
            logits = dump.read(f"s{i}/t0/:out.logits#0")
            assert logits.shape == (1, fx.SEQ, 1000) and np.isfinite(logits).all()
            hf = fx.hf_logits(sample.arrays["input_ids"])
            if precision == "fp32":
                assert np.abs(logits - hf).max() < 2e-5
            else:  # quantized: close in distribution, not equal
                assert 0 < np.abs(logits - hf).max() < 0.5 * np.abs(hf).max()


def test_token_by_token_fallback_gives_the_same_logits(tmp_path):
    folder = fx.genai_build("fp32")
    whole = _capture(tmp_path, GenaiBackend(folder), "whole", max_samples=1)
    token = _capture(tmp_path, GenaiBackend(folder, prompt_feed="token"), "token", max_samples=1)
    with open_dump(whole) as a, open_dump(token) as b:
        assert "one token at a time" in b.manifest.capture["prompt_logits"]
        assert np.abs(a.read("s0/t0/:out.logits#0") - b.read("s0/t0/:out.logits#0")).max() < 1e-5


def test_intermediates_pair_with_hf_dump_through_rename_rules(tmp_path):
    reference = fx.torch_dump("llama")
    out = _capture(tmp_path, GenaiBackend(fx.genai_build("fp32"), intermediates=True, reference_sites=reference),
                   "inter")
    with open_dump(out) as dump, open_dump(reference) as ref:
        sites = {r.key.site for r in dump.records()}
        # the builder's 'attn' became HF's 'self_attn'; its fused layer boundaries were not paired
        wanted = [s for s in sites if re.match(r"^model\.layers\.\d+\.(self_attn|mlp|input_layernorm)(\.o_proj)?"
                                               r":out(\.0)?$", s)]
        assert len(wanted) >= 6
        assert not any(re.match(r"^model\.layers\.\d+:out", s) for s in sites)
        ref_keys = {str(r.key) for r in ref.records()}
        for site in wanted:
            key = f"s0/t0/{site}#0"
            assert key in ref_keys or key.replace(":out#", ":out.0#") in ref_keys, key
            a, b = dump.read(key), ref.read(key)
            assert a.shape == b.shape and np.abs(a - b).max() < 2e-5, site
        assert dump.manifest.capture["injected_outputs"] > 0
    assert not [d for d in os.listdir(fx.genai_build("fp32")) if d.startswith(".parity-scratch")]


def test_generate_and_teacher_forced(tmp_path):
    gen32 = _capture(tmp_path, GenaiBackend(fx.genai_build("fp32")), "g32", mode="generate", max_new_tokens=4)
    forced = _capture(tmp_path, GenaiBackend(fx.genai_build("int4")), "g4", mode="teacher-forced",
                      max_new_tokens=4, reference=gen32)
    with open_dump(gen32) as a, open_dump(forced) as b:
        tokens = a.array("generated_tokens.s0")
        assert tokens.shape == (4,)
        assert np.array_equal(b.array("generated_tokens.s0"), tokens)  # the reference's tokens were fed
        assert b.array("argmax_tokens.s0").shape == (4,)
        for step in range(1, 4):
            assert a.read(f"s0/t{step}/:out.logits#0").shape == (1, 1, 1000)
        # step 0's argmax is the first generated token
        assert int(a.read("s0/t0/:out.logits#0")[0, -1].argmax()) == tokens[0]
        # greedy fp32 GenAI decoding follows Hugging Face's next-token choice
        ids = read_input_set(fx.token_inputs()).samples[0].arrays["input_ids"]
        full = np.concatenate([ids, tokens[None, :3]], axis=1)
        assert np.array_equal(fx.hf_logits(full)[0, fx.SEQ - 1:].argmax(-1), tokens)


def test_not_a_genai_folder_and_composite(tmp_path):
    with pytest.raises(CaptureError, match="no genai_config.json"):
        GenaiBackend(str(tmp_path))
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "genai_config.json").write_text('{"model": {"decoder": {"filename": "decoder.onnx"}, '
                                              '"encoder": {"filename": "encoder.onnx"}}}')
    (folder / "decoder.onnx").write_bytes(b"")
    (folder / "encoder.onnx").write_bytes(b"")
    with pytest.raises(CaptureError) as err:
        GenaiBackend(str(folder))
    assert "composite model" in str(err.value) and "separately" in str(err.value)


def test_values_renamed_onto_one_site_become_successive_calls(tmp_path):
    # rename rules that merge the MLP's gate and up projections give two values per step one site: calls 0 and 1
    backend = GenaiBackend(fx.genai_build("fp32"), intermediates=True, rename=["gate_proj=gu", "up_proj=gu"])
    out = _capture(tmp_path, backend, "merged")
    with open_dump(out) as dump:
        calls = sorted(r.key.call for r in dump.records() if r.key.sample == 0 and r.key.step == 0
                       and r.key.site == "model.layers.0.mlp.gu:out")
    assert calls == [0, 1]


def test_padded_or_shifted_samples_are_refused(tmp_path):
    from protocol import InputSample, write_input_set
    ids = np.arange(4, 4 + fx.SEQ, dtype=np.int64)[None]
    mask = np.ones_like(ids)
    mask[0, :2] = 0
    padded = str(tmp_path / "padded.h5")
    write_input_set(padded, [InputSample({"input_ids": ids, "attention_mask": mask})])
    with pytest.raises(CaptureError) as err:
        run_capture(GenaiBackend(fx.genai_build("fp32")), padded, str(tmp_path / "x.h5"), CaptureOptions(label="x"),
                    show_progress=False)
    assert str(err.value) == (
        f"{padded}: sample 0 of the input set does not match the model: attention_mask masks 2 of 8 positions, but "
        f"the model takes no attention_mask (the model takes input_ids). Without attention_mask the model computes "
        f"as if every position were a real token; build the input set without padding or custom positions (e.g. "
        f"'parity inputs tokens' from unpadded input_ids), or capture padded batches with a backend whose model "
        f"takes attention_mask ('parity capture torch' or 'onnx')")
    shifted = str(tmp_path / "shifted.h5")
    write_input_set(shifted, [InputSample({"input_ids": ids, "position_ids": np.arange(fx.SEQ)[None] + 1})])
    with pytest.raises(CaptureError, match="position_ids are not 0..L-1, but the model takes no position_ids"):
        run_capture(GenaiBackend(fx.genai_build("fp32")), shifted, str(tmp_path / "y.h5"), CaptureOptions(label="y"),
                    show_progress=False)
    assert not os.path.exists(tmp_path / "x.h5") and not os.path.exists(tmp_path / "y.h5")


def test_samples_fill_the_context_exactly_and_longer_ones_are_refused(tmp_path):
    import json
    import shutil
    folder = tmp_path / "ctx8"
    shutil.copytree(fx.genai_build("fp32"), folder)
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["context_length"] = fx.SEQ  # the prompts of token_inputs() fill it exactly
    config["search"]["max_length"] = fx.SEQ
    (folder / "genai_config.json").write_text(json.dumps(config))
    out = _capture(tmp_path, GenaiBackend(str(folder)), "full-context")
    with open_dump(out) as dump:
        assert dump.read("s1/t0/:out.logits#0").shape == (1, fx.SEQ, 1000)
    with pytest.raises(CaptureError) as err:
        _capture(tmp_path, GenaiBackend(str(folder)), "too-long", mode="generate", max_new_tokens=3)
    assert str(err.value) == (
        f"{fx.token_inputs()}: sample 0 needs 10 positions (8 prompt tokens + 2 decode steps), more than the model's "
        f"context_length of 8 (genai_config.json). Build the input set with samples of at most 6 tokens (e.g. "
        f"'parity inputs text MODEL -n 6') or ask for fewer --max-new-tokens")
