"""Software prefetch of the weights a CPU kernel reads next: the direct conv's next register tile, the panelled
matmul's next panel, Winograd's next batched-product task.

Why: inside a model a large conv's weights arrive cold. The conv keeps one tile of output-channel blocks' weights
in L1 and reuses it along every output row, so it reads each weight from memory once, in one short burst per tile:
three 12 KB streams for a 7×7 1×1 conv, too short for the hardware prefetcher to get ahead of. Timed inside
EfficientNet-Lite0 (the VM's instrument hook), the 192 → 1152 1×1 convs at 7×7 (885 KB of weights) ran 24 %
over their time alone with warm caches, and the model's kernels 18 % over theirs. Each reduction step now also
asks for the next tile's weights at the same input channel (into L2: the current tile keeps L1), so they are on
their way one tile ahead; with caches flushed before each call, that conv took 133 instead of 160 µs, warm 95
against 94 µs. Whole models (1 thread, interleaved with onnxruntime): EfficientNet-Lite0 0.85× → 0.80–0.82×,
MobileNetV2 0.81× → 0.78–0.79×, ResNet-18 unchanged (0.61×). Hints into L1 instead were 2 % slower (they evict
the tile in use); hints only above 1 MB of weights gained clearly less, and thresholds of 256 KB, 64 KB and 0 were
within the host's noise of each other (64 KB ahead in two of three runs).

TVM 0.27's LLVM code generator does not lower ``tirx.prefetch``, so the hint is LLVM's own ``llvm.prefetch``
intrinsic, which every LLVM CPU backend lowers (``prefetcht1`` on x86, ``prfm pldl2keep`` on AArch64). The schedule
primitives cannot place a statement, so the rule records where (:func:`plan_next_tile`) and :func:`insert` adds
the hints to the scheduled function at the end of the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgec.targets.cpu.options import CpuOptions

_LOCALITY_L2 = 2        # llvm.prefetch locality 2: prefetcht1, into L2


@dataclass
class Plan:
    """Hints to add at the top of ``loop_var``'s body: one prefetch per address."""

    loop_var: Any
    addresses: list


def wanted(kernel, options: CpuOptions) -> bool:
    """Whether a conv with these weights asks for them ahead: prefetching on, and at least
    CpuOptions.prefetch_min_bytes of them."""
    from edgec.targets.cpu.stack_alloc import buffer_bytes

    return options.prefetch and (buffer_bytes(kernel) or 0) >= options.prefetch_min_bytes


def plan_next_tile(sch, kernel, outer, occ_o, ic_o, kh, kw, ic_i, oc_tile: int, rows: int,
                   rows_outer: bool, options: CpuOptions) -> Plan | None:
    """Where the direct conv (kernels/direct.schedule_conv_tile's loops) asks for the next tile's weights, or None
    when prefetching is off (CpuOptions.prefetch), its weights (``kernel``, OIHW[i]i[o]o) are smaller than
    CpuOptions.prefetch_min_bytes or it has one tile. ``outer`` is the parallel loop fused
    from (n, oc tile, ``rows`` output rows), or from (n, row) when ``rows_outer``; the next tile's chunk index is
    clamped to the last chunk (the last tile asks for its own)."""
    from tvm import tirx

    chunks = int(kernel.shape[0])
    tiles = int(sch.get(occ_o).extent) if rows_outer else -(-chunks // oc_tile)
    if not wanted(kernel, options) or tiles < 2:
        return None

    def var(loop):
        return sch.get(loop).loop_var

    if rows_outer:
        tile = var(occ_o)
    else:  # outer = (n · tiles + tile) · rows + row
        tile = tirx.floormod(tirx.floordiv(var(outer), rows), tiles)
    addresses = []
    for t in range(oc_tile):
        chunk = tirx.min((tile + 1) * oc_tile + t, chunks - 1)
        index = [chunk, var(ic_o), var(kh), var(kw), var(ic_i), tirx.const(0, str(var(ic_i).ty))]
        addresses.append(tirx.address_of(tirx.BufferLoad(kernel, index)))
    return Plan(var(ic_i), addresses)


def plan_next_chunk(sch, kernel, outer, ic_oo, ic_oi, kh, kw, ic_i, oc_tile: int, k_chunk: int,
                    options: CpuOptions) -> Plan | None:
    """Where the direct conv that reduces over chunks of input channels (kernels/direct.k_split_tile) asks for
    the weights it reads next: the next chunk of its channel-block tile, after the last one the first chunk of
    the next tile (clamped at the last). ``outer`` is the parallel loop fused from (n, channel-block tile). Same
    conditions as :func:`plan_next_tile`."""
    from tvm import tirx

    if not wanted(kernel, options):
        return None
    chunks = int(kernel.shape[0])
    tiles = -(-chunks // oc_tile)

    def var(loop):
        return sch.get(loop).loop_var

    k_chunks = int(sch.get(ic_oo).extent)
    step = tirx.floormod(var(outer), tiles) * k_chunks + var(ic_oo) + 1  # the (tile, chunk) after this one
    tile, chunk = tirx.floordiv(step, k_chunks), tirx.floormod(step, k_chunks)
    addresses = []
    for t in range(oc_tile):
        block = tirx.min(tile * oc_tile + t, chunks - 1)
        index = [block, chunk * k_chunk + var(ic_oi), var(kh), var(kw), var(ic_i), tirx.const(0, str(var(ic_i).ty))]
        addresses.append(tirx.address_of(tirx.BufferLoad(kernel, index)))
    return Plan(var(ic_i), addresses)


def plan_next_panel(sch, weight, outer, k, tiles_per_panel: int, vectors: int, lanes: int,
                    options: CpuOptions) -> Plan | None:
    """Where a matmul over column panels of its weights (kernels/matmul.py: ``weight`` [panels, k, nt], the
    parallel loop ``outer`` fused from (panel, its ``tiles_per_panel`` tiles)) asks, at each step of ``k``, for
    the same row of the next panel (clamped at the last): one hint per cache line of the row's ``vectors`` vectors.
    None when prefetching is off or the weights are smaller than CpuOptions.prefetch_min_bytes. Why: inside a model
    a large classifier's panels come from L3 or memory, one short contiguous burst per panel (256 KB for
    ddddocr's 1024 × 8256 CTC head) that the hardware prefetchers do not run ahead of."""
    from tvm import tirx

    if not wanted(weight, options) or len(weight.shape) != 3:
        return None
    panels = int(weight.shape[0])
    if panels < 2:
        return None

    def var(loop):
        return sch.get(loop).loop_var

    panel = tirx.min(tirx.floordiv(var(outer), tiles_per_panel) + 1, panels - 1)
    zero = tirx.const(0, str(var(k).ty))
    addresses = [tirx.address_of(tirx.BufferLoad(weight, [panel, var(k), zero + v * lanes]))
                 for v in range(vectors)]
    return Plan(var(k), addresses)


def plan_next_task(sch, weight, outer, ic_o, ic_i, oc_tile: int, options: CpuOptions) -> Plan | None:
    """Where Winograd's batched product (kernels/winograd.py: ``weight`` U [alpha, alpha, oc chunks, in channels,
    oc_bn], the parallel loop ``outer`` fused from (ε, ν, tile of ``oc_tile`` chunks)) asks, at each input
    channel ``ic_o · block + ic_i``, for the next task's weights at that channel (clamped at the last task): one
    hint per chunk (a row of oc_bn floats, one cache line with AVX-512). None when prefetching is off or U is
    smaller than CpuOptions.prefetch_min_bytes. Why: on a small map each transformed weight serves few tiles
    (ResNet-18's 7×7 layers: 16), so the product streams U — 16.8 MB per 512-channel conv — and inside the model
    each task's short bursts came from memory at ~8 GB/s: the conv ran 2.05 ms against 1.07 alone; with the
    hints 1.70 ms (ResNet-18 0.72× → 0.65× onnxruntime)."""
    from tvm import tirx

    if not wanted(weight, options) or len(weight.shape) != 5:
        return None
    alpha, chunks = int(weight.shape[0]), int(weight.shape[2])
    tiles = -(-chunks // oc_tile)
    tasks = alpha * alpha * tiles
    if tasks < 2:
        return None
    var = sch.get(outer).loop_var
    task = tirx.min(var + 1, tasks - 1)
    e, n, tile = tirx.floordiv(task, alpha * tiles), tirx.floormod(tirx.floordiv(task, tiles), alpha), \
        tirx.floormod(task, tiles)
    inner = sch.get(ic_i)
    ic = sch.get(ic_o).loop_var * inner.extent + inner.loop_var
    zero = tirx.const(0, str(ic.ty))
    addresses = [tirx.address_of(tirx.BufferLoad(weight, [e, n, tirx.min(tile * oc_tile + t, chunks - 1), ic,
                                                          zero]))
                 for t in range(oc_tile)]
    return Plan(inner.loop_var, addresses)


def insert(sch, plan: Plan | None, options: CpuOptions):
    """``sch`` with the hints of ``plan`` added (a new Schedule of the rewritten function), or ``sch`` itself."""
    from tvm import s_tir, tirx

    if plan is None or not options.prefetch:
        return sch
    hints = [tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, tirx.const(0, "int32"),
                                                 tirx.const(_LOCALITY_L2, "int32"), tirx.const(1, "int32")))
             for address in plan.addresses]
    func = sch.mod["main"]
    body, found = _at_loop(func.body, plan.loop_var, hints)
    if not found:
        return sch
    return s_tir.Schedule(func.with_body(body))


def _at_loop(stmt, loop_var, hints: list) -> tuple[Any, bool]:
    """(``stmt`` with ``hints`` at the top of the body of the loop over ``loop_var``, whether it was found).
    Statement kinds a scheduled function has around its loops; others are left as they are."""
    from tvm import s_tir, tirx

    if isinstance(stmt, tirx.For):
        if stmt.loop_var.same_as(loop_var):
            body, found = tirx.SeqStmt([*hints, stmt.body]), True
        else:
            body, found = _at_loop(stmt.body, loop_var, hints)
        if not found:
            return stmt, False
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding,
                        stmt.annotations, stmt.step, stmt.span), True
    if isinstance(stmt, tirx.SeqStmt):
        seq, found = [], False
        for child in stmt.seq:
            if not found:
                child, found = _at_loop(child, loop_var, hints)
            seq.append(child)
        return (tirx.SeqStmt(seq, stmt.span), True) if found else (stmt, False)
    if isinstance(stmt, s_tir.SBlockRealize):
        block, found = _at_loop(stmt.block, loop_var, hints)
        return (s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, block, stmt.span), True) if found \
            else (stmt, False)
    if isinstance(stmt, s_tir.SBlock):
        body, found = _at_loop(stmt.body, loop_var, hints)
        if not found:
            return stmt, False
        return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, body, stmt.init,
                            stmt.alloc_buffers, stmt.match_buffers, stmt.annotations, stmt.span), True
    if isinstance(stmt, tirx.AttrStmt):
        body, found = _at_loop(stmt.body, loop_var, hints)
        return (tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body, stmt.span), True) if found \
            else (stmt, False)
    if isinstance(stmt, tirx.IfThenElse):
        then, found = _at_loop(stmt.then_case, loop_var, hints)
        if found:
            return tirx.IfThenElse(stmt.condition, then, stmt.else_case, stmt.span), True
        if stmt.else_case is not None:
            other, found = _at_loop(stmt.else_case, loop_var, hints)
            if found:
                return tirx.IfThenElse(stmt.condition, stmt.then_case, other, stmt.span), True
    return stmt, False
