"""AMX tile state around a scheduled kernel's tile-intrinsic calls: configure once, keep C in its tile.

Why: the tile intrinsic (amx_intrin.py, ``amx``) only loads A and B and multiplies into tile 0; what a call
cannot hold across calls — the tile configuration and the accumulator — this pass places around the calls in
the scheduled function, where TIR's loops are known:

* ``ldtilecfg`` at the top of each parallel task that makes calls (one configuration per function: every call
  of a kernel uses one intrinsic), ``tilerelease`` at its end;
* C's ``tileloadd`` before, and ``tilestored`` after, the outermost loop around the calls that touches C
  only through them (a conv's loops over kernel taps): the tile accumulates over all taps and 64-deep steps and
  goes through memory once per tile instead of once per tap. Where no such loop exists (a matmul's single
  call per tile), around the call itself;
* with a :class:`TileGrid` of several accumulators (the conv: 2 pixel groups × 2 output-channel blocks), each
  call's tiles renumbered from the grid loops around it (unrolled, so the numbers are constants): C (o, t),
  A t, B o, and each A and B tile loaded only by the first call of the grid that uses it. Measured on a Xeon
  with AMX (bench/int8_amx.py): a 1×1 256 → 1024 conv at 14² 0.270 → 0.192 ms, 3×3 layers 0-4 % faster.

The schedule primitives cannot place statements, so the kernels' rules call :func:`hold_tiles` on the
tensorized function at their end (as prefetch.insert does).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from edgec.targets.cpu.amx_intrin import tile_config_words

_MULTIPLY = "llvm.x86.tdpbusd"
_LOAD, _STORE = "llvm.x86.tileloadd64", "llvm.x86.tilestored64"


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """The accumulators a kernel keeps: ``m_tiles`` groups of ``rows`` rows (A tiles) × ``n_tiles`` column blocks
    of ``cols`` (B tiles), the tile calls inside (unrolled) loops ``t_loop`` (over the A tiles) and ``o_loop``
    (over the B tiles), None where the kernel has no such loop (a loop of extent 1 may stand). Tile numbers: C (o, t) = o·m_tiles + t, then the A tiles,
    then the B tiles (amx_intrin.tile_config_words)."""

    rows: int
    cols: int
    m_tiles: int = 1
    n_tiles: int = 1
    t_loop: Any = None
    o_loop: Any = None

    @property
    def accumulators(self) -> int:
        return self.m_tiles * self.n_tiles

    def c_tile(self, o, t):
        return o * self.m_tiles + t

    def a_tile(self, t):
        return self.accumulators + t

    def b_tile(self, o):
        return self.accumulators + self.m_tiles + o


def hold_tiles(sch, grid: TileGrid):
    """A new Schedule of ``sch``'s function with the tile state placed (see the module docstring) for the
    intrinsic calls tensorized on ``grid``."""
    from tvm import s_tir

    func = sch.mod["main"]
    return s_tir.Schedule(func.with_body(_renumber(_tasks(func.body, grid), grid)))


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


def _tile_io(realize, grid: TileGrid) -> tuple[Any, list, list]:
    """(C's buffer, the ``tileloadd`` of each accumulator, their ``tilestored``) for the tile block ``realize``:
    the address of each tile's first C element in the enclosing loops' variables, the grid loops set to the
    tile's (o, t); rows ``cols`` int32 apart, which they are once TVM compacts the local accumulator to the
    kernel's tile (as it does: the rules write it back once per tile)."""
    import tvm
    from tvm import tirx

    block = realize.block
    region = block.match_buffers[2].source
    stride = tirx.const(grid.cols * 4, "int64")
    loads, stores = [], []
    for o, t in itertools.product(range(grid.n_tiles), range(grid.m_tiles)):
        analyzer = tvm.sym.Analyzer()
        for loop, value in ((grid.o_loop, o), (grid.t_loop, t)):
            if loop is not None:
                analyzer.bind(loop, tirx.const(value, str(loop.ty)))
        for iv, value in zip(block.iter_vars, realize.iter_values):
            analyzer.bind(iv.var, analyzer.simplify(value))
        mins = [analyzer.simplify(r.min) for r in region.region]
        address = tirx.address_of(tirx.BufferLoad(region.source, mins))
        tile = tirx.const(grid.c_tile(o, t), "int8")
        loads.append(tirx.Evaluate(tirx.call_llvm_intrin("void", _LOAD, tile, address, stride)))
        stores.append(tirx.Evaluate(tirx.call_llvm_intrin("void", _STORE, tile, address, stride)))
    return region.source, loads, stores


def _config_block(grid: TileGrid):
    from tvm import s_tir, tirx

    cfg = tirx.decl_buffer((8,), "uint64", name="amx_tile_config", scope="local")
    words = tile_config_words(grid.rows, grid.cols, grid.m_tiles, grid.n_tiles)
    body = [tirx.BufferStore(cfg, tirx.const(word, "uint64"), [i]) for i, word in enumerate(words)]
    body.append(tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.x86.ldtilecfg", cfg.access_ptr("r"))))
    block = s_tir.SBlock([], [], [], "amx_tile_config", tirx.SeqStmt(body), alloc_buffers=[cfg])
    return s_tir.SBlockRealize([], True, block)


def _release():
    from tvm import tirx

    return tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.x86.tilerelease"))


def _tasks(stmt, grid: TileGrid):
    """``stmt`` with each parallel loop that makes tile calls configured at its top and released at its end, and
    C held in its tiles inside (:func:`_accumulate`)."""
    from tvm import tirx

    if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.PARALLEL:
        if not _tile_blocks(stmt.body):
            return stmt
        body = tirx.SeqStmt([_config_block(grid), _accumulate(stmt.body, grid), _release()])
        return _with_body(stmt, body)
    return _map_children(stmt, lambda child: _tasks(child, grid))


def _accumulate(stmt, grid: TileGrid):
    """``stmt`` with C loaded into its tiles before, and stored after, the outermost loop (or tile block) that
    holds tile blocks and touches C only through them."""
    from tvm import s_tir, tirx

    blocks = _tile_blocks(stmt)
    if not blocks:
        return stmt
    buffer, loads, stores = _tile_io(blocks[0], grid)
    whole = isinstance(stmt, s_tir.SBlockRealize) and stmt.same_as(blocks[0]) or \
        (isinstance(stmt, tirx.For) and not _touches(stmt, buffer) and all(_invariant(x, stmt) for x in loads))
    if whole and all(_same(x, y) for b in blocks for x, y in zip(_tile_io(b, grid)[1], loads)):
        return tirx.SeqStmt([*loads, stmt, *stores])
    return _map_children(stmt, lambda child: _accumulate(child, grid))


def _renumber(stmt, grid: TileGrid):
    """``stmt`` with the tile calls in its tile blocks on the grid's tiles: the intrinsic's C 0, A 1, B 2 become
    C (o, t), A t, B o of the grid loops around the call — written in the block's own iter vars (a block may not
    read loop variables): the block var bound to ``q·count + loop`` gives ``loop`` as its remainder by
    ``count``; the loops are unrolled, so lowering folds the numbers to the constants LLVM needs."""
    from tvm import s_tir, tirx
    from tvm.tirx.analysis import undefined_vars

    if grid.accumulators == 1:
        return stmt

    def index(realize, loop, count: int):
        if loop is None or count == 1:
            return 0
        for iv, value in zip(realize.block.iter_vars, realize.iter_values):
            if any(v.same_as(loop) for v in undefined_vars(value)):
                return tirx.floormod(iv.var, count)
        raise ValueError("amx_state: no block iter var is bound to the tile grid's loop")

    def renumbered(realize):
        o, t = index(realize, grid.o_loop, grid.n_tiles), index(realize, grid.t_loop, grid.m_tiles)
        number = {0: grid.c_tile(o, t), 1: grid.a_tile(t), 2: grid.b_tile(o)}

        def tile(arg):
            return tirx.Cast("int8", number[int(arg.value)])

        def call(node):
            name = _intrin_name(node)
            args = list(node.args[1:])
            if name == _MULTIPLY:
                return tirx.Evaluate(tirx.call_llvm_intrin("void", name, *[tile(a) for a in args]))
            if name not in (_LOAD, _STORE):
                return tirx.Evaluate(node)
            which = int(args[0].value)
            args[0] = tile(args[0])
            load = tirx.Evaluate(tirx.call_llvm_intrin("void", name, *args))
            # A tile t is loaded by the first call of its column of the grid (o = 0), B tile o by the first of
            # its row (t = 0): 4 loads for 4 multiplies on the 2 × 2 grid instead of 8
            first = {1: o, 2: t}.get(which, 0)
            return load if isinstance(first, int) else tirx.IfThenElse(first == 0, load, None)

        return _map_calls(realize, call)

    def visit(node):
        if isinstance(node, s_tir.SBlockRealize) and len(node.block.match_buffers) == 3 \
                and _calls_multiply(node.block.body):
            return renumbered(node)
        return _map_children(node, visit)

    return visit(stmt)


def _map_calls(stmt, fn):
    """``stmt`` with each of its ``call_llvm_intrin`` statements replaced by ``fn(call)`` (a statement)."""
    import tvm
    from tvm import tirx

    if isinstance(stmt, tirx.Evaluate) and isinstance(stmt.value, tvm.ir.Call) \
            and stmt.value.op.name == "tirx.call_llvm_intrin":
        return fn(stmt.value)
    return _map_children(stmt, lambda child: _map_calls(child, fn))


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
