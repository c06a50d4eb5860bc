"""1-D convolutions (kernels/conv1d): long kernels (an STFT front end) as im2col + matmul, the others as 2-D convs
of unit height; compiled for a pinned AVX-512 and an AVX2 preset, outputs equal onnxruntime's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import runnable_preset


def conv1d_model(cin: int, cout: int, length: int, taps: int, stride: int = 1, pads=(0, 0), dilation: int = 1,
                 group: int = 1, bias: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(taps * 7 + cin)
    w = (rng.standard_normal((cout, cin // group, taps)) / np.sqrt(cin // group * taps)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["c"], strides=[stride], pads=list(pads), dilations=[dilation],
                            group=group, kernel_shape=[taps])
    graph = helper.make_graph([node, helper.make_node("Relu", ["c"], ["y"])], "c1d",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, length])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


CASES = [("stft-like 512 taps stride 160", dict(cin=1, cout=257, length=1760, taps=512, stride=160)),
         ("long kernel, padded, dilated, bias", dict(cin=3, cout=20, length=300, taps=24, stride=3, pads=(5, 7),
                                                     dilation=2, bias=True)),
         ("3 taps, padded", dict(cin=16, cout=32, length=50, taps=3, pads=(1, 1), bias=True)),
         ("stride 2, odd channels", dict(cin=5, cout=12, length=33, taps=5, stride=2, pads=(2, 1))),
         ("depthwise", dict(cin=24, cout=24, length=40, taps=3, pads=(1, 1), group=24))]


def test_no_conv1d_left():
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.conv1d import conv1d_pass
    from edgec.targets.lower import to_relax

    ops = []
    for _, kw in CASES:
        mod = conv1d_pass(isa_of(resolve_target("x86").tvm_target()))(to_relax(conv1d_model(**kw)))
        relax.analysis.post_order_visit(mod["main"], lambda e: ops.append(getattr(getattr(e, "op", None),
                                                                                   "name", None)))
    assert "relax.nn.conv1d" not in ops and "relax.matmul" in ops and "relax.nn.conv2d" in ops


@pytest.mark.parametrize("target", ["x86:avx512", "x86:avx2"])
@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_matches_onnxruntime(tmp_path, target, name, kw):
    from edgec.toolchain.api import compile as do_compile

    path = tmp_path / "m.onnx"
    onnx.save(conv1d_model(**kw), path)
    result = do_compile(path, target=runnable_preset(target), output=tmp_path / "out", verify=True)
    assert result.verification.passed, (name, result.verification.summary())
