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
            kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
            loops = sch.get_loops(block)
            if len(kinds) != len(loops) or any(k not in (0, 2) for k in kinds) or not loops:
                return None
            spatial = [lp for lp, k in zip(loops, kinds) if k == 0]
            reduce = [lp for lp, k in zip(loops, kinds) if k == 2]
            window = 1
            for lp in reduce:
                window *= sched.extent(sch, lp)
            if not spatial or (window > self.max_window and not _reduces_outside_innermost(sch.get(block))):
                return None  # a reduction along the contiguous axis (softmax, a row mean): not this rule's job
            sch.reorder(*spatial[:-1], *reduce, spatial[-1])
            if len(spatial) > 1:
                sch.parallel(sch.fuse(*spatial[:-1]))
            # before decompose_reduction: the update alone is no reduction block
            sched.vectorize_innermost(sch, spatial[-1], lanes, max_whole=4 * lanes)
            if reduce:
                sch.decompose_reduction(block, reduce[0])
        return sch
