"""fuse_pad_into_conv on QDQ graphs (quantized .tflite): a Pad on the integers that fills with the zero point,
then DequantizeLinear (and the reader's same-scale requantize), folds into the Conv's own pads — exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.passes import get_pass


def _model(fill: int, zero_point: int = -3, requantize: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "z"),
             numpy_helper.from_array(np.array(fill, np.int8), "fill"),
             numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 1, 2], np.int64), "pads"),
             numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("Pad", ["q", "pads", "fill"], ["p"], mode="constant"),
             helper.make_node("DequantizeLinear", ["p", "s", "z"], ["d0"])]
    if requantize:
        nodes += [helper.make_node("QuantizeLinear", ["d0", "s", "z"], ["q1"]),
                  helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d"])]
    else:
        nodes += [helper.make_node("Identity", ["d0"], ["d"])]
    nodes += [helper.make_node("Conv", ["d", "w"], ["y"], pads=[0, 1, 0, 0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("requantize", [True, False])
def test_zero_point_pad_folds_into_the_conv_exactly(requantize):
    proto = _model(fill=-3, requantize=requantize)
    model = ir.serde.deserialize_model(proto)
    if not requantize:
        get_pass("remove_identity")(model)
    report = get_pass("fuse_pad_into_conv")(model).report
    out = ir.serde.serialize_model(model)
    ops = [n.op_type for n in out.graph.node]
    assert report["pads_fused"] == 1 and "Pad" not in ops and ops.count("QuantizeLinear") == 1
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [1, 1, 1, 2]
    x = np.random.default_rng(1).standard_normal((1, 3, 7, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(proto, x))


def test_a_pad_that_does_not_fill_with_the_zero_point_stays():
    model = ir.serde.deserialize_model(_model(fill=5))
    get_pass("fuse_pad_into_conv")(model)
    assert "Pad" in [n.op_type for n in model.graph]
