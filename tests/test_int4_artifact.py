"""int4 weights in the artifact (issue 4): stored packed two per byte, unpacked by a kernel at run time, integer
kernels per channel and per block (group:N); the compiled output equals onnxruntime's QDQ output within one output
quantization step, and the artifact's parameters shrink by what the manifest/report says."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import compile_x86, finish_qdq_layer
from edgec.pruning.calib import spread  # the MNIST file is sorted by digit: spread samples


def test_unpack_kernel_equals_numpy_reference_including_negative_nibbles():
    import tvm

    from edgec.targets.int4_pack import _unpack_func, pack_int4, unpack_int4_reference

    rng = np.random.default_rng(0)
    every = np.arange(-8, 8, dtype=np.int8)
    for shape in [(16,), (3, 5, 3), (2, 1, 3, 3, 4, 16, 4), (9001,)]:  # odd sizes, the VNNI kernel layout, parallel
        v = rng.integers(-8, 8, shape).astype(np.int8)
        v.reshape(-1)[:16] = every  # every nibble, -8..-1 included
        packed = pack_int4(v)
        assert packed.dtype == np.uint8 and packed.size == (v.size + 1) // 2
        np.testing.assert_array_equal(unpack_int4_reference(packed, shape), v)
        lib = tvm.compile(tvm.IRModule({"main": _unpack_func(shape)}),
                          target={"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
        out = tvm.runtime.tensor(np.zeros(shape, np.int8))
        lib["int4_unpack"](tvm.runtime.tensor(packed), out)
        np.testing.assert_array_equal(out.numpy(), v)
    assert pack_int4(np.array([-8, 7, -1, 0], np.int8)).tolist() == [0x78, 0x0F]
    with pytest.raises(ValueError):
        pack_int4(np.array([8], np.int8))


def int4_layer(kind: str, block: int | None, zx: int = 37, cin: int = 24, cout: int = 32, hw: int = 8, k: int = 3,
               stride: int = 1, pad: int = 1, relu: bool = True, seed: int = 0, out_q: bool = True):
    """x → Q/DQ (uint8) → Conv/Gemm/MatMul with a DQ'd INT4 weight (per channel, or blocks of ``block`` input
    channels) + bias → [Relu] → Q/DQ; opset 21, as `edgec quantize --weights int4` writes it."""
    rng = np.random.default_rng(seed)
    init, nodes = [], []

    def const(name, arr, dtype=None):
        if dtype == "int4":
            init.append(helper.make_tensor(name, TensorProto.INT4, arr.shape, arr.reshape(-1).tolist()))
        else:
            init.append(numpy_helper.from_array(np.asarray(arr), name))

    sx = 0.02
    if kind == "conv":
        xshape, wshape, out_axis, in_axis = [1, cin, hw, hw], (cout, cin, k, k), 0, 1
    elif kind == "gemm":
        xshape, wshape, out_axis, in_axis = [4, cin], (cout, cin), 0, 1
    else:
        xshape, wshape, out_axis, in_axis = [4, cin], (cin, cout), 1, 0
    wq = rng.integers(-8, 8, wshape).astype(np.int8)
    if block is None:
        sw = rng.uniform(0.01, 0.05, cout).astype(np.float32)
        attrs = {"axis": out_axis}
    else:
        sshape = list(wshape)
        sshape[in_axis] = -(-wshape[in_axis] // block)
        sw = rng.uniform(0.01, 0.05, sshape).astype(np.float32)
        attrs = {"axis": in_axis, "block_size": block}
    const("sx", np.float32(sx)); const("zx", np.uint8(zx))
    nodes.append(helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]))
    nodes.append(helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]))
    const("wq", wq, "int4"); const("sw", sw)
    nodes.append(helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], **attrs))
    inputs = ["xd", "wd"]
    if kind != "matmul":
        if block is None:  # int32 bias in the accumulator's scale, as the QDQ pass writes it
            const("bq", rng.integers(-3000, 3000, cout).astype(np.int32)); const("sb", (np.float32(sx) * sw))
            nodes.append(helper.make_node("DequantizeLinear", ["bq", "sb"], ["bd"], axis=0))
            inputs.append("bd")
        else:  # group-wise: the bias stays float
            const("b", rng.uniform(-0.5, 0.5, cout).astype(np.float32))
            inputs.append("b")
    model = finish_qdq_layer(nodes, init, inputs, kind, xshape, k=k, stride=stride, pad=pad, relu=relu,
                             out_q=out_q, opset=21, ir_version=10)
    return model, wq


CASES = {
    "conv3x3_channel": dict(kind="conv", block=None),
    "conv3x3_group8_stride2": dict(kind="conv", block=8, stride=2, hw=9),
    "conv3x3_group16_partial_block": dict(kind="conv", block=16),  # 24 input channels: the last block is short
    "conv1x1_group8_no_relu": dict(kind="conv", block=8, k=1, pad=0, relu=False, zx=0),
    "gemm_channel": dict(kind="gemm", block=None, cin=64),
    "gemm_group32_partial": dict(kind="gemm", block=32, cin=72),
    "matmul_group16_float_out": dict(kind="matmul", block=16, cin=48, relu=False, out_q=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_int4_layer_packed_and_within_one_step_of_onnxruntime(case):
    from edgec.targets.qdq_lower import count_integer_layers
    from edgec.toolchain.api import onnxruntime_outputs

    model, wq = int4_layer(**CASES[case])
    mod, run, report = compile_x86(model)
    assert count_integer_layers(mod) == 1  # an int32-accumulating conv/matmul replaced the float layer
    packed, params = report.packed, report.params
    assert packed["tensors"] == 1 and packed["packed_bytes"] == (packed["int8_bytes"] + 1) // 2
    assert packed["int8_bytes"] >= wq.size  # (padded to whole blocks for group-wise / channel blocks)
    assert "int8" not in params["by_dtype"]  # no unpacked copy of the weight is stored
    assert params["by_dtype"]["uint8"] == packed["packed_bytes"]
    spec = CASES[case]
    if spec.get("out_q", True):
        step = 0.05
    else:  # float output: one input step through the largest weight (as compile_int8.output_step_tolerance)
        from edgec.quantization.compile_int8 import output_step_tolerance

        step = output_step_tolerance(model)["out"]
        assert step is not None
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    for seed in (1, 2, 3):
        x = np.random.default_rng(seed).uniform(-0.9, 4.4, shape).astype(np.float32)
        got = run(x)
        ref = onnxruntime_outputs(model, {"x": x})[0]
        assert got.shape == ref.shape
        assert np.max(np.abs(got - ref)) <= step * (1 + 1e-5), case
        if spec.get("out_q", True):
            assert np.mean(got == ref) > 0.98


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The embedded model compiled three ways (int8, int4 per channel, int4 group:32) with 64 real digits."""
    from edgec.models import mnist_split
    from edgec.toolchain.api import compile as edgec_compile

    tmp = tmp_path_factory.mktemp("int4art")
    np.save(tmp / "calib.npy", spread(mnist_split()["train"][0], 64))
    out = {}
    for name, q in {"int8": {"mode": "int8"}, "int4": {"mode": "int4"},
                    "int4_g32": {"mode": "int4", "granularity": "group:32"}}.items():
        res = edgec_compile(None, output=tmp / name, quantize={**q, "calib": str(tmp / "calib.npy")})
        assert res.verification is not None and res.verification.passed, (name, res.verification)
        out[name] = res.artifact
    return out


def test_artifact_stores_int4_packed_and_shrinks(artifacts):
    import tvm

    m8, m4, m4g = (artifacts[k].manifest for k in ("int8", "int4", "int4_g32"))
    p8, p4, p4g = (m["target"]["build"]["params"] for m in (m8, m4, m4g))
    # int8: the 7 weights stored as int8; int4: the same elements, two per byte (uint8, half the bytes)
    assert p8["int4_packed"]["tensors"] == 0 and p4["int4_packed"]["tensors"] == 7
    assert p4["by_dtype"]["uint8"] * 2 == p8["by_dtype"]["int8"]
    assert "int8" not in p4["by_dtype"] and "int8" not in p4g["by_dtype"]
    assert p4g["int4_packed"]["tensors"] == 7
    # the sizes the manifest and report state are the executable's constants
    for m, p, art in ((m8, p8, artifacts["int8"]), (m4, p4, artifacts["int4"])):
        assert m["sizes"]["artifact_weights_bytes"] == p["bytes"]
        assert f"{p['bytes']:,} bytes of parameters in the compiled artifact" in (art.path / "report.md").read_text()
    assert m4["sizes"]["artifact_weights_bytes"] < 0.55 * m8["sizes"]["artifact_weights_bytes"]
    assert m4g["sizes"]["artifact_weights_bytes"] < 0.75 * m8["sizes"]["artifact_weights_bytes"]
    assert m4["quantization"]["mode"] == "int4" and m4g["quantization"]["config"]["granularity"] == "group:32"
    # the unpack kernel is compiled into the library (main is compiled code, not bytecode listing it)
    lib = tvm.runtime.load_module(str(artifacts["int4"].library))
    assert lib.implements_function("int4_unpack_0", query_imports=True)
    assert json.loads((artifacts["int4"].path / "manifest.json").read_text())["verification"]["passed"]


def test_int4_artifact_agrees_with_onnxruntime_on_real_digits(artifacts):
    import tvm
    from tvm import relax

    from edgec.models import mnist_split
    from edgec.toolchain.api import onnxruntime_outputs

    x = spread(mnist_split()["test"][0], 40).astype(np.float32)
    for name in ("int4", "int4_g32"):
        art = artifacts[name]
        atol = float(art.manifest["quantization"]["atol"])
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(art.library)), tvm.cpu())
        qdq = onnx.load(str(art.path / "optimized.onnx"))
        for i in range(len(x)):
            got = vm["main"](tvm.runtime.tensor(x[i:i + 1])).numpy()
            ref = onnxruntime_outputs(qdq, {"input": x[i:i + 1]})[0]
            assert np.max(np.abs(got - ref)) <= atol, (name, i)
