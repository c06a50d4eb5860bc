"""The graph around edgec's NCHW kernels (issue 19's whole-BNN speed): a ReLU before a binary layer folds into the
layer's sign pack (op_kernel.relu_absorbed), an elementwise chain that a layout transform undoes runs unblocked
(cpu/layout_sink.py), and the window rule's two new forms — a reduction along the contiguous axis (a global
average pool in NCHW) and a copy out of a channel block (NCHW8c → NCHW) — each exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

C, H, W = 12, 6, 7  # 12 channels: 16-bit words on AVX2 (≤ 16)


def relu_binary_model(shift_conv: np.ndarray, shift_gemm: np.ndarray, seed: int = 0) -> onnx.ModelProto:
    """x → Relu → BinaryConv 3×3/1 pad 1 (10 outputs) and x → Reshape → Relu → BinaryGemm (9 outputs),
    alpha 1 and bias 0 (the integer parts: exact), the given shifts."""
    from edgec.ops.functions import add_functions
    from edgec.ops.packing import pack_signs

    rng = np.random.default_rng(seed)
    k = C * H * W
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("wc", pack_signs(rng.standard_normal((10, C, 3, 3)), axis=1, word_bits=8)),
        ("ac", np.ones(10, np.float32)), ("sc", shift_conv.astype(np.float32)), ("bc", np.zeros(10, np.float32)),
        ("wg", pack_signs(rng.standard_normal((9, k)), axis=1, word_bits=8)),
        ("ag", np.ones(9, np.float32)), ("sg", shift_gemm.astype(np.float32)), ("bg", np.zeros(9, np.float32)),
        ("flat", np.array([1, k], np.int64)))]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BinaryConv", ["r", "wc", "ac", "sc", "bc"], ["bin"], domain="edgec",
                              strides=[1, 1], pads=[1] * 4, dilations=[1, 1]),
             helper.make_node("Reshape", ["x", "flat"], ["xf"]),
             helper.make_node("Relu", ["xf"], ["rf"]),
             helper.make_node("BinaryGemm", ["rf", "wg", "ag", "sg", "bg"], ["gemm"], domain="edgec")]
    graph = helper.make_graph(nodes, "relu_binary", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, C, H, W])],
                              [helper.make_tensor_value_info("bin", TensorProto.FLOAT, [1, 10, H, W]),
                               helper.make_tensor_value_info("gemm", TensorProto.FLOAT, [1, 9])], inits)
    return add_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def _run_artifact(folder, x: np.ndarray) -> list[np.ndarray]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(folder / "model.so")), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return [o.numpy() for o in (out if isinstance(out, (list, tuple)) or hasattr(out, "__len__") else [out])]


def _primfunc_names(optimized: str) -> list[str]:
    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.lower import to_relax

    mod, _ = staged_module(to_relax(onnx.load(optimized)), resolve_target("x86"), scheduled=False)
    return [gv.name_hint for gv in mod.functions]


def test_relu_folds_into_the_sign_pack_exactly(tmp_path):
    """Negative, zero and positive shifts (one channel each kind at least), inputs exactly at −shift and at 0:
    the artifact, which has no ReLU kernel left, equals onnxruntime on the function form bit for bit; and the
    ReLU matters (without it the signs differ)."""
    import onnxruntime as ort

    import edgec

    rng = np.random.default_rng(3)
    shift_conv = np.resize(np.array([-0.4, 0.0, 0.3, -1.0], np.float32), C)
    shift_gemm = np.resize(np.array([0.2, -0.3, 0.0], np.float32), C * H * W)
    path = tmp_path / "m.onnx"
    onnx.save(relu_binary_model(shift_conv, shift_gemm), str(path))
    result = edgec.compile(path, target="x86", output=tmp_path / "art")
    build = result.artifact.manifest["target"]["build"]
    assert build["binary_conv"]["layers"] == 1 and build["binary_gemm"]["layers"] == 1
    assert not [n for n in _primfunc_names(str(tmp_path / "art" / "optimized.onnx")) if "relu" in n]

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for trial in range(3):
        x = rng.standard_normal((1, C, H, W)).astype(np.float32)
        x[0, :, 0, :3] = -shift_conv[:, None]  # exactly at the sign's boundary (0 after the shift: +1)
        x[0, :, 1, :2] = 0.0
        if trial == 2:
            x = -np.abs(x)  # all ReLU'd to 0: only the shift decides
        want = sess.run(None, {"x": x})
        got = _run_artifact(tmp_path / "art", x)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    no_relu = relu_binary_model(shift_conv, shift_gemm)
    for i in (0, 3):
        no_relu.graph.node[i].op_type = "Identity"
    x = rng.standard_normal((1, C, H, W)).astype(np.float32)
    plain = ort.InferenceSession(no_relu.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for p, r in zip(plain, sess.run(None, {"x": x})):
        assert not np.array_equal(p, r)


def _chain_module(extra_use: bool = False, copy_exists: bool = True):
    """Relax: a, b plain [1, 16, 4, 4]; r = relu(T(b)) blocked with its plain copy T⁻¹(r) (when ``copy_exists``);
    out = T⁻¹(relu(add(T(a), r))) — the pattern between a binary conv and a blocked stem conv."""
    from tvm import relax
    from tvm.script import tirx as T

    to_blocked = T.index_map(lambda n, c, h, w: (n, c // 8, h, w, c % 8))
    to_plain = T.index_map(lambda n, c, h, w, cb: (n, c * 8 + cb, h, w))
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 16, 4, 4), "float32"))
    b = relax.Var("b", relax.TensorType((1, 16, 4, 4), "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            r = bb.emit(relax.op.nn.relu(bb.emit(relax.op.layout_transform(b, to_blocked))))
            outs = [bb.emit(relax.op.layout_transform(r, to_plain))] if copy_exists else [
                bb.emit(relax.op.sum(r))]
            s = bb.emit(relax.op.add(bb.emit(relax.op.layout_transform(a, to_blocked)), r))
            z = bb.emit(relax.op.nn.relu(s))
            outs.append(bb.emit(relax.op.layout_transform(z, to_plain)))
            if extra_use:
                outs.append(bb.emit(relax.op.sum(s)))
            gv = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(gv)
    return bb.get()


def _transforms(mod) -> int:
    from tvm import relax

    return sum(isinstance(b.value, relax.Call) and getattr(b.value.op, "name", None) == "relax.layout_transform"
               for block in mod["main"].body.blocks for b in block.bindings)


def _run_relax(mod, *args):
    import tvm
    from tvm import relax

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return [o.numpy() for o in vm["main"](*[tvm.runtime.tensor(a) for a in args])]


def test_sink_runs_the_chain_unblocked():
    """T⁻¹(relu(add(T(a), r))) with T⁻¹(r) already computed → relu(add(a, T⁻¹(r))): two transforms fewer (the
    T of a and the final T⁻¹), same outputs."""
    from edgec.targets.cpu.layout_sink import sink_layout_transforms_pass

    mod = _chain_module()
    sunk = sink_layout_transforms_pass()(mod)
    assert (_transforms(mod), _transforms(sunk)) == (4, 2)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((1, 16, 4, 4)).astype(np.float32) for _ in range(2))
    for want, got in zip(_run_relax(mod, a, b), _run_relax(sunk, a, b)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_run_relax(sunk, a, b)[1], np.maximum(a + np.maximum(b, 0), 0))


@pytest.mark.parametrize("extra_use, copy_exists", [(True, True), (False, False)])
def test_sink_leaves_chains_that_would_cost_more(extra_use, copy_exists):
    """A chain op read elsewhere too (its blocked value is still needed) or an input with no plain copy (it would
    need a new transform at run time): left as it is."""
    from edgec.targets.cpu.layout_sink import sink_layout_transforms_pass

    mod = _chain_module(extra_use, copy_exists)
    assert _transforms(sink_layout_transforms_pass()(mod)) == _transforms(mod)


def test_binary_mnist_keeps_one_activation_transform(tmp_path):
    """The embedded model with its middle convs binary: the stem's blocked output is unblocked once for the
    first binary layer; the residual add after the second runs in NCHW (no transform there and back), and the
    global average pool over NCHW is one vectorized reduction."""
    import edgec
    from edgec.models import default_model_path
    from edgec.ops.substitute import parse_skip
    from edgec.toolchain.substitute import SubstituteOptions, substitute

    sub = tmp_path / "bnn.onnx"
    substitute(str(default_model_path()), sub, SubstituteOptions(to="binary", skip=parse_skip("first,last")))
    result = edgec.compile(sub, target="x86", output=tmp_path / "art", verify=True)
    assert result.verification.passed
    names = _primfunc_names(str(tmp_path / "art" / "optimized.onnx"))
    assert len([n for n in names if "layout_transform" in n]) == 1, names


def _legalized(build, shape: tuple) -> object:
    """The one PrimFunc LegalizeOps makes of the Relax op ``build(x)`` on an x of ``shape``."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        gv = bb.emit(build(x))
        bb.emit_func_output(gv)
    mod = relax.transform.LegalizeOps()(bb.get())
    funcs = [f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(funcs) == 1
    return funcs[0]


def _window(func):
    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.cpu.kernels.window import SpatialWindow
    from edgec.targets.cpu.options import CpuOptions

    target = resolve_target("x86:avx2").tvm_target()
    with target:
        sch = SpatialWindow(CpuOptions()).apply(func, target, False)
    assert sch is not None
    return sch.mod["main"], tvm.tirx.build(sch.mod["main"].with_attr("global_symbol", "main"), target=target)


def _call(lib, func, x: np.ndarray) -> np.ndarray:
    import tvm

    out = tvm.runtime.empty([int(d) for d in func.params[-1].shape], "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


def test_mean_over_the_contiguous_axes_is_a_vector_rfactor():
    """mean over (H, W) of NCHW [1, 32, 14, 14]: 196 = 49 × 4, so four partial sums a vector (rfactor), the
    channels in parallel; equal to numpy's mean within float32 rounding of a reordered sum."""
    from tvm import relax

    shape = (1, 32, 14, 14)
    func, lib = _window(_legalized(lambda x: relax.op.mean(x, axis=[2, 3], keepdims=True), shape))
    script = func.script()
    assert "_rf" in script and "T.vectorized(T.int64(4))" in script and "T.parallel(T.int64(32))" in script, script
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(_call(lib, func, x), x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)


def test_copy_out_of_a_channel_block_keeps_its_row_serial():
    """NCHW8c → NCHW (Relax's layout_transform iterates over its input: a vector of 8 channels is loaded and
    stored to 8 planes): one parallel task per (channel block, row), the row's positions serial and unrolled by
    4 — not one task per vector — and the copy is exact."""
    from tvm import relax
    from tvm.script import tirx as T

    shape = (1, 2, 14, 28, 8)
    unblock = T.index_map(lambda n, c, h, w, cb: (n, c * 8 + cb, h, w))
    func, lib = _window(_legalized(lambda x: relax.op.layout_transform(x, unblock), shape))
    script = func.script()
    loops = (("parallel", 28), ("unroll", 4), ("vectorized", 8))
    assert all(f"T.{kind}(T.int64({n}))" in script for kind, n in loops), script
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_call(lib, func, x), x.transpose(0, 1, 4, 2, 3).reshape(1, 16, 14, 28))
