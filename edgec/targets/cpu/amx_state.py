"""AMX tile state around a scheduled kernel's tile-intrinsic calls: configure once, keep C in its tile.

Why: the tile intrinsic (amx_intrin.py, ``amx``) only loads A and B and multiplies into tile 0; what a call
cannot hold across calls — the tile configuration and the accumulator — this pass places around the calls in
the scheduled function, where TIR's loops are known:

* ``ldtilecfg`` at the top of each parallel task that makes calls (one configuration per function: every call
  of a kernel uses one intrinsic), ``tilerelease`` at its end;
* C's ``tileloadd`` before, and ``tilestored`` after, the outermost loop around the calls that touches C
  only through them (a conv's loops over kernel taps): the tile accumulates over all taps and 64-deep steps and
  goes through memory once per tile instead of once per tap. Where no such loop exists (a matmul's single
  call per tile), around the call itself.

The schedule primitives cannot place statements, so the kernels' rules call :func:`hold_tiles` on the
tensorized function at their end (as prefetch.insert does).
"""

from __future__ import annotations

from typing import Any

from edgec.targets.cpu.amx_intrin import tile_config_words

_MULTIPLY = "llvm.x86.tdpbusd"


def hold_tiles(sch, rows: int, cols: int):
    """A new Schedule of ``sch``'s function with the tile state placed (see the module docstring); ``rows`` and
    ``cols`` those of the intrinsic the kernel was tensorized with."""
    from tvm import s_tir

    func = sch.mod["main"]
    return s_tir.Schedule(func.with_body(_tasks(func.body, rows, cols)))


def _statements(stmt):
    """``stmt`` and every statement under it, pre-order (the kinds a scheduled function has; TVM 0.27 exposes no
    TIR visitor to Python)."""
    from tvm import s_tir, tirx

    yield stmt
    if isinstance(stmt, tirx.SeqStmt):
        children = list(stmt.seq)
    elif isinstance(stmt, s_tir.SBlockRealize):
        children = [stmt.block]
    elif isinstance(stmt, s_tir.SBlock):
        children = [stmt.body] + ([stmt.init] if stmt.init is not None else [])
    elif isinstance(stmt, tirx.IfThenElse):
        children = [stmt.then_case] + ([stmt.else_case] if stmt.else_case is not None else [])
    elif hasattr(stmt, "body"):  # For, AttrStmt, LetStmt, DeclBuffer, ...
        children = [stmt.body]
    else:
        children = []
    for child in children:
        yield from _statements(child)


def _calls_multiply(stmt) -> bool:
    import tvm
    from tvm import tirx

    return any(isinstance(node, tirx.Evaluate) and isinstance(node.value, tvm.ir.Call)
               and node.value.op.name == "tirx.call_llvm_intrin" and _intrin_name(node.value) == _MULTIPLY
               for node in _statements(stmt))


def _intrin_name(call) -> str:
    """The LLVM intrinsic a ``call_llvm_intrin`` calls (its first argument: a name string or an id)."""
    import tvm

    first = call.args[0]
    if isinstance(first, tvm.ir.StringImm):
        return first.value
    return tvm.target.codegen.llvm_get_intrinsic_name(int(first))


def _tile_blocks(stmt) -> list:
    """The tensorized tile blocks (SBlockRealize) under ``stmt``: blocks whose own body multiplies tiles."""
    from tvm import s_tir

    return [node for node in _statements(stmt) if isinstance(node, s_tir.SBlockRealize)
            and len(node.block.match_buffers) == 3 and _calls_multiply(node.block.body)]


def _touches(stmt, buffer) -> bool:
    """Whether a block under ``stmt`` other than the tile blocks reads or writes ``buffer`` (a
    scheduled function's accesses are all in blocks, which declare them)."""
    from tvm import s_tir

    tiles = [realize.block for realize in _tile_blocks(stmt)]
    return any(isinstance(node, s_tir.SBlock) and not any(node.same_as(t) for t in tiles)
               and any(r.source.same_as(buffer) for r in (*node.reads, *node.writes))
               for node in _statements(stmt))


def _tile_io(realize, cols: int) -> tuple[Any, Any, Any]:
    """(C's buffer, its ``tileloadd``, its ``tilestored``) for the tile block ``realize``: the address of
    the tile's first C element in the enclosing loops' variables; rows ``cols`` int32 apart, which they are once
    TVM compacts the local accumulator to the tile (as it does: the rules write it back once per tile)."""
    import tvm
    from tvm import tirx

    block = realize.block
    region = block.match_buffers[2].source
    analyzer = tvm.sym.Analyzer()
    for iv, value in zip(block.iter_vars, realize.iter_values):
        analyzer.bind(iv.var, value)
    mins = [analyzer.simplify(r.min) for r in region.region]
    address = tirx.address_of(tirx.BufferLoad(region.source, mins))
    stride = tirx.const(cols * 4, "int64")
    load = tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.x86.tileloadd64", tirx.const(0, "int8"), address,
                                               stride))
    store = tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.x86.tilestored64", tirx.const(0, "int8"), address,
                                                stride))
    return region.source, load, store


def _config_block(rows: int, cols: int):
    from tvm import s_tir, tirx

    cfg = tirx.decl_buffer((8,), "uint64", name="amx_tile_config", scope="local")
    body = [tirx.BufferStore(cfg, tirx.const(word, "uint64"), [i])
            for i, word in enumerate(tile_config_words(rows, cols))]
    body.append(tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.x86.ldtilecfg", cfg.access_ptr("r"))))
    block = s_tir.SBlock([], [], [], "amx_tile_config", tirx.SeqStmt(body), alloc_buffers=[cfg])
    return s_tir.SBlockRealize([], True, block)


def _release():
    from tvm import tirx

    return tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.x86.tilerelease"))


def _tasks(stmt, rows: int, cols: int):
    """``stmt`` with each parallel loop that makes tile calls configured at its top and released at its end, and
    C held in its tile inside (:func:`_accumulate`)."""
    from tvm import tirx

    if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.PARALLEL:
        if not _tile_blocks(stmt.body):
            return stmt
        body = tirx.SeqStmt([_config_block(rows, cols), _accumulate(stmt.body, cols), _release()])
        return _with_body(stmt, body)
    return _map_children(stmt, lambda child: _tasks(child, rows, cols))


def _accumulate(stmt, cols: int):
    """``stmt`` with C loaded into its tile before, and stored after, the outermost loop (or tile block) that
    holds tile blocks and touches C only through them."""
    from tvm import s_tir, tirx

    blocks = _tile_blocks(stmt)
    if not blocks:
        return stmt
    buffer, load, store = _tile_io(blocks[0], cols)
    whole = isinstance(stmt, s_tir.SBlockRealize) and stmt.same_as(blocks[0]) or \
        (isinstance(stmt, tirx.For) and not _touches(stmt, buffer) and _invariant(load, stmt))
    if whole and all(_same(_tile_io(b, cols)[1], load) for b in blocks):
        return tirx.SeqStmt([load, stmt, store])
    return _map_children(stmt, lambda child: _accumulate(child, cols))


def _invariant(load, loop) -> bool:
    """Whether the address in ``load`` uses none of the loop variables of ``loop`` and the loops inside it."""
    from tvm import tirx
    from tvm.tirx.analysis import undefined_vars

    inner = [node.loop_var for node in _statements(loop) if isinstance(node, tirx.For)]
    return not any(v.same_as(i) for v in undefined_vars(load) for i in inner)


def _same(a, b) -> bool:
    import tvm_ffi

    return tvm_ffi.structural_equal(a, b)


def _with_body(loop, body):
    from tvm import tirx

    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations,
                    loop.step, loop.span)


def _map_children(stmt, fn):
    """``stmt`` with ``fn`` applied to its direct child statements (the statement kinds a scheduled function
    has around its loops; others are returned as they are)."""
    from tvm import s_tir, tirx

    if isinstance(stmt, tirx.For):
        return _with_body(stmt, fn(stmt.body))
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([fn(child) for child in stmt.seq], stmt.span)
    if isinstance(stmt, s_tir.SBlockRealize):
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, fn(stmt.block), stmt.span)
    if isinstance(stmt, s_tir.SBlock):
        return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, fn(stmt.body), stmt.init,
                            stmt.alloc_buffers, stmt.match_buffers, stmt.annotations, stmt.span)
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, fn(stmt.body), stmt.span)
    if isinstance(stmt, tirx.IfThenElse):
        other = fn(stmt.else_case) if stmt.else_case is not None else None
        return tirx.IfThenElse(stmt.condition, fn(stmt.then_case), other, stmt.span)
    return stmt
