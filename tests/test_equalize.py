"""Conv → depthwise Conv equalization before activation calibration (edgec/quantization/equalize.py): the float
model is unchanged, the channels of the tensor between the convs end up with one range, and the int8 model is
closer to the float one than without it (and than onnxruntime's quantize_static on the same data)."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from edgec.calibration.capture import session
from edgec.passes.quantize_qdq import QuantConfig, QuantizeQDQ
from edgec.quantization.equalize import MIN_RATIO, depthwise_pairs, equalize
from edgec.toolchain.pipeline import run_pipeline


def _stem(relu: bool = False) -> onnx.ModelProto:
    """A 3×3 stem conv whose 8 channels span ±0.05 to ±20, read by a depthwise conv (2 filters per channel)."""
    rng = np.random.default_rng(0)
    gains = np.array([20.0, 8.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05])
    w1 = (rng.standard_normal((8, 3, 3, 3)) * gains[:, None, None, None] / 5).astype(np.float32)
    w2 = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    mid = "r" if relu else "h"
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
             *([helper.make_node("Relu", ["h"], ["r"])] if relu else []),
             helper.make_node("Conv", [mid, "w2", "b2"], ["d"], group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["y"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array((gains / 10).astype(np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(16, np.float32), "b2")]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 3, 12, 12)).astype(np.float32)


def _run(model: onnx.ModelProto, x: np.ndarray, name: str = "y") -> np.ndarray:
    """Op by op (onnxruntime's graph optimizations off): a QDQ model's error as the model defines it, not plus
    the host's fused u8s8 kernels' own (they saturate on AVX2 hosts without VNNI)."""
    sess = session(model, optimize=False)
    out = [o.name for o in model.graph.output]
    if name not in out:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        sess = session(copy, optimize=False)
    return np.concatenate([sess.run([name], {"x": s})[0] for s in x])


def test_equalizing_keeps_the_float_model_and_evens_the_channels():
    for relu in (False, True):
        proto = _stem(relu)
        model = ir.serde.deserialize_model(proto)
        assert len(depthwise_pairs(model)) == 1
        calib, held_out = _inputs(16, 1), _inputs(8, 2)
        notes = equalize(model, lambda: ({"x": s} for s in calib))
        assert len(notes) == 1 and "8 channels" in notes[0]
        after = ir.serde.serialize_model(model)
        np.testing.assert_allclose(_run(after, held_out), _run(proto, held_out), rtol=1e-4, atol=1e-4)
        mid = "r" if relu else "h"
        peaks = np.abs(_run(after, calib, mid)).max(axis=(0, 2, 3))
        before = np.abs(_run(proto, calib, mid)).max(axis=(0, 2, 3))
        widest = before.max()
        expected = before / np.maximum(before / widest, MIN_RATIO)  # the widest's range; at most 1/MIN_RATIO up
        assert before.max() / before.min() > 100  # the test spans more than the cap
        np.testing.assert_allclose(peaks, expected, rtol=1e-3)
        assert np.sum(peaks > 0.999 * widest) >= 5


def test_a_second_reader_or_a_clip_in_between_is_left_alone():
    proto = _stem()
    proto.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, None))  # h read twice
    assert depthwise_pairs(ir.serde.deserialize_model(proto)) == []
    clipped = _stem(relu=True)
    clipped.graph.node[1].op_type = "Sigmoid"  # not positively homogeneous
    assert depthwise_pairs(ir.serde.deserialize_model(clipped)) == []


def _ort_int8(proto: onnx.ModelProto, calib: np.ndarray, tmp_path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(calib)

        def get_next(self):
            sample = next(self.samples, None)
            return None if sample is None else {"x": sample}

    onnx.save(proto, str(tmp_path / "stem.onnx"))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(tmp_path / "stem.onnx"), str(tmp_path / "ort.onnx"), Reader(), per_channel=True)
    return onnx.load(str(tmp_path / "ort.onnx"))


def test_the_int8_model_is_closer_to_float_with_equalization(tmp_path):
    proto = _stem()
    calib, held_out = _inputs(32, 1), _inputs(32, 2)
    ref = _run(proto, held_out)
    errors = {}
    for on in (True, False):
        qpass = QuantizeQDQ(QuantConfig(equalize=on), lambda: ({"x": s} for s in calib))
        model, log = run_pipeline(ir.serde.deserialize_model(proto), [qpass])
        assert any("equalized" in n for n in log[-1]["report"]["notes"]) == on
        errors[on] = float(np.mean((_run(ir.serde.serialize_model(model), held_out) - ref) ** 2))
    ort = float(np.mean((_run(_ort_int8(proto, calib, tmp_path), held_out) - ref) ** 2))
    assert errors[True] < 0.5 * errors[False] and errors[True] < ort, (errors, ort)
