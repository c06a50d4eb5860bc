"""Scratch buffers of parallel loop bodies on the stack, not in TVM's workspace pool.

Why: TVM's ``LowerTVMBuiltin`` turns every CPU allocation of 1 KiB or more into a ``TVMBackendAllocWorkspace`` /
``TVMBackendFreeWorkspace`` pair. edgec's schedules compute per output row inside the parallel loop (a register
tile, a padded input row, a depthwise row), so those buffers are allocated and freed once per row, and a 16-vector
register tile is exactly 1 KiB. Besides the calls, LLVM cannot see where workspace memory comes from, so it
keeps storing tiles it could have left in registers. The 16 → 8 channel row-vectorized conv of the pruned
embedded model took 17.1 µs with workspace buffers and 14.6 µs with stack buffers (same output); the whole
embedded model 99.7 → 92.6 µs, its 50 % pruned form 59.9 → 52.2 µs. MobileNetV2's first fused depthwise → 1×1
kernels keep more than 32 KiB of rows per body: 3–7 % faster with the 128 KiB budget than with 32 KiB.

The pass marks such allocations ``disable_lower_builtin`` (TVM's own annotation for "leave this one a stack
variable") while the buffers of one parallel body stay within ``STACK_BUDGET`` bytes; the rest, and everything
outside parallel loops (allocated once per call), keep TVM's workspace. It runs at the end of TVM's s_tir
lowering pipeline, registered as the TIR pipeline ``edgec_cpu`` that edgec's CPU builds and tuning builds use.
"""

from __future__ import annotations

from typing import Any

STACK_BUDGET = 128 * 1024  # bytes of stack per parallel body: far below a thread's stack (glibc 8 MiB, bionic 1 MiB)
PIPELINE = "edgec_cpu"
_ANNOTATION = "disable_lower_builtin"  # TVM's kDisableLowerTVMBuiltin


def buffer_bytes(buffer: Any) -> int | None:
    """Bytes of a TIR buffer of constant shape, None when a dimension is symbolic."""
    import tvm

    size = 1
    for dim in buffer.shape:
        if not isinstance(dim, tvm.tirx.IntImm):
            return None
        size *= int(dim)
    dtype = tvm.runtime.DataType(buffer.dtype)
    return size * dtype.bits * dtype.lanes // 8


def _rewrite(stmt: Any, budget: list[int] | None) -> Any:
    """``stmt`` with its parallel bodies' small allocations marked; ``budget`` is the bytes left in the innermost
    parallel body (None outside any). Statements this does not know are left as they are."""
    from tvm import tirx

    from edgec.targets.tir_rewrite import with_children

    if isinstance(stmt, tirx.AllocBuffer):
        nbytes = buffer_bytes(stmt.buffer)
        if budget is None or nbytes is None or nbytes > budget[0]:
            return stmt
        budget[0] -= nbytes
        annotations = dict(stmt.annotations) if stmt.annotations else {}
        annotations[_ANNOTATION] = tirx.IntImm("int32", 1)
        return tirx.AllocBuffer(stmt.buffer, annotations=annotations)
    if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.PARALLEL:
        inner = [STACK_BUDGET]
        return with_children(stmt, lambda s: _rewrite(s, inner))
    return with_children(stmt, lambda s: _rewrite(s, budget))


def stack_in_parallel_pass():
    """The PrimFunc pass (lowered TIR, before ``LowerTVMBuiltin``)."""
    import tvm

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="EdgecStackInParallel")
    def _pass(func, _mod, _ctx):
        body = _rewrite(func.body, None)
        return func if body.same_as(func.body) else func.with_body(body)

    return _pass


def _pipeline(bounds_check: bool = False):
    import tvm
    from tvm.s_tir.pipeline import default_s_tir_pipeline

    from edgec.targets.cpu.serial_small import serial_loops_pass

    lower, finalize_host, finalize_device = default_s_tir_pipeline()
    passes = [lower, stack_in_parallel_pass(), serial_loops_pass()]  # a serial body keeps its stack buffers
    if bounds_check:
        from edgec.targets.cpu.bounds_check import bounds_check_pass

        passes.append(bounds_check_pass())
    return tvm.transform.Sequential(passes), finalize_host, finalize_device


def register(bounds_check: bool = False) -> str:
    """Register (once per process) and name the TIR pipeline: TVM's s_tir lowering, this pass, then the small
    kernels' loops made serial (serial_small.py); with
    ``bounds_check``, then an assertion before every buffer access (bounds_check.py)."""
    import tvm

    name = PIPELINE + "_bounds_checked" if bounds_check else PIPELINE
    tvm.tirx.register_tir_pipeline(name, lambda: _pipeline(bounds_check))
    return name
