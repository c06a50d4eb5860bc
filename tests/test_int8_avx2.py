"""The AVX2 int8 conv kernel (edgec/targets/cpu/kernels/int8_avx2.py): uint8 × int8 pairs through vpmaddwd on
x86 without AVX-512 VNNI. Every x86-64 host the suite runs on has AVX2, so the kernel itself runs here: its
output must equal the numpy integer reference exactly (vpmaddwd is exact, unlike the saturating vpmaddubsw) and
onnxruntime's op-by-op QDQ model within one output step; its assembly must hold vpmaddwd; VNNI targets must not
take it. The bounds-checked build is in tests/test_bounds_check.py."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from onnx import helper, numpy_helper

from test_int8 import numpy_reference, qdq_layer
from test_int8_amx import _canonical, _input, _run
from test_isa_codegen import split_functions

AVX2 = "x86:avx2"
MARKER = "conv2d_NCHWc_int8_avx2"
# (cin, cout, side, k, stride, pad): ResNet-style 3×3, stride 2 with an odd width, 1×1, 72 input channels (input
# blocks other than 8), 7-wide maps (a prime width), an image's 3 channels (padded to 4).
CASES = {
    "conv3x3_64to32": (64, 32, 16, 3, 1, 1),
    "conv3x3_stride2_96to16_w15": (96, 16, 15, 3, 2, 1),
    "conv1x1_128to32": (128, 32, 8, 1, 1, 0),
    "conv3x3_72to48": (72, 48, 12, 3, 1, 1),
    "conv3x3_64to64_7wide": (64, 64, 7, 3, 1, 1),
    "stem7x7_3to16": (3, 16, 23, 7, 2, 3),
}


def _build(model, preset: str = AVX2):
    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import compile_cpu
    from edgec.targets.cpu.options import CpuOptions

    executable, _ = compile_cpu(_canonical(model), resolve_target(preset), CpuOptions())
    llvm = [m for m in executable.mod.imports if m.kind == "llvm"][0]
    return executable, split_functions(llvm.inspect_source("asm"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_avx2_int8_conv_equals_numpy_and_onnxruntime(case):
    from edgec.toolchain.api import onnxruntime_outputs

    cin, cout, side, k, stride, pad = CASES[case]
    model = qdq_layer(kind="conv", cin=cin, cout=cout, hw=side, k=k, stride=stride, pad=pad, zx=37, relu=True)
    executable, functions = _build(model)
    ops = collections.Counter(m for name, body in functions.items() if MARKER in name for m, _ in body)
    assert ops["vpmaddwd"] > 0, f"the AVX2 int8 kernel was not chosen: {sorted(functions)}"
    assert not ops["vpmaddubsw"] and not ops["vpdpbusd"]
    x = _input([1, cin, side, side], seed=cin)
    got = _run(executable, x)
    ref = numpy_reference(model, x, "conv", True, True, stride, pad).reshape(got.shape)
    np.testing.assert_array_equal(got, ref)
    ort = onnxruntime_outputs(model, {"x": x}, optimize=False)[0]
    assert np.max(np.abs(got - ort)) <= 0.05 * (1 + 1e-6)  # one output step (sy = 0.05)


def test_full_range_inputs_stay_exact():
    """Activations across the whole uint8 range with full-range int8 weights: the products that saturate
    vpmaddubsw's int16 pair sums (255·127·2 > 32767) stay exact here."""
    model = qdq_layer(kind="conv", cin=32, cout=16, hw=9, k=3, stride=1, pad=1, zx=0, relu=False, sx=0.01)
    executable, _ = _build(model)
    x = np.random.default_rng(7).uniform(2.3, 2.55, (1, 32, 9, 9)).astype(np.float32)  # quantized 230..255
    got = _run(executable, x)
    np.testing.assert_array_equal(got, numpy_reference(model, x, "conv", False, True, 1, 1).reshape(got.shape))


def test_vnni_targets_keep_the_vnni_kernel():
    model = qdq_layer(kind="conv", cin=64, cout=32, hw=8, k=3, stride=1, pad=1, zx=37, relu=True)
    _, functions = _build(model, "x86:avx512-vnni")
    assert not any(MARKER in name for name in functions)
    assert collections.Counter(m for body in functions.values() for m, _ in body)["vpdpbusd"] > 0


def _signed_layer(cin: int, cout: int, side: int) -> "object":
    """A TFLite-style int8 layer: int8 activations (zero point −5), int8 per-channel weights, int32 bias; a ReLU
    and a uint8 output at scale 0.04 (helpers.finish_qdq_layer)."""
    from helpers import finish_qdq_layer

    rng = np.random.default_rng(3)
    sx, sw = np.float32(0.03), rng.uniform(0.002, 0.01, cout).astype(np.float32)
    init = [numpy_helper.from_array(np.asarray(v), n) for n, v in (
        ("sx", sx), ("zx", np.int8(-5)), ("wq", rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8)),
        ("sw", sw), ("bq", rng.integers(-2000, 2000, cout).astype(np.int32)), ("sb", (sx * sw).astype(np.float32)))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "sb"], ["bd"], axis=0)]
    return finish_qdq_layer(nodes, init, ["xd", "wd", "bd"], "conv", [1, cin, side, side], sy=0.04)


def test_signed_activations_run_shifted_on_the_avx2_kernel():
    """int8 × int8 (TFLite's) reads x + 128 as uint8 and drops 128·Σw (int8_vnni.unsigned_activations_pass), so it
    runs on the AVX2 kernel too: within one output step of onnxruntime's op-by-op model."""
    from edgec.toolchain.api import onnxruntime_outputs

    model = _signed_layer(32, 16, 10)
    executable, functions = _build(model)
    assert any(MARKER in name for name in functions), sorted(functions)
    x = np.random.default_rng(4).uniform(-3.6, 3.8, (1, 32, 10, 10)).astype(np.float32)
    got = _run(executable, x)
    ort = onnxruntime_outputs(model, {"x": x}, optimize=False)[0]
    assert np.max(np.abs(got - ort)) <= 0.04 * (1 + 1e-6)  # one output step (sy = 0.04)


def test_avx512_without_vnni_gets_the_16_lane_form():
    """x86:avx512 (Skylake-SP: AVX-512F, no VNNI): the same kernel on 16-channel blocks, vpmaddwd on zmm; run and
    compared with numpy where this host has AVX-512 (else its assembly is what is checked)."""
    from helpers import runnable_preset

    model = qdq_layer(kind="conv", cin=64, cout=32, hw=10, k=3, stride=1, pad=1, zx=37, relu=True)
    executable, functions = _build(model, "x86:avx512")
    body = [(m, ops) for name, lines in functions.items() if MARKER in name for m, ops in lines]
    assert any(m == "vpmaddwd" and "zmm" in ops for m, ops in body), "no zmm vpmaddwd in the AVX-512 form"
    if runnable_preset("x86:avx512") == "x86:avx512":
        x = _input([1, 64, 10, 10], seed=2)
        got = _run(executable, x)
        np.testing.assert_array_equal(got, numpy_reference(model, x, "conv", True, True, 1, 1).reshape(got.shape))
