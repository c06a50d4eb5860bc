"""Matmuls with a constant weight whose columns the register tile cannot take whole (a CTC head's 8210 classes)
and large weights read in panels (kernels/matmul.pad_columns_pass): outputs equal onnxruntime's on a pinned
AVX-512 and an AVX2 preset, and the weight is stored as the pass says."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import matmul_model, runnable_preset

CASES = [("2-D, 8210 columns, packed", (38, 64), 64, 8210),
         ("3-D input, rows padded", (1, 38, 64), 64, 8210),
         ("90 columns, padded only", (4, 48), 48, 90)]


def _relax_weight_shapes(model: onnx.ModelProto, target: str) -> list[tuple[int, ...]]:
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.matmul import pad_columns_pass
    from edgec.targets.lower import to_relax

    mod = pad_columns_pass(isa_of(resolve_target(target).tvm_target()))(to_relax(model))
    shapes = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == "relax.matmul":
            shapes.append(tuple(int(d) for d in expr.args[1].ty.shape))

    relax.analysis.post_order_visit(mod["main"], visit)
    return shapes


@pytest.mark.parametrize("target,lanes", [("x86:avx512", 16), ("x86:avx2", 8)])
def test_weight_layout(target, lanes):
    panel = 4 * lanes
    assert _relax_weight_shapes(matmul_model((38, 64), 64, 8210), target) == [(-(-8210 // panel), 64, panel)]
    assert _relax_weight_shapes(matmul_model((4, 48), 48, 90), target) == [(48, 96)]  # 90 → 96: whole vectors
    assert _relax_weight_shapes(matmul_model((4, 48), 48, 96), target) == [(48, 96)]  # already whole: untouched


@pytest.mark.parametrize("target", ["x86:avx512", "x86:avx2"])
@pytest.mark.parametrize("name,a_shape,k,n", CASES, ids=[c[0] for c in CASES])
def test_matches_onnxruntime(tmp_path, target, name, a_shape, k, n):
    from edgec.toolchain.api import compile as do_compile

    path = tmp_path / "m.onnx"
    onnx.save(matmul_model(a_shape, k, n), path)
    result = do_compile(path, target=runnable_preset(target), output=tmp_path / "out", verify=True)
    assert result.verification.passed, (name, result.verification.summary())
    assert result.verification.max_abs_diff < 1e-3 * max(1.0, float(np.sqrt(k)))


@pytest.mark.parametrize("target", ["x86:avx512", "x86:avx2"])
def test_panels_ask_for_the_next_panel(target):
    """A matmul over weight panels (≥ CpuOptions.prefetch_min_bytes) asks, per k step, for the next panel's row:
    one hint per vector of the panel width, at panel index min(p + 1, last); none with prefetch off or for small
    weights (the outputs are checked by test_matches_onnxruntime)."""
    from tvm import tirx

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.lower import to_relax

    preset = resolve_target(target)

    def hints(model, options):
        mod, _ = staged_module(to_relax(model), preset, options)
        return sum(f.script().count("llvm.prefetch") for gv, f in mod.functions.items()
                   if isinstance(f, tirx.PrimFunc) and "matmul" in gv.name_hint)

    # 21 rows (a CTC head's time steps) against 64 × 8256 floats in 4-vector panels (2.1 MB): panels outermost
    big = matmul_model((21, 64), 64, 8210)
    assert hints(big, CpuOptions()) == 4  # one per vector of a panel row
    assert hints(big, CpuOptions(prefetch=False)) == 0
    assert hints(matmul_model((4, 48), 48, 90), CpuOptions()) == 0  # 48 × 96: no panels
