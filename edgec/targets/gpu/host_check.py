"""Run a hand-written CUDA PrimFunc's arithmetic on the CPU: every thread loop as a serial loop.

Why: there is no GPU where edgec's tests run, yet a GPU kernel's index maps and arithmetic are what can be wrong.
The kernels of this package use no shared memory and no barriers (each thread reads global memory and writes its
own outputs), so a block's threads run one after another compute exactly what they compute in parallel: the
PrimFunc with its ``blockIdx``/``threadIdx`` loops made serial, built for ``llvm``, is the same program. Tests
check the very PrimFuncs the CUDA build uses this way (tests/test_gpu_kernels.py); a kernel that starts to
share memory between threads needs another check.
"""

from __future__ import annotations

from typing import Any

__all__ = ["serial_threads"]


def _serial(stmt: Any) -> Any:
    """``stmt`` with each thread-binding loop a serial loop (the statements a hand-written kernel holds)."""
    from tvm import tirx

    if isinstance(stmt, tirx.For):
        body = _serial(stmt.body)
        kind = tirx.ForKind.SERIAL if stmt.kind == tirx.ForKind.THREAD_BINDING else stmt.kind
        if kind == stmt.kind and body.same_as(stmt.body):
            return stmt
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, kind, body, None, stmt.annotations, stmt.step,
                        stmt.span)
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([_serial(s) for s in stmt.seq], stmt.span)
    if isinstance(stmt, tirx.IfThenElse):
        return tirx.IfThenElse(stmt.condition, _serial(stmt.then_case),
                               None if stmt.else_case is None else _serial(stmt.else_case), stmt.span)
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, _serial(stmt.body), stmt.span)
    if isinstance(stmt, tirx.LetStmt):
        return tirx.LetStmt(stmt.var, stmt.value, _serial(stmt.body), stmt.span)
    return stmt


def serial_threads(func: Any) -> Any:
    """``func`` (a PrimFunc written with ``T.thread_binding`` loops) with those loops serial: a CPU program with
    the kernel's arithmetic and index maps, to be built for ``llvm`` and compared with a reference."""
    return func.with_body(_serial(func.body))
