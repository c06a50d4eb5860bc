"""exp, sigmoid, tanh, erf and softmax on the CPU run as vectorizable arithmetic (targets/cpu/fast_math), not one
``expf`` library call per lane: outputs equal onnxruntime's over the whole float range (saturation included) and
the x86 code calls no libm exp."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper


def _model(nodes, out: str = "y", shape=(1, 64, 10, 12)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


CASES = {
    "silu": [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
    "exp": [helper.make_node("Exp", ["x"], ["y"])],
    "tanh": [helper.make_node("Tanh", ["x"], ["y"])],
    "gelu (erf)": [helper.make_node("Div", ["x", "r2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                   helper.make_node("Mul", ["x", "e"], ["y"])],
    "softmax": [helper.make_node("Softmax", ["x"], ["y"], axis=1)],
}


def _inputs() -> np.ndarray:
    """Values across the range: ±90 saturates exp's clamp and the sigmoid, small ones test the polynomial."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 10, 12)).astype(np.float32) * 4
    x[0, 0, 0, :6] = [-90, -30, -1e-4, 0, 30, 88]
    return x


@pytest.mark.parametrize("name", list(CASES))
def test_matches_onnxruntime(tmp_path, name):
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgec.toolchain.api import run

    nodes = CASES[name]
    model = _model(nodes)
    if name.startswith("gelu"):
        model.graph.initializer.append(numpy_helper.from_array(np.array(np.sqrt(2), np.float32), "r2"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    from edgec.toolchain.api import compile as do_compile

    do_compile(path, target="x86", output=tmp_path / "out", verify=False)
    x = _inputs()
    got = run(tmp_path / "out", {"x": x}).outputs["y"]
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)


def test_no_libm_exp_in_the_x86_code():
    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import compile_cpu

    model = _model(CASES["silu"] + [helper.make_node("Tanh", ["y"], ["t"]),
                                    helper.make_node("Softmax", ["t"], ["z"], axis=1)], out="z")
    executable, _ = compile_cpu(model, resolve_target("x86:avx512"))
    asm = [m for m in executable.mod.imports if m.kind == "llvm"][0].inspect_source("asm")
    calls = set(re.findall(r"call[lq]?\s+(\w+)", asm))
    assert "__tvm_ffi_fused_subtract_fast_exp" in calls  # the softmax's exp is the fast one
    libm = {c for c in calls if re.fullmatch(r"_*(exp|exp2|expm1|tanh|erf)f?(_finite)?", c)}
    assert not libm, libm
