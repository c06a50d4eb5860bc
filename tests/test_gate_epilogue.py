"""A squeeze-excitation gate as PP-OCRv4's text detector has it (GlobalAveragePool → 1×1 conv → HardSigmoid → the
feature map multiplied by the gate, plus residual adds), and 1×1 heads with output channels that do not block
(42, 18), float and int8. Two fixes meet here: the gate's chain after the broadcast multiply is one parallel,
vectorized stage (sched.schedule_leftover; it ran as one scalar loop per op over the whole map), and 8-bit convs
with such channel counts are padded to whole blocks (targets/cpu/pad_channels; they ran on TVM's generic NCHW int8
conv at 3 GFLOP/s). Outputs equal onnxruntime's on a pinned AVX-512 preset and on this host's."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from helpers import runnable_preset

SHAPE = (1, 32, 20, 24)


def se_block(head: int = 42) -> onnx.ModelProto:
    """x → y = x + x · hardsigmoid(conv(GAP(x))) + x → relu → 1×1 conv to ``head`` channels."""
    rng = np.random.default_rng(5)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    c = SHAPE[1]
    inits = [numpy_helper.from_array(w(c, c, 1, 1), "ws"), numpy_helper.from_array(w(c), "bs"),
             numpy_helper.from_array(w(head, c, 1, 1), "wh"), numpy_helper.from_array(w(head), "bh")]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Conv", ["p", "ws", "bs"], ["s"]),
             helper.make_node("HardSigmoid", ["s"], ["g"], alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["x", "g"], ["m"]),
             helper.make_node("Add", ["x", "m"], ["a"]),
             helper.make_node("Add", ["a", "x"], ["a2"]),
             helper.make_node("Relu", ["a2"], ["r"]),
             helper.make_node("Conv", ["r", "wh", "bh"], ["y"])]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _map_sized_buffers(func) -> int:
    """Intermediate buffers the size of the gated map a scheduled function allocates (an unfused stage each)."""
    elements = int(np.prod(SHAPE))
    count = 0
    for line in func.script().splitlines():
        if "sblock_alloc_buffer" in line:
            dims = [int(d) for d in re.findall(r"T\.int64\((\d+)\)", line.split("sblock_alloc_buffer")[1])]
            count += int(np.prod(dims)) == elements if dims else 0
    return count


def _staged(path, quantize: bool, tmp_path):
    """The scheduled module of ``path`` (the QDQ model edgec's quantizer writes when ``quantize``) on x86:avx512."""
    import onnx_ir as ir

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.lower import to_relax
    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    if quantize:
        result = edgec.compile(path, target=runnable_preset("x86:avx512"), output=tmp_path / "q", verify=False,
                               quantize=_quantize(tmp_path))
        path = result.artifact.path / "optimized.onnx"
    model, _ = run_pipeline(load_model(path))
    return staged_module(to_relax(ir.serde.serialize_model(model)), resolve_target("x86:avx512"))[0]


def _quantize(tmp_path) -> dict:
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(6).uniform(-1, 2, (8, *SHAPE[1:])).astype(np.float32))
    return {"mode": "int8", "calib": str(calib), "samples": 8}


@pytest.mark.parametrize("quantize", [False, True], ids=["float", "int8"])
def test_gate_chain_is_one_stage_and_heads_are_blocked(quantize, tmp_path):
    from tvm import tirx

    path = tmp_path / "se.onnx"
    onnx.save(se_block(), path)
    mod = _staged(path, quantize, tmp_path)
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    gate = [name for name in funcs if "conv2d" in name and "multiply" in name and "add" in name]
    assert gate, sorted(funcs)
    for name in gate:
        assert _map_sized_buffers(funcs[name]) == 0, (name, funcs[name].script())
    # every conv is blocked (NCHWc), the 42-channel head included: none on TVM's generic NCHW conv
    convs = [name for name in funcs if "conv2d" in name]
    assert convs and all("NCHWc" in name for name in convs), convs


@pytest.mark.parametrize("target", ["x86:avx512", "x86"])
@pytest.mark.parametrize("head", [42, 18])
@pytest.mark.parametrize("quantize", [False, True], ids=["float", "int8"])
def test_matches_onnxruntime(tmp_path, target, head, quantize):
    """Float: within edgec's default tolerance of onnxruntime on the source; int8: against onnxruntime on the QDQ
    model within its own integer/float spread (edgec compile's int8 verification)."""
    path = tmp_path / "se.onnx"
    onnx.save(se_block(head), path)
    result = edgec.compile(path, target=runnable_preset(target), output=tmp_path / "out", verify=True,
                           quantize=_quantize(tmp_path) if quantize else None)
    assert result.verification.passed, result.verification.summary()
