"""TFLite int8 models on the int8 kernels: signed activations reach the VNNI conv (shifted to uint8), a quantized
ADD's residual chain is inlined into the conv's epilogue, and its inputs are not re-quantized. Checked by the
structure of the scheduled module and by exact integers, never by timing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import runnable_preset

import edgec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from zoo_models import FetchError, fetch  # noqa: E402

VNNI_TARGET = "x86:avx512-vnni"  # the kernel choices checked are a VNNI target's, whatever the host


def _resnet8() -> Path:
    try:
        return fetch("tfl_q_resnet8")
    except FetchError as exc:
        pytest.skip(f"zoo model tfl_q_resnet8 cannot be fetched here ({exc}); run scripts/setup.sh")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """ResNet-8 compiled (and verified against the interpreter) once for the VNNI target, or the host's."""
    out = tmp_path_factory.mktemp("resnet8") / "art"
    return edgec.compile(_resnet8(), target=runnable_preset(VNNI_TARGET), output=out, verify=True)


def _calls(func) -> list[str]:
    from tvm import relax

    found = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            found.append(str(expr.args[0].name_hint))

    relax.analysis.post_order_visit(func, visit)
    return found


def test_resnet8_runs_every_conv_on_vnni_with_the_residual_in_the_epilogue(compiled):
    import onnx
    from tvm import tirx

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.lower import to_relax

    optimized = onnx.load(str(compiled.artifact.path / "optimized.onnx"))  # the QDQ graph the build compiled
    mod, _ = staged_module(to_relax(optimized), resolve_target(VNNI_TARGET))
    calls = _calls(mod["main"])
    convs = [c for c in calls if "conv2d" in c]
    assert len(convs) == 9 and all("conv2d_NCHWc_int8" in c for c in convs), calls  # int8 × int8 → u8 × s8
    first, last = calls.index(convs[0]), calls.index(convs[-1])
    # the zero point −128's border is the conv's own padding: no NCHWc → NCHW → pad → NCHWc copies
    assert not [c for c in calls[first:last] if "layout_transform" in c or c.startswith("pad")], calls
    residual = 0
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or "conv2d" not in gv.name_hint:
            continue
        text = func.script()
        assert func.attrs is not None and func.attrs.get("tirx.is_scheduled"), gv.name_hint
        # the ADD's arithmetic (float64) is inlined into the write-back, not whole-tensor stages of its own
        allocated = [line for line in text.splitlines() if "alloc_buffer" in line]
        assert not [line for line in allocated if "float64" in line], (gv.name_hint, allocated)
        if "T.floor(" in text:  # the ADD's shift right
            residual += 1
            assert "T.float32(0.034122481942176819)" not in text  # the residual input is not re-quantized
    assert residual == 3, [gv.name_hint for gv in mod.functions]  # ResNet-8's three residual ADDs


def test_resnet8_compiled_equals_the_interpreter_exactly(compiled):
    result = compiled
    assert result.artifact.manifest["target"]["build"]["integer_layers"] >= 9
    report = result.verification.to_dict()
    assert report["passed"] and report["max_abs_diff"] == 0, report


@pytest.mark.parametrize("pad,conv_padding,groups", [(None, 1, 1), (-128, 0, 1), (-5, 0, 1), (None, 0, 1),
                                                     (-128, 0, 8), (None, 1, 8)])
def test_unsigned_shift_keeps_the_integers(pad, conv_padding, groups):
    """int8 × int8 conv, its input padded by the conv (zeros), by an explicit pad of the zero point −128 (becomes
    the conv's zero padding) or of another value, or not at all: after the shift to uint8, the same int32. A
    depthwise conv is shifted only where that removes its −128 pad."""
    import tvm
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.int8_vnni import unsigned_activations_pass

    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 8, 6, 6)).astype(np.int8)
    w = rng.integers(-128, 128, (16 if groups == 1 else 8, 8 // groups, 3, 3)).astype(np.int8)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 8, 6, 6), "int8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            data = xv if pad is None else bb.emit(relax.op.nn.pad(xv, [0, 0, 0, 0, 1, 1, 1, 1], "constant",
                                                                   float(pad)))
            y = bb.emit_output(relax.op.nn.conv2d(data, relax.const(w, "int8"), padding=conv_padding,
                                                  groups=groups, out_dtype="int32"))
        bb.emit_func_output(y)
    mod = bb.get()
    isa = isa_of(resolve_target(VNNI_TARGET).tvm_target())
    shifted = unsigned_activations_pass(isa)(mod)
    ops = []
    relax.analysis.post_order_visit(shifted["main"], lambda e: ops.append(e) if isinstance(e, relax.Call) else None)
    convs = [e for e in ops if getattr(e.op, "name", "") == "relax.nn.conv2d"]
    pads = [float(e.attrs.pad_value) for e in ops if getattr(e.op, "name", "") == "relax.nn.pad"]
    if groups == 1 or pad == -128:
        assert [str(e.args[0].ty.dtype) for e in convs] == ["uint8"]
        assert pads == {None: [128.0] if conv_padding else [], -128: [], -5: [123.0]}[pad], pads
    else:
        assert [str(e.args[0].ty.dtype) for e in convs] == ["int8"] and not pads

    padded = np.pad(x.astype(np.int64), [(0, 0), (0, 0), (1, 1), (1, 1)],
                    constant_values=0 if pad is None else pad) if (pad is not None or conv_padding) else x
    want = np.zeros((1, w.shape[0], padded.shape[2] - 2, padded.shape[3] - 2), np.int64)
    for i in range(3):
        for j in range(3):
            win = padded[:, :, i:i + want.shape[2], j:j + want.shape[3]].astype(np.int64)
            if groups == 1:
                want += np.einsum("nchw,oc->nohw", win, w[:, :, i, j].astype(np.int64))
            else:  # depthwise: output channel c reads input channel c
                want += win * w[:, 0, i, j].astype(np.int64).reshape(1, -1, 1, 1)
    exe = tvm.compile(shifted, target="llvm")
    got = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, want)


def test_a_quantize_of_its_own_dequantize_is_the_integers():
    """quantize(dequantize(x, s, z), s, z) → x; with another scale it stays arithmetic."""
    from tvm import relax

    from edgec.targets.qdq_lower import elementwise_qdq

    def build(out_scale: float):
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType((4, 16), "int8"))
        with bb.function("main", [xv]):
            with bb.dataflow():
                f = bb.emit(relax.op.dequantize(xv, relax.const(np.float32(0.05)), relax.const(np.int8(-3))))
                q = bb.emit_output(relax.op.quantize(f, relax.const(np.float32(out_scale)),
                                                     relax.const(np.int8(-3)), out_dtype="int8"))
            bb.emit_func_output(q)
        return elementwise_qdq(bb.get()["main"])

    same = build(0.05)
    assert "round" not in same.script() and "divide" not in same.script(), same.script()
    assert "round" in build(0.1).script()
