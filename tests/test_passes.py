"""Each pass keeps the model's numbers (onnxruntime before vs after) and really does its rewrite."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from edgec.passes import get_pass, pass_names
from edgec.toolchain.load import load_model
from edgec.toolchain.pipeline import DEFAULT_PASSES, run_pipeline


def _ort(model: ir.Model | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph.all_nodes()]


def test_builtin_passes_registered():
    assert {"fold_constants", "fold_batchnorm", "remove_identity", "remove_dead", "lift_constants"} <= set(
        pass_names())


def test_fold_batchnorm_removes_bn_and_keeps_outputs(bn_cnn_onnx):
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    model = load_model(bn_cnn_onnx)
    assert _ops(model).count("BatchNormalization") == 2
    before = _ort(model, x)
    result = get_pass("fold_batchnorm")(model)
    assert result.modified and result.report["batchnorm_folded"] == 2
    assert "BatchNormalization" not in _ops(result.model)
    np.testing.assert_allclose(_ort(result.model, x), before, atol=1e-5)


def test_fold_constants_removes_shape_subgraph(shape_subgraph_onnx):
    raw = onnx.load(str(shape_subgraph_onnx))
    raw_ops = {n.op_type for n in raw.graph.node}
    assert {"Shape", "Gather", "Concat", "Constant"} <= raw_ops  # the fixture really has a shape subgraph
    log: list[dict] = []
    model = load_model(shape_subgraph_onnx, "1,3,12,12", log=log)
    assert _ops(model) == ["Pad", "Conv", "Reshape", "Gemm"]
    pad = next(n for n in model.graph if n.op_type == "Pad")
    assert pad.inputs[1].const_value is not None  # pad amounts are now constants TVM can import
    assert {e["pass"] for e in log if e["changed"]} == {"lift_constants", "fold_constants"}
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(_ort(model, x), _ort(raw, x), atol=1e-5)


def test_remove_identity_and_dead():
    from onnx import TensorProto, helper, numpy_helper

    unused = numpy_helper.from_array(np.ones((4, 4), np.float32), "unused")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Dropout", ["a"], ["b"]),
         helper.make_node("Relu", ["b"], ["y"]), helper.make_node("Neg", ["x"], ["dead"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [unused])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    model = ir.serde.deserialize_model(proto)
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    model, log = run_pipeline(model, ["remove_identity", "remove_dead"])
    assert _ops(model) == ["Relu"]
    assert len(model.graph.initializers) == 0
    assert log[0]["report"]["nodes"] == {"Dropout": -1, "Identity": -1}
    assert log[1]["report"] == {"nodes_removed": 1, "initializers_removed": 1}
    np.testing.assert_array_equal(_ort(model, x), np.maximum(x, 0))


def test_default_pipeline_on_embedded_model_keeps_accuracy_outputs():
    from edgec.models import default_model_path

    model = load_model(default_model_path())
    x = np.random.default_rng(2).standard_normal((1, 1, 28, 28)).astype(np.float32)
    before = _ort(model, x)
    model, log = run_pipeline(model, DEFAULT_PASSES)
    assert [e["pass"] for e in log] == list(DEFAULT_PASSES)
    assert "BatchNormalization" not in _ops(model)
    np.testing.assert_allclose(_ort(model, x), before, atol=1e-4)


def test_unknown_pass_is_a_user_error():
    from edgec.errors import EdgecError

    with pytest.raises(EdgecError, match="unknown pass 'nope'"):
        get_pass("nope")
