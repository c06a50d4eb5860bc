"""A PP-PicoDet-like block as paddle2onnx writes it: conv + bias, HardSwish spelt ``x · Clip(x + [3], 0, 6) / [6]``
with one-element constants, then a 42-channel head conv. Three fixes meet here: the constants become scalars
(passes/broadcast_constants: no layout round trip per activation), the epilogue that reads the conv output twice is
collapsed into the conv's write-back (sched.inline_epilogue), and 42 output channels are padded to whole blocks
(targets/cpu/pad_channels). Outputs equal onnxruntime's on a pinned AVX-512 and an AVX2 preset."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import runnable_preset


def picodet_block(head: int = 42) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(w(32, 16, 3, 3), "w0"), numpy_helper.from_array(w(32), "b0"),
             numpy_helper.from_array(np.array([3.0], np.float32), "three"),
             numpy_helper.from_array(np.array([6.0], np.float32), "six"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(w(head, 32, 1, 1), "wh"), numpy_helper.from_array(w(head), "bh")]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "three"], ["c3"]),
             helper.make_node("Clip", ["c3", "lo", "hi"], ["r6"]),
             helper.make_node("Mul", ["c", "r6"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["hs"]),
             helper.make_node("Conv", ["hs", "wh", "bh"], ["y"])]
    graph = helper.make_graph(nodes, "picodet", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               [1, 16, 20, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _loaded(tmp_path, proto: onnx.ModelProto) -> ir.Model:
    """Read as edgec reads a model (shapes inferred: the pass needs the other operand's rank)."""
    from edgec.toolchain.load import load_model

    onnx.save(proto, tmp_path / "m.onnx")
    return load_model(tmp_path / "m.onnx")


def test_broadcast_constants_exact_and_rank_0(tmp_path):
    from edgec.toolchain.pipeline import run_pipeline

    proto = picodet_block()
    model, log = run_pipeline(_loaded(tmp_path, proto), ["broadcast_constants", "fold_constants", "remove_dead"])
    assert log[0]["report"]["operands_made_scalar"] == 2
    after = ir.serde.serialize_model(model)
    ranks = {i.name: len(i.dims) for i in after.graph.initializer}
    assert all(ranks[n] == 0 for node in after.graph.node if node.op_type in ("Add", "Div")
               for n in node.input if n in ranks)
    x = {"x": np.random.default_rng(4).standard_normal((1, 16, 20, 24)).astype(np.float32)}
    ref = ort.InferenceSession(proto.SerializeToString()).run(None, x)[0]
    got = ort.InferenceSession(after.SerializeToString()).run(None, x)[0]
    np.testing.assert_array_equal(got, ref)


def test_no_activation_layout_round_trip_and_one_epilogue_stage(tmp_path):
    """After the fixes the activation stays blocked between the two convs (only the model's input and output
    change layout), and the first conv's fused function is the conv's own stages only."""
    import tvm
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import fusion_passes, staged_module
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.lower import to_relax
    from edgec.toolchain.pipeline import run_pipeline
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    model, _ = run_pipeline(_loaded(tmp_path, picodet_block()))
    proto = ir.serde.serialize_model(model)
    preset = resolve_target("x86:avx512")
    target = preset.tvm_target()
    passes = fusion_passes(target, CpuOptions())
    layout_at = next(i for i, p in enumerate(passes) if "ConvertLayout" in str(p.info.name)) + 1
    with target:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + passes[:layout_at])(to_relax(proto))
    moved = []  # the shapes every layout_transform reads
    relax.analysis.post_order_visit(mod["main"], lambda e: moved.append(tuple(int(d) for d in e.args[0].ty.shape))
                                    if isinstance(e, relax.Call)
                                    and getattr(e.op, "name", None) == "relax.layout_transform" else None)
    between = {(1, 32, 20, 24), (1, 2, 20, 24, 16)}  # the HardSwish activation, plain or blocked
    assert moved and not between & set(moved), moved

    scheduled, _ = staged_module(to_relax(proto), preset)
    conv = [f for gv, f in scheduled.functions.items() if "conv2d" in gv.name_hint and "minimum" in gv.name_hint]
    assert conv, [gv.name_hint for gv in scheduled.functions]
    text = conv[0].script()
    # the epilogue's stages are inlined into the conv's write-back, none left as a loop over the output of its own
    assert not [stage for stage in ("T_add1", "compute", "T_minimum", "T_multiply", "T_divide")
                if f'T.sblock("{stage}")' in text], text


@pytest.mark.parametrize("target", ["x86:avx512", "x86:avx2"])
@pytest.mark.parametrize("head", [42, 18])
def test_matches_onnxruntime(tmp_path, target, head):
    from edgec.toolchain.api import compile as do_compile

    path = tmp_path / "m.onnx"
    onnx.save(picodet_block(head), path)
    result = do_compile(path, target=runnable_preset(target), output=tmp_path / "out", verify=True)
    assert result.verification.passed, result.verification.summary()
