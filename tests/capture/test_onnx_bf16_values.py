"""A model with bfloat16 intermediates: ONNX Runtime's Python API cannot return them, so they are left out (with a
warning) and everything else is still captured, instead of every run failing."""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from capture.onnx_inject import inject_outputs


def _model(path: str) -> str:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Cast", ["r"], ["r_bf16"], name="to_bf16", to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["r_bf16"], ["r_back"], name="from_bf16", to=TensorProto.FLOAT),
             helper.make_node("Add", ["r_back", "x"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "bf16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, path)
    return path


def test_bfloat16_values_are_left_out_and_the_rest_runs(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="capture.onnx_inject"):
        injected = inject_outputs(_model(str(tmp_path / "m.onnx")))
    try:
        assert [v.name for v in injected.values] == ["r", "r_back"]
        assert "1 bfloat16/float8 intermediate value(s) not captured" in caplog.text
        session = ort.InferenceSession(injected.path, providers=["CPUExecutionProvider"])
        x = np.array([[-1, 2, 3], [4, -5, 6]], np.float32)
        outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
        np.testing.assert_array_equal(outs["r"], np.maximum(x, 0))
        np.testing.assert_array_equal(outs["y"], np.maximum(x, 0) + x)
    finally:
        injected.cleanup()
