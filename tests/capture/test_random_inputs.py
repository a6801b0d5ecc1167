"""Random input sets from an ONNX model's input spec."""
from __future__ import annotations

import subprocess

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from workflows.cli.main import cli
from capture.random_inputs import RandomInputOptions, draw_samples, read_input_specs, write_random_inputs
from protocol import CaptureError, read_input_set


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory) -> str:
    """A small real graph with named dynamic dims, an int and a float input."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    pix = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 4])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["pixel_values"], ["s"], keepdims=0),
             helper.make_node("Add", ["f", "s"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [ids, pix], [out]), ir_version=10,
                              opset_imports=[helper.make_opsetid("", 17)])
    path = str(tmp_path_factory.mktemp("rand") / "m.onnx")
    onnx.save(model, path)
    return path


def _options(**kw):
    base = dict(dims={"batch": 1, "sequence": 16}, int_ranges={"input_ids": (0, 32000)},
                float_ranges={"pixel_values": (-1.0, 1.0)}, seed=0, samples=3)
    base.update(kw)
    return RandomInputOptions(**base)


def test_reproducible_per_seed_and_in_range(vision_model):
    specs = read_input_specs(vision_model)
    a = draw_samples(specs, _options())
    b = draw_samples(specs, _options())
    c = draw_samples(specs, _options(seed=1))
    for x, y in zip(a, b):
        for name in x.arrays:
            assert np.array_equal(x.arrays[name], y.arrays[name])
    assert not np.array_equal(a[0].arrays["input_ids"], c[0].arrays["input_ids"])
    # sample i does not depend on how many samples were drawn
    assert np.array_equal(draw_samples(specs, _options(samples=1))[0].arrays["input_ids"], a[0].arrays["input_ids"])
    ids, pix = a[0].arrays["input_ids"], a[0].arrays["pixel_values"]
    assert ids.dtype == np.int64 and ids.shape == (1, 16) and ids.min() >= 0 and ids.max() < 32000
    assert pix.dtype == np.float32 and pix.shape == (1, 3, 4) and -1 <= pix.min() and pix.max() < 1


def test_written_input_set_has_same_sha_per_seed(tmp_path, vision_model):
    sha1, _ = write_random_inputs(vision_model, str(tmp_path / "a.h5"), _options())
    sha2, _ = write_random_inputs(vision_model, str(tmp_path / "b.h5"), _options())
    assert sha1 == sha2 == read_input_set(str(tmp_path / "a.h5")).sha256
    assert read_input_set(str(tmp_path / "a.h5")).provenance["seed"] == 0


def test_missing_dim_is_named(vision_model):
    with pytest.raises(CaptureError) as err:
        draw_samples(read_input_specs(vision_model), _options(dims={"batch": 1}), vision_model)
    assert "dynamic dim(s) sequence have no size" in str(err.value) and "--dim sequence=1" in str(err.value)
    with pytest.raises(CaptureError, match="--dim given for seq, which is not a dim"):
        draw_samples(read_input_specs(vision_model), _options(dims={"batch": 1, "sequence": 2, "seq": 3}))
    with pytest.raises(CaptureError, match="value range given for ids"):
        draw_samples(read_input_specs(vision_model), _options(int_ranges={"ids": (0, 5)}))


def test_cli_random_inputs(tmp_path, vision_model, parity_exe):
    out = str(tmp_path / "cli.h5")
    result = CliRunner().invoke(cli, ["inputs", "random", vision_model, "--dim", "batch=1", "--dim", "sequence=8",
                                      "--int-range", "input_ids=0:1000", "--seed", "3", "--samples", "2",
                                      "-o", out])
    assert result.exit_code == 0, result.output
    assert len(read_input_set(out)) == 2
    done = subprocess.run([parity_exe, "inputs", "random", vision_model, "--dim", "batch=1", "-o",
                           str(tmp_path / "x.h5")], capture_output=True, text=True)
    assert done.returncode == 3
    assert "dynamic dim(s) sequence have no size" in done.stderr
    bad = CliRunner().invoke(cli, ["inputs", "random", vision_model, "--dim", "batch", "-o", str(tmp_path / "y.h5")])
    assert bad.exit_code == 2 and "NAME=SIZE" in bad.output
