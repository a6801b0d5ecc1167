"""A model over 2 GB (external data) is injected and run without its data ever entering a protobuf message."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from capture.base import CaptureOptions
from capture.onnx_backend import OnnxBackend, run_capture
from capture.onnx_inject import inject_outputs
from protocol import InputSample, open_dump, write_input_set

ROWS, COLS = 1024 * 1024 + 1, 512  # 2 GiB + 2 KiB of float32


@pytest.mark.slow
def test_model_over_2gb_with_external_data(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    # the weight file is sparse (zeros), so it costs no disk and no time to write
    with open(folder / "weights.bin", "wb") as f:
        f.truncate(ROWS * COLS * 4)
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[ROWS, COLS])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(ROWS * COLS * 4))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("Gather", ["W", "idx"], ["rows"], name="/embed/Gather"),
             helper.make_node("Add", ["rows", "x"], ["sum"], name="/block/Add"),
             helper.make_node("Relu", ["sum"], ["y"], name="/head/Relu")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 4]),
                                             helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, COLS])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, COLS])],
                              initializer=[weight])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    path = str(folder / "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())  # a few hundred bytes: the weights are only referenced
    assert os.path.getsize(folder / "weights.bin") > 2 << 30

    injected = inject_outputs(path)
    try:
        assert {v.name for v in injected.values} == {"rows", "sum"}
        assert all(v.elem_type == TensorProto.FLOAT for v in injected.values)  # shape inference by path
        assert os.path.getsize(injected.path) < 1 << 20
        assert os.stat(os.path.join(injected.folder, "weights.bin")).st_ino == os.stat(folder / "weights.bin").st_ino
    finally:
        injected.cleanup()

    x = np.random.default_rng(0).normal(size=(1, 4, COLS)).astype(np.float32)
    inputs = str(tmp_path / "in.h5")
    write_input_set(inputs, [InputSample({"idx": np.array([[0, 7, ROWS - 1, 3]], np.int64), "x": x})])
    out = str(tmp_path / "big.h5")
    run_capture(OnnxBackend(path), inputs, out, CaptureOptions(label="big"), show_progress=False)
    with open_dump(out) as dump:
        assert np.array_equal(dump.read("s0/t0/block:out#0"), x)
        assert np.array_equal(dump.read("s0/t0/:out.y#0"), np.maximum(x, 0))
        assert dump.read("s0/t0/embed:out#0").shape == (1, 4, COLS)
    assert sorted(os.listdir(folder)) == ["model.onnx", "weights.bin"]
    assert onnx.load(path, load_external_data=False).graph.output[0].name == "y"
