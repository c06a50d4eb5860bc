"""Elementwise, layout-transform and pooling functions: parallel outer loops, the window reduction next, the
innermost (contiguous) loop vectorized."""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.isa import isa_of


def _reduces_outside_innermost(block_stmt) -> bool:
    """Whether every input of the block is indexed along its innermost (contiguous) axis by the block's last
    spatial iterator alone: then a window reduction of any size is whole-vector adds along that axis (global
    average pooling in NCHW[x]c reduces H×W and keeps the channel block innermost), one accumulator per vector.
    (Loops and iterators are still in the same order here: the rule checks it before touching the loops.)"""
    spatial = [iv.var for iv in block_stmt.iter_vars if iv.iter_type == 0]
    return bool(spatial and block_stmt.reads) and all(
        region.region[-1].min.same_as(spatial[-1]) for region in block_stmt.reads)


def _reduces_innermost(block_stmt) -> bool:
    """Whether the block is spatial iterators then reduction iterators, and every input is indexed along its
    innermost (contiguous) axis by the last reduction iterator: a global average pool or a row sum in NCHW, which
    reduces along the contiguous axis."""
    kinds = [iv.iter_type for iv in block_stmt.iter_vars]
    reduce = [iv.var for iv in block_stmt.iter_vars if iv.iter_type == 2]
    first_r = kinds.index(2) if 2 in kinds else len(kinds)
    return bool(reduce and block_stmt.reads) and all(k == 2 for k in kinds[first_r:]) and all(
        region.region[-1].min.same_as(reduce[-1]) for region in block_stmt.reads)


def loop_kinds(sch: s_tir.Schedule, block) -> tuple[list, list, int] | None:
    """(spatial loops, reduction loops, the reduced length) of a block whose loops are its iterators, each
    spatial or a reduction; None for any other block."""
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    if len(kinds) != len(loops) or any(k not in (0, 2) for k in kinds) or not loops:
        return None
    reduce = [lp for lp, k in zip(loops, kinds) if k == 2]
    length = 1
    for lp in reduce:
        length *= sched.extent(sch, lp)
    return [lp for lp, k in zip(loops, kinds) if k == 0], reduce, length


def row_reduction(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """A reduction along the contiguous axis (:func:`_reduces_innermost`) as ``lanes`` (or fewer, a power of two
    dividing the reduced length) partial sums in one vector register (rfactor), added up at the end; outer
    spatial loops in parallel. Why: unscheduled, the global average pool of a BNN's NCHW output (32 × 14 × 14) was
    one scalar add chain per channel, 4.1 µs; rfactored it is 0.5 µs. False where no factor of 2 or more divides
    the reduced length (the block is left as it was)."""
    split = loop_kinds(sch, block)
    if split is None:
        return False
    spatial, reduce, length = split
    factor = lanes
    while factor > 1 and length % factor:
        factor //= 2
    if factor < 2:
        return False
    fused = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
    outer, inner = sch.split(fused, [None, factor])
    partial = sch.rfactor(inner, len(spatial))
    rf_loops = sch.get_loops(partial)
    outer_spatial = [lp for lp in rf_loops[:len(spatial)] if sched.extent(sch, lp) > 1]
    if outer_spatial:  # before decompose_reduction: the update alone is no reduction block
        sch.parallel(sch.fuse(*outer_spatial) if len(outer_spatial) > 1 else outer_spatial[0])
    rf_loops = sch.get_loops(partial)
    sch.vectorize(rf_loops[-1])
    sch.decompose_reduction(partial, rf_loops[-2])
    return True


def serial_row(sch: s_tir.Schedule, spatial: list, lanes: int, min_tasks: int = 16) -> tuple[list, list]:
    """(loops to run in parallel, loops kept serial inside each task) of the spatial loops but the innermost
    (vectorized) one. Where that innermost loop is one short vector (a channel block, NCHW8c) the next loop stays
    serial inside the task when enough tasks remain, unrolled by up to 4 by the caller (without a reduction):
    the NCHW8c → NCHW copy of a 16 × 28 × 28 map, a vector of loads and 8 scattered stores per position, took
    4.2 µs as one task per vector (3.1 µs not vectorized at all) and 1.4 µs with the row serial and unrolled."""
    outer = spatial[:-1]
    if len(outer) < 2 or sched.extent(sch, spatial[-1]) > 2 * lanes:
        return outer, []
    tasks = 1
    for lp in outer[:-1]:
        tasks *= sched.extent(sch, lp)
    return (outer[:-1], outer[-1:]) if tasks >= min_tasks else (outer, [])


class SpatialWindow(sched.KernelRule):
    """Elementwise / layout-transform / pooling functions: elementwise producers inlined, then the outer spatial
    loops in parallel, the window reduction (pooling, if any) next, the innermost spatial loop vectorized — in
    NCHW[x]c that is the channel block, so a pooling window is a sequence of whole-vector max/add."""

    max_window = 64

    def schedule(self, sch: s_tir.Schedule, target: Target):
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        for block in blocks[:-1]:  # producers: inline into their consumers where possible
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001  (not inlinable: keep it as its own stage)
                pass
        blocks = sch.get_child_blocks(root)
        lanes = isa_of(target).lanes
        for block in blocks:
            split = loop_kinds(sch, block)
            if split is None:
                return None
            spatial, reduce, window = split
            if (spatial and window > self.max_window and len(blocks) <= 2 and _reduces_innermost(sch.get(block))
                    and row_reduction(sch, block, lanes)):
                continue  # a mean or sum along the contiguous axis, alone or with its divide
            if not spatial or (window > self.max_window and not _reduces_outside_innermost(sch.get(block))):
                return None  # a reduction along the contiguous axis with more around it (softmax): not this rule's job
            outer, serial = serial_row(sch, spatial, lanes)
            sch.reorder(*outer, *serial, *reduce, spatial[-1])
            if outer:
                sch.parallel(sch.fuse(*outer))
            if serial and not reduce:
                step = next((u for u in (4, 2) if sched.extent(sch, serial[0]) % u == 0), 1)
                if step > 1:
                    sch.unroll(sch.split(serial[0], [None, step])[1])
            # before decompose_reduction: the update alone is no reduction block
            sched.vectorize_innermost(sch, spatial[-1], lanes, max_whole=4 * lanes)
            if reduce:
                sch.decompose_reduction(block, reduce[0])
        return sch
