"""Kernels too small to share run their parallel loops serially (edgec/targets/cpu/serial_small.py).

A parallel launch costs ~1 µs on 2+ threads; a model of small kernels ran slower on 2 threads than on 1. These
check the estimate on hand-written loop nests, which kernels of a real build get marked (a small one yes, a large
one no, none with the option off), that the marked kernel's code has no parallel launch while the large one's
has, and that a build with every kernel serial computes what onnxruntime does.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.toolchain.api import onnxruntime_outputs, random_inputs
from helpers import conv_model, runnable_preset, staged

TARGET = "x86:avx512"  # the kernels' schedules (and so their estimates) are this preset's, whatever the host


def _loops(extent_inner, vectorized: bool, guarded_tail: bool):
    """A 28-row loop nest over ``extent_inner`` columns, vectorized or not; with ``guarded_tail`` the row is a
    whole-vector branch and a scalar-tail branch."""
    from tvm.script import tirx as T

    # buffer types as names, one object each: pyflakes would read the string dtype
    a_type, b_type = T.Buffer((28, 32), "float32"), T.Buffer((28, 32), "float32")
    if guarded_tail:
        @T.prim_func
        def func(a: a_type, b: b_type):
            for y in T.parallel(28):
                for t in range(2):
                    if t * 16 + 16 <= 28:
                        for x in T.vectorized(16):
                            b[y, t * 16 + x] = a[y, t * 16 + x]
                    else:
                        for x in range(28 - t * 16):
                            b[y, t * 16 + x] = a[y, t * 16 + x]
        return func

    @T.prim_func
    def func2(a: a_type, b: b_type):
        for y in T.parallel(28):
            if vectorized:
                for x in T.vectorized(extent_inner):
                    b[y, x] = a[y, x]
            else:
                for x in range(extent_inner):
                    b[y, x] = a[y, x]
    return func2


def test_statement_count_of_loop_nests():
    """A store in 28 rows × 32 columns executes 896 times, 28 vectorized; of a vector path and its scalar tail
    the cheaper side counts (2 row tiles: 2 × 28 here, not 28 + 12 scalars × 28)."""
    import tvm

    from edgec.targets.cpu.serial_small import estimated_ns, statements

    assert statements(_loops(32, False, False).body, tvm.sym.Analyzer()) == 28 * 32
    assert statements(_loops(32, True, False).body, tvm.sym.Analyzer()) == 28
    assert statements(_loops(0, False, True).body, tvm.sym.Analyzer()) == 28 * 2
    ns = estimated_ns(_loops(32, True, False))
    assert 0 < ns < 1000  # 28 stores and 7 KiB of parameters: well under a parallel launch's worth of work


def _two_kernel_model():
    """A small Add (16 × 14 × 14 floats, ~0.6 µs: TVM's rule parallelizes its rows) and a large 3×3 conv (64 → 64 channels at 56×56, 115 M MACs)."""
    conv = conv_model(1, 64, 64, 56, 3, act="relu")
    graph = conv.graph
    graph.input.append(helper.make_tensor_value_info("small_in", TensorProto.FLOAT, [1, 16, 14, 14]))
    graph.initializer.append(numpy_helper.from_array(np.arange(3136, dtype=np.float32).reshape(1, 16, 14, 14), "small_c"))
    graph.node.append(helper.make_node("Add", ["small_in", "small_c"], ["small_out"]))
    graph.output.append(helper.make_tensor_value_info("small_out", TensorProto.FLOAT, [1, 16, 14, 14]))
    return conv


def _scheduled(path, options):
    return staged(path, TARGET, options)[0]


@pytest.fixture(scope="module")
def two_kernels(tmp_path_factory):
    path = tmp_path_factory.mktemp("serial") / "two.onnx"
    onnx.save(_two_kernel_model(), str(path))
    return path


def test_small_kernel_serial_large_parallel(two_kernels):
    """The Add is marked and its code has no ``TVMBackendParallelLaunch``; the conv is not marked and has one;
    ``parallel_min_ns=0`` marks nothing, and there the Add's code launches its loop in parallel."""
    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.cpu import stack_alloc
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.cpu.serial_small import ATTR

    mod = _scheduled(two_kernels, CpuOptions())
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    marked = {name for name, f in funcs.items() if f.attrs is not None and ATTR in f.attrs}
    add = next(name for name in funcs if "add" in name and "conv" not in name)
    conv = next(name for name in funcs if "conv" in name)
    assert add in marked and conv not in marked, marked

    target = resolve_target(TARGET).tvm_target()

    def launches(func, name: str) -> bool:
        lib = tvm.tirx.build(func.with_attr("global_symbol", name), target=target, pipeline=stack_alloc.register())
        return "TVMBackendParallelLaunch" in (lib.mod if hasattr(lib, "mod") else lib).inspect_source("ll")

    assert not launches(funcs[add], add)
    assert launches(funcs[conv], conv)

    off = _scheduled(two_kernels, CpuOptions(parallel_min_ns=0))
    off_funcs = {gv.name_hint: f for gv, f in off.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert not any(f.attrs is not None and ATTR in f.attrs for f in off_funcs.values())
    assert launches(off_funcs[add], add)


def test_every_kernel_serial_equals_onnxruntime(two_kernels, tmp_path):
    """With a threshold no kernel reaches, every loop is serial: both outputs still equal onnxruntime's."""
    from edgec.targets.cpu.options import CpuOptions

    result = edgec.compile(two_kernels, target=runnable_preset(TARGET), output=tmp_path / "art",
                           cpu_options=CpuOptions(parallel_min_ns=10**15))
    assert result.verification.passed
    feed = random_inputs(result.artifact.inputs, seed=5)
    got = list(edgec.run(tmp_path / "art", feed).outputs.values())
    for g, r in zip(got, onnxruntime_outputs(two_kernels, feed)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * max(1.0, float(np.max(np.abs(r)))))
