"""Quantized Gemm/MatMul on a VNNI target runs as the vpdpbusd matmul (kernels/int8_matmul_vnni.py): the weights
packed to 16 × 4 blocks, odd K and N padded, one input row (an FC layer) and several, signed activations through
the x + 128 shift, the requantizing epilogue in the same kernel.

Outputs must equal a numpy integer reference exactly and onnxruntime within one output step. The kernel is built
twice: with the target's vpdpbusd, run where the host has VNNI; and on every host with a portable scalar dot
product of the same contract in its place (intrinsics.register_reference_local_acc), the rest of the kernel —
packing, padding, tiling, the predicated epilogue — exactly as the VNNI target schedules it. The assembly for
VNNI CPUs must hold vpdpbusd in the matmul kernel; an AVX2 target must not take the kernel."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from helpers import finish_qdq_layer, runnable_preset

VNNI_TARGET = "x86:avx512-vnni"


def qdq_matmul(kind: str, rows: list[int], k: int, n: int, xdtype=np.uint8, zx: int = 11, relu: bool = True,
               wmax: int = 127, source: list[int] | None = None, seed: int = 0) -> onnx.ModelProto:
    """x (float, ``rows + [k]``) → Q/DQ (``xdtype``, zero point ``zx``) → Gemm (transB, int32 bias) or MatMul by
    per-column int8 weights in ±``wmax`` → [ReLU] → Q/DQ uint8 (scale 0.03). With ``source``, x has that shape and
    is reshaped to ``rows + [k]`` after its DQ (a TFLite FullyConnected's flatten, as the converter writes it)."""
    rng = np.random.default_rng(seed)
    init, nodes = [], []

    def const(name, arr):
        init.append(numpy_helper.from_array(np.asarray(arr), name))

    wq = rng.integers(-wmax, wmax + 1, (n, k) if kind == "gemm" else (k, n)).astype(np.int8)
    sw = rng.uniform(0.002, 0.01, n).astype(np.float32)
    const("sx", np.float32(0.02)), const("zx", xdtype(zx)), const("wq", wq), const("sw", sw)
    nodes += [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
              helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
              helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0 if kind == "gemm" else 1)]
    inputs = ["xd", "wd"]
    if source is not None:
        const("flat", np.array([*rows, k], np.int64))
        nodes.append(helper.make_node("Reshape", ["xd", "flat"], ["xf"]))
        inputs = ["xf", "wd"]
    if kind == "gemm":
        const("bq", rng.integers(-3000, 3000, n).astype(np.int32)), const("sb", (np.float32(0.02) * sw))
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "sb"], ["bd"], axis=0))
        inputs.append("bd")
    return finish_qdq_layer(nodes, init, inputs, kind, source or [*rows, k], relu=relu, sy=0.03)


def numpy_reference(model: onnx.ModelProto, x: np.ndarray, relu: bool) -> np.ndarray:
    """The layer's integer arithmetic written independently: Σ (xq − zx)·wq in int64, + bias, float32
    requantize (round half to even), + zy, clamp; dequantized."""
    c = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    sx, zx = np.float32(c["sx"]), int(c["zx"])
    lo, hi = (-128, 127) if c["zx"].dtype == np.int8 else (0, 255)
    xq = np.clip(np.round(x / sx) + zx, lo, hi).astype(np.int64).reshape(-1, c["wq"].shape[0 if "bq" not in c else 1])
    if x.ndim > 2 and "flat" not in c:
        xq = xq.reshape(*x.shape[:-1], -1)
    wq = c["wq"].astype(np.int64)
    acc = (xq - zx) @ (wq.T if "bq" in c else wq)
    if "bq" in c:
        acc = acc + c["bq"].astype(np.int64)
    sy, zy = np.float32(c["sy"]), int(c["zy"])
    mult = (np.float64(sx) * c["sw"].astype(np.float64) / np.float64(sy)).astype(np.float32)
    yq = np.clip(np.round(acc.astype(np.float32) * mult) + zy, zy if relu else 0, 255)
    return (yq - zy).astype(np.float32) * sy


def _staged(model: onnx.ModelProto, preset: str, scheduled: bool):
    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.lower import to_relax

    return staged_module(to_relax(model), resolve_target(preset), scheduled=scheduled)


def _functions(mod) -> dict:
    from tvm import tirx

    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}


def _reference_run(model: onnx.ModelProto):
    """The model as the VNNI target fuses and schedules it, the dot product portable, compiled for this host with
    edgec's bounds-checked TIR pipeline."""
    import tvm
    from tvm import relax, s_tir

    from edgec.targets import resolve_target
    from edgec.targets.cpu import stack_alloc
    from edgec.targets.cpu.intrinsics import register_reference_local_acc
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.int8_matmul_vnni import schedule_matmul

    mod, target = _staged(model, VNNI_TARGET, scheduled=False)
    scheduled = 0
    for gv, func in list(mod.functions.items()):
        if gv.name_hint in _functions(mod) and "int8_matmul_vnni" in gv.name_hint:
            sch = schedule_matmul(s_tir.Schedule(func), isa_of(target), register_reference_local_acc())
            mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            scheduled += 1
    assert scheduled == 1
    # edgec's bounds-checked TIR pipeline (CpuOptions.bounds_check): the padded K and N, the predicated column tail
    ex = tvm.compile(mod, target=resolve_target("x86").tvm_target(), tir_pipeline=stack_alloc.register(True))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()


def _vnni_run(model: onnx.ModelProto):
    import tvm
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import compile_cpu

    ex, report = compile_cpu(model, resolve_target(VNNI_TARGET))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return (lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()), report


CASES = {
    "gemm_fc_row": dict(kind="gemm", rows=[1], k=70, n=33),  # one row: a classifier's FC layer
    "gemm_5_rows": dict(kind="gemm", rows=[5], k=70, n=33),
    # 7-bit weights: onnxruntime's own s8 × s8 kernel saturates pairs of products in int16 on AVX2 hosts with
    # full-range weights (off by up to 150 steps here; its quantizer's reduce_range exists for this)
    "matmul_tokens_signed": dict(kind="matmul", rows=[1, 5], k=70, n=33, xdtype=np.int8, zx=-3, relu=False,
                                 wmax=63),
    "gemm_many_tiles": dict(kind="gemm", rows=[12], k=40, n=150),  # 2 row tiles x 5 column tiles, parallel
    "gemm_fc_row_tiles": dict(kind="gemm", rows=[1], k=40, n=150),  # one row: 2 tiles of 5 column blocks
    "matmul_whole_blocks": dict(kind="matmul", rows=[3], k=64, n=48, zx=0),
    # DQ → Reshape → Gemm: the reshape moves before the dequantize (qdq_lower), the layer is integer
    "gemm_after_flatten": dict(kind="gemm", rows=[1], k=70, n=33, source=[1, 2, 35]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_vnni_matmul_equals_reference_and_onnxruntime(case):
    from edgec.toolchain.api import onnxruntime_outputs

    spec = CASES[case]
    model = qdq_matmul(**spec)
    scheduled, _ = _staged(model, VNNI_TARGET, scheduled=True)
    names = list(_functions(scheduled))
    assert [n for n in names if "int8_matmul_vnni" in n], names
    assert not [n for n in names if "fused_matmul" in n], names  # no generic int32 matmul left
    (kernel,) = [f for n, f in _functions(scheduled).items() if "int8_matmul_vnni" in n]
    text = kernel.script()
    assert "vpdpbusd" in text and "round" in text  # the dot product tensorized, the requantize in the same kernel

    runs = [_reference_run(model)]
    if runnable_preset(VNNI_TARGET) == VNNI_TARGET:  # this host has VNNI: the real kernel too
        run, report = _vnni_run(model)
        assert any("int8_matmul_vnni" in k["name"] for k in report.kernels)
        runs.append(run)
    for seed in (1, 2):
        shape = spec.get("source") or [*spec["rows"], spec["k"]]
        x = np.random.default_rng(seed).uniform(-0.9, 3.0, shape).astype(np.float32)
        ref = numpy_reference(model, x, spec.get("relu", True)).reshape([*spec["rows"], -1])
        ort = onnxruntime_outputs(model, {"x": x})[0]
        for run in runs:
            got = run(x)
            np.testing.assert_array_equal(got, ref)
            assert np.max(np.abs(got - ort)) <= 0.03 * (1 + 1e-6)  # one output step
            assert np.mean(got == ort) > 0.95


def _x86(name: str):
    """An x86 preset, or (a bare LLVM mcpu name) the AVX-512 preset built for that CPU."""
    from edgec.targets import resolve_target

    if ":" in name:
        return resolve_target(name)
    base = resolve_target("x86:avx512")
    return dataclasses.replace(base, name=f"x86:{name}", tvm={"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                                              "mcpu": name})


@pytest.mark.parametrize("cpu,vnni", [("icelake-server", True), ("znver5", True), ("x86:avx2", False)])
def test_vpdpbusd_in_matmul_kernel_exactly_on_vnni_cpus(cpu, vnni):
    from edgec.targets.cpu.build import compile_cpu

    model = qdq_matmul("gemm", [1], 70, 33)
    ex, report = compile_cpu(model, _x86(cpu))
    names = [k["name"] for k in report.kernels]
    assert any("int8_matmul_vnni" in n for n in names) == vnni, names
    asm = "\n".join(m.inspect_source("asm") for m in [ex.mod, *ex.mod.imports] if m.kind == "llvm")
    kernels = asm.split(".Lfunc_end")
    matmul = [body for body in kernels if "int8_matmul_vnni" in body or "fused_matmul" in body]
    assert matmul, names
    assert any("vpdpbusd" in body for body in matmul) == vnni
