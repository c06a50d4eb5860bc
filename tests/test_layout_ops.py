"""Ops between blocked convolutions whose layout TVM 0.27 infers wrongly: a channel Split (YOLOv8's C2f blocks)
and a ConvTranspose after a blocked conv (PP-OCRv4's text detector; a 2×2 one is first rewritten as a 1×1 conv). Each model compiles for a pinned AVX-512
preset (16-channel blocks) and for AVX2 (8-channel blocks) and matches onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import runnable_preset


def _weights(rng, *shape) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def split_model(points: list[int], cin: int = 16, channels: int = 32, opset: int = 17) -> onnx.ModelProto:
    """Conv → Split(channels) → (a conv on every part but the first) → Concat → 1×1 Conv, as in YOLOv8's C2f."""
    rng = np.random.default_rng(0)
    sizes = np.diff([0, *points, channels]).tolist()
    inits = [numpy_helper.from_array(_weights(rng, channels, cin, 3, 3), "w0"),
             numpy_helper.from_array(np.array(sizes, np.int64), "split"),
             numpy_helper.from_array(_weights(rng, 8, channels, 1, 1), "wout")]
    parts = [f"p{i}" for i in range(len(sizes))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Split", ["ar", "split"], parts, axis=1)]
    joined = [parts[0]]
    for i, (part, size) in enumerate(zip(parts[1:], sizes[1:])):
        inits.append(numpy_helper.from_array(_weights(rng, size, size, 3, 3), f"w{i + 1}"))
        nodes.append(helper.make_node("Conv", [part, f"w{i + 1}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        joined.append(f"c{i}")
    nodes += [helper.make_node("Concat", joined, ["cat"], axis=1),
              helper.make_node("Conv", ["cat", "wout"], ["y"])]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, cin, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def conv_transpose_model(k: int = 2, bias: bool = False) -> onnx.ModelProto:
    """A blocked conv, then a stride-2 k×k ConvTranspose (an upsampling head), then a conv again. k = 2 is
    rewritten as a 1×1 conv + DepthToSpace (conv_transpose_to_conv); k = 3 stays a conv2d_transpose."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(_weights(rng, 32, 16, 3, 3), "w0"),
             numpy_helper.from_array(_weights(rng, 32, 16, k, k), "wt"),  # ConvTranspose: C_in × C_out × kH × kW
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bt"),
             numpy_helper.from_array(_weights(rng, 16, 16, 3, 3), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["a", "wt", "bt"] if bias else ["a", "wt"], ["u"], strides=[2, 2]),
             helper.make_node("Conv", ["u", "w1"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CASES = [("split 16+16", lambda: split_model([16])), ("split 8+24", lambda: split_model([8])),
         ("split 5+11+16", lambda: split_model([5, 16])),
         ("conv transpose 2x2 as conv", lambda: conv_transpose_model(2, bias=True)),
         ("conv transpose 3x3", lambda: conv_transpose_model(3))]


@pytest.mark.parametrize("k,rewritten", [(2, 1), (3, 0)])
def test_conv_transpose_to_conv_matches_onnxruntime(k, rewritten):
    """The pass alone, on ONNX: onnxruntime gives the same output before and after (a 3×3 kernel overlaps its
    windows and is left alone)."""
    import onnx_ir as ir
    import onnxruntime as ort

    from edgec.toolchain.pipeline import run_pipeline

    proto = conv_transpose_model(k, bias=True)
    model, log = run_pipeline(ir.serde.deserialize_model(proto), ["conv_transpose_to_conv", "remove_dead"])
    assert log[0]["report"]["conv_transposes_rewritten"] == rewritten
    after = ir.serde.serialize_model(model)
    assert ("ConvTranspose" in {n.op_type for n in after.graph.node}) == (not rewritten)
    x = {"x": np.random.default_rng(2).standard_normal((1, 16, 10, 10)).astype(np.float32)}
    ref = ort.InferenceSession(proto.SerializeToString()).run(None, x)[0]
    got = ort.InferenceSession(after.SerializeToString()).run(None, x)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["x86:avx512", "x86:avx2"])
@pytest.mark.parametrize("name,build", CASES, ids=[c[0] for c in CASES])
def test_blocked_layout_neighbours_match_onnxruntime(tmp_path, target, name, build):
    from edgec.toolchain.api import compile as do_compile

    path = tmp_path / "m.onnx"
    onnx.save(build(), path)
    result = do_compile(path, target=runnable_preset(target), output=tmp_path / "out", verify=True)
    assert result.verification.passed, (name, result.verification.summary())
    assert result.verification.max_abs_diff < 1e-4


@pytest.mark.parametrize("shape, block", [((1, 48, 5, 7), 16), ((2, 24, 3, 6), 8), ((1, 32, 1, 1), 16)])
def test_blocking_copy_iterates_in_blocked_order(shape, block):
    """NCHW → NCHW[k]c as TVM legalizes it (one block over the input's shape) is taken by kernels/blocking_copy:
    the channel block vectorized (a contiguous store) inside the blocked loops; the copy equals numpy's. The
    other direction is not this rule's (kernels/window keeps it)."""
    import tvm
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.kernels.blocking_copy import BlockingCopy
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.cpu.stack_alloc import register

    n, c, h, w = shape
    target = resolve_target(runnable_preset("x86:avx512")).tvm_target()

    def legalized(src_shape, index_map):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(src_shape, "float32"))
        with bb.function("main", [x]):
            bb.emit_func_output(bb.emit(relax.op.layout_transform(x, index_map)))
        mod = relax.transform.LegalizeOps()(bb.get())
        return next(f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))

    to_blocked = legalized(shape, lambda a, b, y, z: (a, b // block, y, z, b % block))
    sch = BlockingCopy(CpuOptions()).apply(to_blocked, target, False)
    assert sch is not None
    text = sch.mod["main"].script()
    assert f"T.vectorized(T.int64({block}))" in text and "T.parallel" in text, text
    lib = tvm.tirx.build(sch.mod["main"].with_attr("global_symbol", "main"), target=target, pipeline=register())
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((n, c // block, h, w, block), np.float32))
    lib["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), x.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2))

    from_blocked = legalized((n, c // block, h, w, block), lambda a, b, y, z, v: (a, b * block + v, y, z))
    assert BlockingCopy(CpuOptions()).apply(from_blocked, target, False) is None
