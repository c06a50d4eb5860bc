"""ReLU6 (Clip 0..6, ``Relu → Min(·, 6)`` after canonicalize_clip) in int8: quantized once, after the Min, like ReLU
(quantizing the Relu's output too spent the uint8 grid on the pre-clip range and cost EfficientNet-Lite0 ~9 dB of
logit SQNR, bench/quant_effnet.py), and lowered by TVM to an integer layer whose clamp is ``quantize(6)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgec.quantization import collect
from edgec.quantization.api import quantize_model


def _relu6_net(path: Path) -> Path:
    """x → Conv → Clip(0, 6) → Conv 1×1 → Clip(0, 6) → GlobalAveragePool → Flatten → Gemm (float, opset 17);
    the nodes are unnamed (canonicalize_clip once gave two such Clips' Relus the same name, "_relu")."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.standard_normal((16, 3, 3, 3)) * 1.5), ("b1", rng.standard_normal(16)),
        ("w2", rng.standard_normal((16, 16, 1, 1)) * 0.8), ("b2", rng.standard_normal(16)),
        ("w3", rng.standard_normal((10, 16))), ("b3", rng.standard_normal(10)),
        ("lo", np.array(0.0)), ("hi", np.array(6.0)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"]),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["a2"]),
             helper.make_node("GlobalAveragePool", ["a2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_relu6_is_quantized_once_after_the_clip(tmp_path):
    model = _relu6_net(tmp_path / "relu6.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    result = quantize_model(model, None, tmp_path / "calib.npy", 32)
    q = result.model
    producer = {o: n for n in q.graph.node for o in n.output}
    assert not [n for n in q.graph.node if n.op_type == "Min"]  # quantize(6) saturates: the Min is a no-op, gone
    relus = [n for n in q.graph.node if n.op_type == "Relu"]
    assert len(relus) == 2
    for node in relus:
        assert producer[node.input[0]].op_type == "Conv"  # no Q/DQ between the conv and its ReLU6
        consumers = [n.op_type for n in q.graph.node if node.output[0] in n.input]
        assert consumers == ["QuantizeLinear"]  # one Q/DQ, with the clipped range: DQ → Conv → Relu → Q
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) == 4  # input, 2×ReLU6 out, pooled → Gemm
    for layer in result.report["layers"][:2]:  # the ReLU6 outputs' ranges are the clipped ones
        assert layer["output"]["range"][0] == 0.0 and layer["output"]["range"][1] <= 6.0 + 1e-6
    test = rng.standard_normal((64, 3, 12, 12)).astype(np.float32)
    f_sess, q_sess = collect.session(onnx.load(str(model))), collect.session(q)
    ref = np.concatenate([f_sess.run(None, {"x": test[i:i + 1]})[0] for i in range(64)])
    got = np.concatenate([q_sess.run(None, {"x": test[i:i + 1]})[0] for i in range(64)])
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert sqnr > 30, sqnr


def _relu6_layer(sy: float) -> onnx.ModelProto:
    """dequantize(x) → Conv(dequantized int8 weights, int32 bias) → Relu → Min(6) → Q/DQ: one integer layer."""
    rng = np.random.default_rng(2)
    sx, sw = np.float32(0.03), rng.uniform(0.004, 0.012, 8).astype(np.float32)
    init = [numpy_helper.from_array(a, n) for n, a in (
        ("sx", sx), ("zx", np.uint8(20)), ("wq", rng.integers(-127, 128, (8, 8, 3, 3)).astype(np.int8)),
        ("sw", sw), ("bq", rng.integers(-2000, 2000, 8).astype(np.int32)), ("sb", (sx * sw).astype(np.float32)),
        ("six", np.float32(6.0)), ("sy", np.float32(sy)), ("zy", np.uint8(0)))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "sb"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Min", ["r", "six"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_relu6_layer_lowers_to_integer_kernel_with_the_clamp_at_quantize_6():
    import tvm
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import relax_pipeline, schedule_passes
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.lower import to_relax
    from edgec.targets.qdq_lower import count_integer_layers
    from edgec.toolchain.api import onnxruntime_outputs

    target = resolve_target("x86").tvm_target()
    for sy in (0.05, 6.0 / 255):  # clamp at 120 (6 inside the grid) and at 255 (6 is the top of the grid)
        model = _relu6_layer(sy)
        mod = to_relax(model)
        assert count_integer_layers(mod) == 1
        options = CpuOptions()
        ex = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target, schedule_passes(target, options),
                                                                           options))
        vm = relax.VirtualMachine(ex, tvm.cpu())
        x = np.random.default_rng(3).uniform(-1, 7, (1, 8, 10, 10)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        ort = onnxruntime_outputs(model, {"x": x})[0]
        assert np.max(np.abs(got - ort)) <= sy * (1 + 1e-6)
        assert np.mean(got == ort) > 0.98
        assert np.mean(ort >= 6.0 - sy) > 0.05 and got.max() <= 6.0 + sy / 2  # the clamp is exercised
