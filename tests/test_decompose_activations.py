"""HardSwish / HardSigmoid / PRelu / LeakyRelu (α below 1, above 1, negative) decomposed (passes/decompose_activations): onnxruntime gives the same outputs before and
after, and compiled between blocked convs they need no layout round trip; x86 outputs equal onnxruntime's."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import runnable_preset


def lcnet_block(op: str, alpha: float | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    attrs = ({"alpha": 0.25, "beta": 0.4} if op == "HardSigmoid" else
             {"alpha": alpha if alpha is not None else 0.2} if op == "LeakyRelu" else {})
    extra = ["slope"] if op == "PRelu" else []
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c", *extra], ["a"], **attrs),
             helper.make_node("Conv", ["a", "w1"], ["y"])]
    graph = helper.make_graph(nodes, "lcnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w(32, 16, 3, 3) * 4, "w0"),
                               numpy_helper.from_array(w(32, 32, 1, 1), "w1"),
                               numpy_helper.from_array(rng.uniform(0, 0.5, (32, 1, 1)).astype(np.float32), "slope")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


@pytest.mark.parametrize("op,alpha", [("HardSwish", None), ("HardSigmoid", None), ("PRelu", None),
                                      ("LeakyRelu", 0.2), ("LeakyRelu", 1.5), ("LeakyRelu", -0.3)])
def test_exact_in_onnxruntime(tmp_path, op, alpha):
    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    proto = lcnet_block(op, alpha)
    onnx.save(proto, tmp_path / "m.onnx")
    model, log = run_pipeline(load_model(tmp_path / "m.onnx"), ["decompose_activations"])
    assert log[0]["report"]["activations_decomposed"] == 1
    after = ir.serde.serialize_model(model)
    assert op not in {n.op_type for n in after.graph.node}
    x = {"x": np.random.default_rng(6).standard_normal((1, 16, 14, 14)).astype(np.float32)}
    ref = ort.InferenceSession(proto.SerializeToString()).run(None, x)[0]
    got = ort.InferenceSession(after.SerializeToString()).run(None, x)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["x86:avx512", "x86:avx2"])
@pytest.mark.parametrize("op", ["HardSwish", "HardSigmoid", "PRelu", "LeakyRelu"])
def test_compiles_blocked_and_matches_onnxruntime(tmp_path, target, op):
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import fusion_passes
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.lower import to_relax
    from edgec.toolchain.api import compile as do_compile
    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    path = tmp_path / "m.onnx"
    onnx.save(lcnet_block(op), path)
    model, _ = run_pipeline(load_model(path))
    tvm_target = resolve_target(target).tvm_target()
    passes = fusion_passes(tvm_target, CpuOptions())
    layout_at = next(i for i, p in enumerate(passes) if "ConvertLayout" in str(p.info.name)) + 1
    with tvm_target:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(tvm_target) + passes[:layout_at])(
            to_relax(ir.serde.serialize_model(model)))
    moved = []
    relax.analysis.post_order_visit(mod["main"], lambda e: moved.append(tuple(int(d) for d in e.args[0].ty.shape))
                                    if isinstance(e, relax.Call)
                                    and getattr(e.op, "name", None) == "relax.layout_transform" else None)
    # one blocked tensor is unblocked: the model's output (a clip between the convs added a round trip)
    assert sum(len(shape) == 5 for shape in moved) == 1, moved

    result = do_compile(path, target=runnable_preset(target), output=tmp_path / "out", verify=True)
    assert result.verification.passed, result.verification.summary()
