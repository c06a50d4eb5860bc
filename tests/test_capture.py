"""The shared capture path (edgec/calibration/capture.py): batched where the graph gives per-sample results that
way, one feed per call where it pins or mixes the batch, and the one path quantization and pruning both take."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgec.calibration import capture
from edgec.calibration.observers import get_observer
from edgec.pruning import calib as pruning_calib
from edgec.quantization import collect


def _model(tail: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """x [1, 4] → MatMul → h [1, 3] → ``tail`` → y [1, 3]; onnxruntime runs it at batch 1."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), *tail], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w, *inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _per_sample() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["h"], ["y"])], [])


def _pinned() -> onnx.ModelProto:
    """A Reshape to the constant [1, 3] (an export's folded batch): onnxruntime refuses it at batch > 1."""
    return _model([helper.make_node("Reshape", ["h", "shape"], ["y"])],
                  [numpy_helper.from_array(np.array([1, 3], np.int64), "shape")])


def _mixing() -> onnx.ModelProto:
    """Subtracts the mean over every axis, batch included: runs at any batch, and is wrong batched."""
    return _model([helper.make_node("ReduceMean", ["h"], ["m"], keepdims=1), helper.make_node("Sub", ["h", "m"],
                                                                                                ["y"])], [])


def _feeds(n: int) -> list[dict[str, np.ndarray]]:
    x = np.random.default_rng(0).standard_normal((n, 1, 4)).astype(np.float32)
    return [{"x": s} for s in x]


def _one_by_one(model: onnx.ModelProto, names: list[str], feeds) -> list[np.ndarray]:
    sess = capture.session(capture.expose(model, names))
    outs = [sess.run(names, f) for f in feeds]
    return [np.concatenate(parts) for parts in zip(*outs)]


def test_batched_calls_where_the_graph_runs_per_sample_and_give_the_same_values():
    feeds = _feeds(40)
    exposed = capture.Exposed(_per_sample(), ["h", "y"], group=16)
    calls = list(exposed.run(feeds))
    assert exposed.batched is True
    assert [len(c[0]) for c in calls] == [1, 1, 1, 16, 16, 5]  # sized on one, probed on two, then batched
    assert [c[0].start for c in calls] == [0, 1, 2, 3, 19, 35]
    got = [np.concatenate([c[1][i] for c in calls]) for i in range(2)]
    for g, want in zip(got, _one_by_one(_per_sample(), ["h", "y"], feeds)):
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)


def test_a_pinned_or_mixing_batch_falls_back_to_one_feed_per_call_with_the_right_values():
    feeds = _feeds(10)
    for model in (_pinned(), _mixing()):
        exposed = capture.Exposed(model, ["y"])
        calls = list(exposed.run(feeds))
        assert exposed.batched is False and [len(c[0]) for c in calls] == [1] * 10
        got = np.concatenate([c[1][0] for c in calls])
        np.testing.assert_allclose(got, _one_by_one(model, ["y"], feeds)[0], rtol=1e-6, atol=1e-6)
    # the mixing graph did run batched without an error: only the value check catches it
    sess = capture.session(capture.expose(_mixing(), ["y"], batched=True))
    batched = sess.run(["y"], {"x": np.concatenate([f["x"] for f in feeds[:2]])})[0]
    assert not np.allclose(batched, _one_by_one(_mixing(), ["y"], feeds[:2])[0], atol=1e-3)


def test_large_activations_get_fewer_feeds_per_call(monkeypatch):
    monkeypatch.setattr(capture, "MAX_CALL_BYTES", 3 * 2 * 3 * 4)  # three feeds' worth of [1, 3] float32 × 2
    calls = list(capture.Exposed(_per_sample(), ["h", "y"]).run(_feeds(12)))
    assert [len(c[0]) for c in calls] == [1, 1, 1, 3, 3, 3]


def test_quantization_and_pruning_capture_through_the_same_path(monkeypatch):
    made = []
    original = capture.Exposed

    class Counting(original):
        def __init__(self, *args, **kwargs) -> None:
            made.append(args[1])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(capture, "Exposed", Counting)
    model, feeds = _per_sample(), _feeds(20)
    x = np.stack([f["x"][0] for f in feeds])
    pruned = pruning_calib.capture(model, ["h"], x)["h"]
    observer = get_observer("minmax")
    assert collect.observe(model, {"h": observer}, feeds) == 20
    assert made == [["h"], ["h"]]  # pruning's capture, then quantization's calibration
    assert observer.compute_range() == (float(pruned.min()), float(pruned.max()))
    np.testing.assert_allclose(pruned, _one_by_one(model, ["h"], feeds)[0], rtol=1e-6, atol=1e-6)


def test_a_quantized_model_runs_op_by_op_and_a_float_one_optimized():
    """A QDQ model's session has onnxruntime's graph optimizations off (its exact arithmetic: its fused u8s8
    kernels saturate on x86 hosts without VNNI), unless asked; a float model's has them on."""
    import onnxruntime as ort

    x_scale = numpy_helper.from_array(np.array(0.02, np.float32), "s")
    x_zero = numpy_helper.from_array(np.array(128, np.uint8), "z")
    qdq = _model([helper.make_node("QuantizeLinear", ["h", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], [x_scale, x_zero])
    off, on = ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert capture.session(qdq).get_session_options().graph_optimization_level == off
    assert capture.session(qdq, optimize=True).get_session_options().graph_optimization_level == on
    assert capture.session(_per_sample()).get_session_options().graph_optimization_level == on
    x = np.array([[0.3, -0.2, 0.9, 0.1]], np.float32)
    h = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5)
    want = (np.clip(np.round(h / 0.02) + 128, 0, 255) - 128) * 0.02
    np.testing.assert_allclose(capture.session(qdq).run(None, {"x": x})[0], want, rtol=0, atol=1e-6)
