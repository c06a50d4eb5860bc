"""prelu_to_elementwise: PRelu with a constant per-channel slope rewritten into Relu + slope·Min(x, 0), exactly
(onnxruntime on the model before and after, bit for bit), and a PRelu whose slope is an input left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper, numpy_helper

from edgec.passes import get_pass


def _model(slope_is_input: bool) -> onnx.ModelProto:
    slope = np.random.default_rng(1).standard_normal((4, 1, 1)).astype(np.float32)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 5, 5])
    s = helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [4, 1, 1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 5, 5])
    graph = helper.make_graph([helper.make_node("PRelu", ["x", "s"], ["y"])], "g", [x, s] if slope_is_input else [x],
                              [y], [] if slope_is_input else [numpy_helper.from_array(slope, "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_constant_slope_prelu_becomes_exact_elementwise_ops():
    proto = _model(slope_is_input=False)
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 5)).astype(np.float32)
    before = _run(proto, {"x": x})
    model = ir.serde.deserialize_model(proto)
    result = get_pass("prelu_to_elementwise")(model)
    assert result.modified
    ops = sorted(n.op_type for n in model.graph)
    assert ops == ["Add", "Constant", "Min", "Mul", "Relu"]
    after = ir.serde.serialize_model(model)
    onnx.checker.check_model(after)
    np.testing.assert_array_equal(_run(after, {"x": x}), before)


def test_prelu_with_a_slope_input_is_left_alone():
    model = ir.serde.deserialize_model(_model(slope_is_input=True))
    assert not get_pass("prelu_to_elementwise")(model).modified
    assert [n.op_type for n in model.graph] == ["PRelu"]
