"""Bounds-checked CPU builds: every buffer access of the lowered TIR asserts its index first (a debug mode).

Why edgec's own pass: TVM's ``tirx.instrument_bound_checkers`` config adds ``s_tir.InstrumentBoundCheckers`` to
the lowering, but that pass only checks buffers that carry a ``buffer_bound`` attribute, which only the old
StorageFlatten path wrote; after FlattenBuffer none has one, so the flag compiles and checks nothing (seen: a
depthwise kernel that read a row before its input ran without a word with the flag on). By its source it would
also check a vector access ``Ramp(base, 1, lanes)`` at ``base + lanes``, one past its last lane.

This pass runs last in edgec's TIR pipeline (see stack_alloc), on the code as it will execute: flattened,
vectorized, unrolled. Before each statement it asserts that every index the statement evaluates lies in its
buffer: a scalar index, or both ends of a vector ``Ramp``. A ``Select`` evaluates both operands, so the loads in
both are checked unconditionally; an ``if_then_else`` evaluates one, so the loads in each branch are checked under
its condition. An access fails with ``RuntimeError: edgec bounds check: <kernel> reads <buffer> out of bounds``.
Vector indices other than a ramp or a broadcast (gathers) are not checked. Parallel loops run serially: TVM runs
a parallel body as a closure and ignores its return code, so a failed assertion there only ended that task (its
output rows left unwritten, seen as NaNs) and the kernel reported success.
"""

from __future__ import annotations

from typing import Any

_MESSAGE = "edgec bounds check: {func} {access} {buffer} out of bounds"


def _in_bounds(index: Any, extent: Any) -> list:
    """Conditions for ``index`` (a scalar, a Ramp or a Broadcast) to lie in [0, extent); [] when not checkable."""
    from tvm import tirx

    if isinstance(index, tirx.Ramp):
        lanes = index.lanes
        if not isinstance(lanes, (int, tirx.IntImm)):
            return []  # scalable vectors
        ends = [index.base, index.base + index.stride * (int(lanes) - 1)]
    elif isinstance(index, tirx.Broadcast):
        ends = [index.value]
    elif index.ty.dtype.lanes == 1:
        ends = [index]
    else:
        return []
    dtype = str(ends[0].ty.dtype)
    extent = extent if str(extent.ty.dtype) == dtype else tirx.Cast(dtype, extent)
    return [tirx.all(end >= 0, end < extent) for end in ends]


def _access(source: Any, indices: Any) -> Any | None:
    """The in-bounds condition of one access of buffer ``source``, None when nothing is checkable."""
    from tvm import tirx

    shape = list(source.ty.shape)
    if len(shape) != len(indices):
        return None
    conds = [c for index, extent in zip(indices, shape) for c in _in_bounds(index, extent)]
    return tirx.all(*conds) if conds else None


def _collect(expr: Any, out: list) -> None:
    """Append (condition, buffer name, "reads") for every load ``expr`` evaluates, in evaluation order."""
    import tvm
    from tvm import tirx
    from tvm_ffi.container import Array

    if isinstance(expr, tvm.ir.expr.TensorLoad):
        for index in expr.indices:
            _collect(index, out)
        cond = _access(expr.source, expr.indices)
        if cond is not None:
            out.append((cond, expr.source.name, "reads"))
        return
    if isinstance(expr, tvm.ir.expr.Call) and expr.op.same_as(tvm.ir.Op.get("prim.if_then_else")):
        guard, then, other = expr.args
        _collect(guard, out)
        for branch, taken in ((then, guard), (other, tirx.Not(guard))):
            inner: list = []
            _collect(branch, inner)
            out.extend((tirx.Or(tirx.Not(taken), cond), name, kind) for cond, name, kind in inner)
        return
    if isinstance(expr, tirx.Let):
        _collect(expr.value, out)
        inner = []
        _collect(expr.body, inner)
        out.extend((tirx.Let(expr.var, expr.value, cond), name, kind) for cond, name, kind in inner)
        return
    info = type(expr).__tvm_ffi_type_info__
    for field in info.fields:  # the node's own operands (Add.a/b, Select.*, Call.args, Ramp.base...)
        value = getattr(expr, field.name)
        for child in (value if isinstance(value, (list, tuple, Array)) else [value]):
            if isinstance(child, tvm.ir.expr.Expr) and not isinstance(child, (tvm.ir.Op, tirx.Var)):
                _collect(child, out)


def _checked(stmt: Any, func: str) -> Any:
    """``stmt`` with an assertion before each statement that accesses a buffer."""
    import tvm
    from tvm import tirx

    def recurse(s):
        return _checked(s, func)

    accesses: list = []
    if isinstance(stmt, tirx.SeqStmt):
        seq = [recurse(s) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) else tirx.SeqStmt(seq, stmt.span)
    if isinstance(stmt, tirx.For):
        _collect(stmt.min, accesses)
        _collect(stmt.extent, accesses)
        # serial: a failed assertion in a parallel body would not fail the kernel (see the module docstring)
        kind = tirx.ForKind.SERIAL if stmt.kind == tirx.ForKind.PARALLEL else stmt.kind
        stmt = tirx.For(stmt.loop_var, stmt.min, stmt.extent, kind, recurse(stmt.body), stmt.thread_binding,
                        stmt.annotations, stmt.step, stmt.span)
    elif isinstance(stmt, tirx.While):
        body = recurse(stmt.body)  # (a load in its condition is evaluated on each iteration: not checked)
        stmt = tirx.While(stmt.condition, body, stmt.span)
    elif isinstance(stmt, tirx.AttrStmt):
        stmt = tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, recurse(stmt.body), stmt.span)
    elif isinstance(stmt, tirx.IfThenElse):
        _collect(stmt.condition, accesses)
        stmt = tirx.IfThenElse(stmt.condition, recurse(stmt.then_case),
                               None if stmt.else_case is None else recurse(stmt.else_case), stmt.span)
    elif isinstance(stmt, tirx.BufferStore):
        for index in stmt.indices:
            _collect(index, accesses)
        _collect(stmt.value, accesses)
        cond = _access(stmt.buffer, stmt.indices)
        if cond is not None:
            accesses.append((cond, stmt.buffer.name, "writes"))
    elif isinstance(stmt, (tirx.Evaluate, tirx.Bind)):
        _collect(stmt.value, accesses)
    if not accesses:
        return stmt
    # (tirx.AssertStmt's Python constructor passes (kind, condition) to an FFI constructor that takes
    # (condition, kind) in TVM 0.27: call the constructor itself)
    asserts = [tirx._ffi_api.AssertStmt(cond, tvm.ir.expr.StringImm("RuntimeError"),
                                        [tvm.ir.expr.StringImm(_MESSAGE.format(func=func, access=kind, buffer=name))],
                                        None)
               for cond, name, kind in accesses]
    return tirx.SeqStmt([*asserts, stmt])


def bounds_check_pass():
    """The PrimFunc pass (lowered TIR, after edgec's stack allocation; see stack_alloc)."""
    import tvm

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="EdgecBoundsCheck")
    def _pass(func, _mod, _ctx):
        symbol = func.attrs.get("global_symbol") if func.attrs else None
        name = str(symbol).removeprefix("__tvm_ffi_") if symbol else "a kernel"
        body = _checked(func.body, name)
        return func if body.same_as(func.body) else func.with_body(body)

    return _pass
