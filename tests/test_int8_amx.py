"""The AMX int8 conv and matmul kernels (edgec/targets/cpu/kernels/int8_amx.py, int8_amx_matmul.py), checked on
any x86-64 host.

Most hosts have no AMX, so the kernel is checked in two halves that meet at one tensor-intrinsic description
(amx_intrin.py): (1) with ``CpuOptions.amx_emulate`` the same kernel — packing, tiling, tensorized block,
fused epilogue — runs with the block as plain loops of that description, on this host, and must equal a numpy
integer reference exactly and onnxruntime within one output step; (2) built for AMX CPUs (x86:spr, mcpu
graniterapids) its assembly must hold the tile instructions, and on an AVX-512 VNNI CPU without AMX it must not be
chosen. Only an AMX host runs the real instructions (:func:`test_real_amx_kernel_on_an_amx_host`).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import onnx
import pytest

from helpers import runnable_preset
from test_int8 import numpy_reference, qdq_layer
from test_isa_codegen import split_functions

AMX_MARKER = "int8_amx"
TILE_OPS = ("ldtilecfg", "tileloadd", "tdpbusd", "tilestored", "tilerelease")
# (kind, cin, cout, side, k, stride, pad): channels a multiple of 64 and not (96, 72, 100: zero-padded to
# 128), stride 2, 1×1, odd widths; a Gemm (4 rows, ReLU) and a MatMul (inner dimension 100, no ReLU).
CASES = {
    "conv3x3_64to32": ("conv", 64, 32, 16, 3, 1, 1),
    "conv3x3_stride2_96to16": ("conv", 96, 16, 14, 3, 2, 1),
    "conv1x1_128to32": ("conv", 128, 32, 8, 1, 1, 0),
    "conv3x3_72to48_28wide": ("conv", 72, 48, 28, 3, 1, 1),
    "conv3x3_64to64_28wide": ("conv", 64, 64, 28, 3, 1, 1),  # the full 2 × 2 grid of accumulators (amx_state)
    "conv3x3_128to64_14": ("conv", 128, 64, 14, 3, 1, 1),  # one-tile rows: the grid's pixel groups are two rows
    "gemm_64to48": ("gemm", 64, 48, 0, 0, 1, 0),
    "matmul_100to32": ("matmul", 100, 32, 0, 0, 1, 0),
}
# The emulated build runs here: AVX-512 VNNI hosts build it with 16-channel blocks (as AMX targets do), AVX2
# hosts with 8-channel ones.
EMULATED_PRESET = runnable_preset("x86:avx512-vnni")


def _canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as `edgec compile` hands it to the builder."""
    import tempfile
    from pathlib import Path

    import onnx_ir as ir

    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        onnx.save(model, str(path))
        loaded, _ = run_pipeline(load_model(path))
    return ir.serde.serialize_model(loaded)


def _preset(name: str):
    from edgec.targets import resolve_target

    if name == "x86:graniterapids":
        base = resolve_target("x86:spr")
        return dataclasses.replace(base, name=name, tvm={**base.tvm, "mcpu": "graniterapids"})
    return resolve_target(name)


def _build(model: onnx.ModelProto, preset: str, emulate: bool, amx: bool = True, parallel_min_ns: int | None = None):
    from edgec.targets.cpu.build import compile_cpu
    from edgec.targets.cpu.options import CpuOptions

    options = CpuOptions(amx=amx, amx_emulate=emulate)
    if parallel_min_ns is not None:
        options = options.replace(parallel_min_ns=parallel_min_ns)
    executable, _ = compile_cpu(model, _preset(preset), options)
    llvm = [m for m in executable.mod.imports if m.kind == "llvm"]
    return executable, split_functions(llvm[0].inspect_source("asm"))


def _mnemonics(functions, marker: str) -> collections.Counter:
    return collections.Counter(m for name, body in functions.items() if marker in name for m, _ in body)


def _run(executable, x: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _input(shape, seed: int) -> np.ndarray:
    """Activations quantized to at most 127 (scale 0.02, zero point 37): onnxruntime's AVX2 u8s8 conv sums
    pairs of uint8 · int8 products in saturating int16 and is off by many steps for larger inputs, which is
    its own (documented) error, not one to compare against."""
    return np.random.default_rng(seed).uniform(-0.7, 1.8, shape).astype(np.float32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_emulated_amx_kernel_equals_numpy_and_onnxruntime(case):
    from edgec.toolchain.api import onnxruntime_outputs

    kind, cin, cout, side, k, stride, pad = CASES[case]
    relu = kind != "matmul"
    model = qdq_layer(kind=kind, cin=cin, cout=cout, hw=side, k=k, stride=stride, pad=pad, zx=37, relu=relu)
    executable, functions = _build(_canonical(model), EMULATED_PRESET, emulate=True)
    assert any(AMX_MARKER in f for f in functions), f"AMX kernel not chosen: {sorted(functions)}"
    assert not any(_mnemonics(functions, "")[op] for op in TILE_OPS), "the emulated kernel has tile instructions"
    x = _input([1, cin, side, side] if kind == "conv" else [4, cin], seed=cin)
    got = _run(executable, x)
    ref = numpy_reference(model, x, kind, relu, True, stride, pad).reshape(got.shape)
    np.testing.assert_array_equal(got, ref)
    ort = onnxruntime_outputs(model, {"x": x})[0]
    assert np.max(np.abs(got - ort)) <= 0.05 * (1 + 1e-6)  # one output step (sy = 0.05)


def _compile_relax_checked(make_output, x: np.ndarray):
    """Relax ``main(x) = make_output(x)`` through the CPU pipeline with the emulated AMX block and every buffer
    access bounds-checked (CpuOptions.bounds_check; the emulated block is TIR, so its reads of the packed input,
    the weight tiles and the accumulator are checked too); returns (output on ``x``, assembly)."""
    import tvm
    from tvm import relax

    from edgec.targets.cpu import stack_alloc
    from edgec.targets.cpu.build import relax_pipeline, schedule_passes
    from edgec.targets.cpu.options import CpuOptions

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, str(x.dtype)))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(make_output(xv)))
        bb.emit_func_output(y)
    target, options = _preset(EMULATED_PRESET).tvm_target(), CpuOptions(amx_emulate=True, bounds_check=True)
    executable = tvm.compile(bb.get(), target=target,
                             relax_pipeline=relax_pipeline(target, schedule_passes(target, options), options),
                             tir_pipeline=stack_alloc.register(bounds_check=True))
    asm = [m for m in executable.mod.imports if m.kind == "llvm"][0].inspect_source("asm")
    return _run(executable, x), asm


def test_emulated_amx_conv_padding_dilation_stride():
    """The conv kernel's own padding (asymmetric), dilation and stride, batch 2, on a plain Relax uint8 × int8 →
    int32 conv (a QDQ graph pads explicitly before its conv, so the packed copy's border is only reached this
    way), bounds-checked."""
    from tvm import relax

    rng = np.random.default_rng(0)
    cin, cout, side, k, stride, dilation, pads = 80, 32, 20, 3, 2, 2, (1, 2, 1, 0)  # top, left, bottom, right
    w = rng.integers(-128, 128, (cout, cin, k, k)).astype(np.int8)
    x = rng.integers(0, 256, (2, cin, side, side)).astype(np.uint8)
    got, asm = _compile_relax_checked(lambda xv: relax.op.nn.conv2d(
        xv, relax.const(w), strides=stride, padding=pads, dilation=dilation, out_dtype="int32"), x)
    assert "conv2d_NCHWc_int8_amx" in asm

    top, left, bottom, right = pads
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    span = (k - 1) * dilation + 1
    oh, ow = (xp.shape[2] - span) // stride + 1, (xp.shape[3] - span) // stride + 1
    ref = np.zeros((2, cout, oh, ow), np.int64)
    for i in range(k):
        for j in range(k):
            y0, x0 = i * dilation, j * dilation
            patch = xp[:, :, y0:y0 + stride * oh:stride, x0:x0 + stride * ow:stride]
            ref += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.int64))
    np.testing.assert_array_equal(got, ref)


def test_emulated_amx_batched_matmul():
    """A batched uint8 × int8 → int32 matmul against one weight: 2 × 20 rows (tiles of 10), inner dimension 100
    (copied zero-padded to 128), 48 columns (three 16-column tiles), bounds-checked."""
    from tvm import relax

    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (100, 48)).astype(np.int8)
    x = rng.integers(0, 256, (2, 20, 100)).astype(np.uint8)
    got, asm = _compile_relax_checked(lambda xv: relax.op.matmul(xv, relax.const(w), out_dtype="int32"), x)
    assert "matmul_int8_amx" in asm
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))


@pytest.fixture(scope="module")
def stride2_model() -> onnx.ModelProto:
    return _canonical(qdq_layer(cin=96, cout=32, hw=14, k=3, stride=2, pad=1, zx=37))


@pytest.fixture(scope="module")
def gemm_model() -> onnx.ModelProto:
    return _canonical(qdq_layer(kind="gemm", cin=128, cout=32, zx=11))


@pytest.mark.parametrize("preset", ["x86:spr", "x86:graniterapids"])
@pytest.mark.parametrize("layer", ["conv", "gemm"])
def test_amx_targets_get_tile_instructions(stride2_model, gemm_model, preset, layer):
    """On AMX CPUs the int8 conv and Gemm are the AMX kernels, whose code configures, loads, multiplies, stores
    and releases tiles (and has no vpdpbusd loop)."""
    model, marker = (stride2_model, "conv2d_NCHWc_int8_amx") if layer == "conv" else (gemm_model, "matmul_int8_amx")
    # the per-task structure of the parallel kernel: the small Gemm would otherwise run its tasks in a serial loop
    # (serial_small.py), which LLVM may unroll into two copies of the task
    _, functions = _build(model, preset, emulate=False, parallel_min_ns=0)
    ops = _mnemonics(functions, marker)
    for op in TILE_OPS:
        assert ops[op] >= 1, f"{preset}: no {op} in the AMX kernel: {dict(ops)}"
    # one configuration and one release per task; each accumulator loaded once and stored once (held across the
    # conv's taps): the conv's 2 output-channel blocks are 2 accumulators sharing each A tile (per tap and
    # 64-deep step: 1 A + 2 B loads, 2 multiplies), the Gemm's one (1 A + 1 B, 1 multiply); the 96- and 128-deep
    # layers here take two steps; LLVM may unroll the conv's taps
    accumulators = 2 if layer == "conv" else 1
    assert ops["ldtilecfg"] == ops["tilerelease"] == 1 and ops["tilestored"] == accumulators
    multiplies = ops["tdpbusd"] // accumulators
    assert ops["tdpbusd"] == accumulators * multiplies and multiplies % 2 == 0
    assert ops["tileloadd"] == accumulators + multiplies * (1 + accumulators)
    assert ops["vpdpbusd"] == 0


def test_amx_is_the_default_and_can_be_turned_off(stride2_model):
    """An AMX CPU gets the tile kernels by default (measured faster there, options.py); ``CpuOptions(amx=False)``
    (``edgec compile --cpu-option amx=off``) gives it the VNNI conv and no tile instruction."""
    from edgec.targets.cpu.options import CpuOptions

    assert CpuOptions().amx
    _, functions = _build(stride2_model, "x86:spr", emulate=False, amx=False)
    assert not any(_mnemonics(functions, "")[op] for op in TILE_OPS)
    assert _mnemonics(functions, "conv2d_NCHWc_int8")["vpdpbusd"] > 0


@pytest.mark.parametrize("layer", ["conv", "gemm"])
def test_no_amx_without_amx(stride2_model, gemm_model, layer):
    """AVX-512 VNNI without AMX (cascadelake): no AMX kernel and no tile instruction anywhere (the conv is the
    VNNI kernel)."""
    _, functions = _build(stride2_model if layer == "conv" else gemm_model, "x86:avx512-vnni", emulate=False)
    assert not any(AMX_MARKER in f for f in functions)
    everything = _mnemonics(functions, "")
    assert not any(everything[op] for op in TILE_OPS)
    if layer == "conv":
        assert _mnemonics(functions, "conv2d_NCHWc_int8")["vpdpbusd"] > 0


def test_tile_config_layout():
    """The ldtilecfg operand: palette 1 in byte 0, bytes per row of tiles 0-2 (16-bit) from byte 16, rows of
    tiles 0-2 from byte 48, the rest zero (Intel SDM, LDTILECFG)."""
    from edgec.targets.cpu.amx_intrin import tile_config_words

    raw = np.array(tile_config_words(7, 16), np.uint64).tobytes()
    assert len(raw) == 64 and raw[0] == 1 and not any(raw[1:16])
    colsb = np.frombuffer(raw[16:48], np.uint16)
    assert list(colsb[:3]) == [64, 64, 64] and not colsb[3:].any()
    assert list(raw[48:51]) == [7, 7, 16] and not any(raw[51:])
    assert list(np.frombuffer(np.array(tile_config_words(16, 8), np.uint64).tobytes()[16:22], np.uint16)) == \
        [32, 64, 32]


def test_amx_permission_request_is_guarded():
    """The Linux AMX state request runs only for artifacts built with AMX and only on CPUs that have it."""
    from edgec.devices.device_main import request_amx_permission, uses_amx

    assert request_amx_permission(cpuinfo="flags\t\t: fpu sse avx2 avx512f avx512_vnni\n") is False
    assert uses_amx({"target": {"build": {"isa": {"features": ["avx512f", "amx-int8", "amx-tile"]}}}})
    assert not uses_amx({"target": {"build": {"isa": {"features": ["avx512f", "avx512vnni"]}}}})
    assert not uses_amx({"target": "x86"}) and not uses_amx({})


def _host_has_amx() -> bool:
    from edgec.targets.cpu.isa import host_features

    return {"amx-int8", "amx-tile"} <= host_features("x86_64")


@pytest.mark.skipif(not _host_has_amx(), reason="this host has no AMX (amx_int8 and amx_tile in /proc/cpuinfo): "
                                                "the real AMX kernels are checked by their assembly only")
@pytest.mark.parametrize("layer", ["conv", "conv_rows", "conv_two_rows", "gemm"])
def test_real_amx_kernel_on_an_amx_host(stride2_model, gemm_model, layer):
    """The real tile instructions, built for this host, equal the numpy integer reference: a stride-2 conv (2
    accumulators: its 2 output-channel blocks), a stride-1 64 → 64 conv on the full 2 × 2 grid of accumulators
    (two 14-pixel tiles of its 28-wide rows × two channel blocks: all 8 tiles; configured per parallel task and
    held across the taps, amx_state.py), a 128 → 64 conv at 14² whose one-tile rows pair up as two output rows
    of the grid, a Gemm."""
    from edgec.devices.device_main import request_amx_permission

    assert request_amx_permission(), "Linux refused the AMX tile-data state (arch_prctl ARCH_REQ_XCOMP_PERM)"
    stride, pad = (2, 1) if layer == "conv" else (1, 0) if layer == "gemm" else (1, 1)
    if layer == "conv":
        model = qdq_layer(cin=96, cout=32, hw=14, k=3, stride=2, pad=1, zx=37)
        built, shape = stride2_model, [1, 96, 14, 14]
    elif layer == "conv_rows":
        model = qdq_layer(cin=64, cout=64, hw=28, k=3, stride=1, pad=1, zx=37)
        built, shape = _canonical(model), [1, 64, 28, 28]
    elif layer == "conv_two_rows":
        model = qdq_layer(cin=128, cout=64, hw=14, k=3, stride=1, pad=1, zx=37)
        built, shape = _canonical(model), [1, 128, 14, 14]
    else:
        model, built, shape = qdq_layer(kind="gemm", cin=128, cout=32, zx=11), gemm_model, [4, 128]
    executable, functions = _build(built, "x86", emulate=False)
    assert _mnemonics(functions, AMX_MARKER)["tdpbusd"] > 0
    x = _input(shape, seed=5)
    got = _run(executable, x)
    kind = "gemm" if layer == "gemm" else "conv"
    np.testing.assert_array_equal(got, numpy_reference(model, x, kind, True, True, stride, pad).reshape(got.shape))
