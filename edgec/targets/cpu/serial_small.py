"""Kernels too small to share: their parallel loops run serially.

Why: a parallel loop is one ``TVMBackendParallelLaunch`` — with one thread about 15 ns, with more threads a wake-up
and a join of the pool. On an Intel Xeon (2 cores) a 64-float add took 7.7 ns serial, 23 ns in a parallel loop at
1 thread and 847 ns at 2 threads; a model of small kernels paid that per kernel and ran slower on 2 threads than on
1 (openWakeWord's MLP 19.5 → 25.8 µs, MTCNN R-Net 27 → 38 µs, its LSTM head 126 → 195 µs, the MNIST BNN 23 → 36
µs; onnxruntime, which sizes its thread split by each op's cost, did not slow down). So, as MLAS gives a thread
only a minimum amount of work, a kernel whose estimated 1-thread time is under ``CpuOptions.parallel_min_ns`` keeps
its loops serial: at any thread count it costs what it costs on one.

The estimate is deliberately coarse — the (vector) statements the kernel executes at :data:`NS_PER_STATEMENT`
plus the bytes of its parameters at :data:`NS_PER_BYTE` — since only its order of magnitude against a launch
matters (TVM's ``estimate_tir_flops`` counts no integer work: a binary conv's popcounts were missing). Two
passes: :func:`mark_small_pass` (Relax module, after scheduling: the option is known there) tags each small PrimFunc
with :data:`ATTR`; :func:`serial_loops_pass` (in edgec's TIR pipeline, stack_alloc.register) turns the tagged
functions' parallel loops serial once they are plain loops.
"""

from __future__ import annotations

from typing import Any

ATTR = "edgec.serial"
NS_PER_STATEMENT = 0.1  # a vector statement (a store of a vector expression) executed, order of magnitude
NS_PER_BYTE = 0.015  # a parameter's byte, read or written (in cache; ~65 GB/s)


def statements(stmt: Any, analyzer: Any, times: int = 1) -> float:
    """How many (vector) statements ``stmt`` — scheduled TIR, blocks or not — executes: each store or call times
    the extents of its loops, a vectorized loop counting once, an extent by its upper bound, an if-else by
    its cheaper side (a whole-vector path and its scalar tail: the tail's extent is bounded by the whole row).
    ``inf`` where an extent has none (a symbolic shape) or a loop runs while a condition holds."""
    import tvm
    from tvm import s_tir, tirx

    if isinstance(stmt, tirx.SeqStmt):
        return sum(statements(s, analyzer, times) for s in stmt.seq)
    if isinstance(stmt, tirx.For):
        bound = analyzer.const_int_bound(stmt.extent)
        if bound.max_value >= bound.POS_INF or bound.max_value > 1 << 40:
            return float("inf")
        extent = max(int(bound.max_value), 0)
        analyzer.bind(stmt.loop_var, tvm.ir.Range.from_min_extent(stmt.min, max(extent, 1)))
        return statements(stmt.body, analyzer, times * (1 if stmt.kind == tirx.ForKind.VECTORIZED else extent))
    if isinstance(stmt, s_tir.SBlockRealize):
        return statements(stmt.block, analyzer, times)
    if isinstance(stmt, s_tir.SBlock):
        init = 0 if stmt.init is None else statements(stmt.init, analyzer, times)
        return init + statements(stmt.body, analyzer, times)
    if isinstance(stmt, tirx.AttrStmt):
        return statements(stmt.body, analyzer, times)
    if isinstance(stmt, tirx.IfThenElse):
        then = statements(stmt.then_case, analyzer, times)
        if stmt.else_case is None:
            return then
        return min(then, statements(stmt.else_case, analyzer, times))
    if isinstance(stmt, tirx.While):
        return float("inf")
    if isinstance(stmt, (tirx.BufferStore, tirx.Evaluate)):
        return times
    return 0


def estimated_ns(func: Any) -> float:
    """The coarse 1-thread time of a scheduled PrimFunc (module docstring); ``inf`` where it cannot be bounded
    (left parallel)."""
    import tvm

    from edgec.targets.cpu.stack_alloc import buffer_bytes

    sizes = [buffer_bytes(p) for p in func.params if isinstance(p, tvm.tirx.Buffer)]
    if any(s is None for s in sizes):
        return float("inf")
    return statements(func.body, tvm.sym.Analyzer()) * NS_PER_STATEMENT + sum(sizes) * NS_PER_BYTE


def mark_small_pass(min_ns: int):
    """Relax module pass: every PrimFunc whose :func:`estimated_ns` is under ``min_ns`` gets ``ATTR`` (0: none)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="EdgecMarkSmallKernels")
    def _pass(mod: Any, _ctx: Any) -> Any:
        if min_ns <= 0:
            return mod
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, tvm.tirx.PrimFunc) and estimated_ns(func) < min_ns:
                updates[gv] = func.with_attr(ATTR, tvm.tirx.IntImm("int32", 1))
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def _serial(stmt: Any) -> Any:
    """``stmt`` (lowered TIR: no blocks) with every parallel loop serial."""
    from tvm import tirx

    from edgec.targets.tir_rewrite import with_children

    if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.PARALLEL:
        return with_children(stmt, _serial, loop_kind=tirx.ForKind.SERIAL)
    return with_children(stmt, _serial)


def serial_loops_pass():
    """PrimFunc pass (lowered TIR): the parallel loops of functions tagged ``ATTR`` become serial."""
    import tvm

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="EdgecSerialSmallKernels")
    def _pass(func, _mod, _ctx):
        if func.attrs is None or ATTR not in func.attrs:
            return func
        body = _serial(func.body)
        return func if body.same_as(func.body) else func.with_body(body)

    return _pass
