"""Call structures in the dump (protocol format 1.2) and the torch replayer that rebuilds calls from them: what it
replays, and what it says it cannot rebuild (a cache carried between decode steps, inputs not held in full, objects,
a dump without call structures)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from capture.base import CaptureOptions
from capture.policy import RecordPolicy
from capture.torch_backend import TorchBackend
from capture.torch_hooks import torch_capture
from capture.torch_replay import TorchReplayer
from protocol import DumpWriter, InputSample, Manifest, open_dump, read_input_set, write_input_set


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("replay-inputs") / "in.h5")
    write_input_set(path, [InputSample({"input_ids": np.arange(4, 20)[None]}, {})])
    return read_input_set(path)


def _capture(model_path, inputs, out, **options):
    dtype = options.pop("dtype", "float32")
    TorchBackend.from_pretrained(model_path, dtype=dtype).capture(inputs, out, CaptureOptions(label="c", **options))
    return out


def test_a_decoder_layer_call_is_recorded_with_its_tensors_values_and_containers(tiny_llama, inputs, tmp_path):
    path = _capture(tiny_llama, inputs, str(tmp_path / "f.h5"))
    with open_dump(path) as r:
        assert r.format_version == "1.2"
        calls = r.calls()
        layer = calls.signature("model.layers.0", 0, 0, 0)
        assert calls.module_class("model.layers.0").endswith("LlamaDecoderLayer")
        assert layer["args"] == [{"tensor": "args.0"}]
        assert layer["kwargs"]["position_embeddings"] == {"tuple": [{"tensor": "kwargs.position_embeddings.0"},
                                                                    {"tensor": "kwargs.position_embeddings.1"}]}
        assert layer["kwargs"]["use_cache"] == {"value": False}
        # every tensor node names a record of the module's inputs
        keys = {str(i.key.site) for i in r.records()}
        assert "model.layers.0:in.kwargs.position_embeddings.1" in keys
        assert calls.signature("model.embed_tokens", 0, 0, 0) == {"args": [{"tensor": "args.0"}], "kwargs": {}}


def test_generate_mode_replays_the_prefill_and_says_why_not_the_decode_steps(tiny_llama, inputs, tmp_path):
    path = _capture(tiny_llama, inputs, str(tmp_path / "g.h5"), mode="generate", max_new_tokens=3)
    replayer = TorchReplayer.open(tiny_llama)
    with open_dump(path) as r:
        calls = r.calls()
        assert calls.signature("model.layers.0", 0, 0, 0)["kwargs"]["cache"] == {"cache": "DynamicCache",
                                                                                 "fresh": True}
        assert calls.signature("model.layers.0", 0, 2, 0)["kwargs"]["cache"]["fresh"] is False
        results = list(replayer.replay(r))
    by = {(c.module, c.step): c for c in results}
    prefill = by[("model.layers.0", 0)]
    assert prefill.skipped is None and prefill.outputs
    decode = by[("model.layers.0", 2)]
    assert decode.skipped and "carried from earlier steps" in decode.skipped
    # a Linear inside the decode step takes tensors only: it is replayed, and matches bit for bit
    lin = by[("model.layers.0.self_attn.q_proj", 2)]
    assert lin.skipped is None
    with open_dump(path) as r:
        assert np.array_equal(r.read(lin.outputs[0].info), lin.outputs[0].reference)


def test_outputs_kept_as_statistics_are_not_replayed_and_the_reason_names_the_policy(tiny_llama, inputs, tmp_path):
    path = str(tmp_path / "s.h5")
    TorchBackend.from_pretrained(tiny_llama).capture(
        inputs, path, CaptureOptions(label="s", policy=RecordPolicy.from_strings([r"mlp\.down_proj:out=stats"])))
    with open_dump(path) as r:
        got = {c.module: c for c in TorchReplayer.open(tiny_llama).replay(r)}
    assert "recorded as stats" in got["model.layers.0.mlp.down_proj"].skipped
    assert got["model.layers.0.mlp.up_proj"].skipped is None


def test_a_dump_without_call_structures_replays_leaf_modules_only(tiny_llama, inputs, tmp_path):
    """As a dump of format 1.1 (or an ONNX candidate's mapped modules): positional tensors alone are rebuilt."""
    path = _capture(tiny_llama, inputs, str(tmp_path / "old.h5"))
    with h5py.File(path, "r+") as f:
        del f["calls"]
    with open_dump(path) as r:
        assert r.calls() is None
        got = {c.module: c for c in TorchReplayer.open(tiny_llama).replay(r)}
    assert got["model.layers.0.self_attn.q_proj"].skipped is None
    assert got["model.layers.0.mlp.act_fn"].skipped is None
    assert "only a leaf module can be rebuilt" in got["model.layers.0"].skipped
    assert "not positional tensors alone" in got["model.rotary_emb"].skipped  # it takes position_ids by keyword


def test_an_argument_that_is_an_object_is_named_and_not_guessed(tmp_path):
    class Settings:
        scale = 3.0

    class Scaled(torch.nn.Module):
        def forward(self, x, settings):
            return x * settings.scale

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Scaled()

        def forward(self, x):
            return self.inner(x, Settings())

    model = Outer()
    manifest = Manifest(run_id="r", label="obj", dtype="float32", capture={"method": "torch-hooks", "mode": "forward"})
    path = str(tmp_path / "obj.h5")
    with torch.no_grad(), torch_capture(model, DumpWriter(path, manifest)) as cap:
        cap.at(0)
        model(torch.ones(2, 3))
    with open_dump(path) as r:
        got = {c.module: c for c in TorchReplayer(model).replay(r)}
    assert "is a " in got["inner"].skipped and "Settings object" in got["inner"].skipped
    assert got[""].skipped is None  # the root takes a tensor only: replayed


def test_a_module_missing_from_the_reference_is_named(tiny_llama, inputs, tmp_path):
    path = _capture(tiny_llama, inputs, str(tmp_path / "m.h5"))
    model = TorchReplayer.open(tiny_llama).model
    del model.model.layers[0].mlp.act_fn  # a reference without the module (another architecture revision)
    with open_dump(path) as r:
        got = {c.module: c for c in TorchReplayer(model).replay(r, modules=r"act_fn")}
    assert set(got) == {"model.layers.0.mlp.act_fn", "model.layers.1.mlp.act_fn"}
    assert "has no module 'model.layers.0.mlp.act_fn'" in got["model.layers.0.mlp.act_fn"].skipped
