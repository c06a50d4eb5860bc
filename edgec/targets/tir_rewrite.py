"""Rebuilding lowered TIR statements in Python (TVM 0.27 exposes no statement mutator to Python)."""

from __future__ import annotations

from typing import Any, Callable


def with_children(stmt: Any, visit: Callable[[Any], Any], loop_kind: Any = None) -> Any:
    """``stmt`` with ``visit`` applied to the statements it nests — a sequence's, a loop's, an attribute's body, an
    if's branches — rebuilt only where one of them changed (or, for a loop, where ``loop_kind`` is given and
    differs from its own). Other statements (stores, calls, allocations, while loops) come back as they are."""
    from tvm import tirx

    if isinstance(stmt, tirx.SeqStmt):
        seq = [visit(s) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) else tirx.SeqStmt(seq, stmt.span)
    if isinstance(stmt, tirx.For):
        body = visit(stmt.body)
        kind = stmt.kind if loop_kind is None else loop_kind
        if body.same_as(stmt.body) and kind == stmt.kind:
            return stmt
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, kind, body, stmt.thread_binding, stmt.annotations,
                        stmt.step, stmt.span)
    if isinstance(stmt, tirx.AttrStmt):
        body = visit(stmt.body)
        return stmt if body.same_as(stmt.body) else tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body,
                                                                  stmt.span)
    if isinstance(stmt, tirx.IfThenElse):
        then = visit(stmt.then_case)
        other = None if stmt.else_case is None else visit(stmt.else_case)
        if then.same_as(stmt.then_case) and (other is None or other.same_as(stmt.else_case)):
            return stmt
        return tirx.IfThenElse(stmt.condition, then, other, stmt.span)
    return stmt
