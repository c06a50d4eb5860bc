"""The direct conv in NCHW[x]c (TOPI's conv2d_NCHWc compute): the default for every blocked float conv that no
more specific kernel takes.

A register tile of ``oc_tile`` channel blocks × ``reg_n`` output columns is accumulated in vector registers across
the whole reduction; weights are read as whole vectors, one input value is broadcast per FMA row, and the epilogue
(bias, ReLU, residual add) is applied as the tile is written back, so the output is written once.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import prefetch, sched
from edgec.targets.cpu.isa import isa_of
from edgec.targets.cpu.blocked import is_blocked
from edgec.targets.cpu.options import CpuOptions
from edgec.targets.cpu.stack_alloc import buffer_bytes


def legalize(bb, call, isa, options: CpuOptions):
    """Any blocked ungrouped conv: TOPI's conv2d_NCHWc (the table's last conv kernel)."""
    from tvm import topi

    attrs = call.attrs
    if not is_blocked(attrs) or int(attrs.groups) != 1:
        return None
    return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], list(attrs.strides),
                      list(attrs.padding), list(attrs.dilation), attrs.data_layout, attrs.out_layout,
                      str(attrs.out_dtype or call.args[0].ty.dtype), primfunc_name_hint="conv2d_NCHWc")


class Conv2dNCHWc(sched.KernelRule):
    """conv2d in NCHW[x]c layout with its fused elementwise epilogue.

    ``reg_n`` / ``oc_tile`` override the register tile the rule derives from the target (the tile search)."""

    def __init__(self, options: CpuOptions, reg_n: int | None = None, oc_tile: int | None = None) -> None:
        super().__init__(options)
        self.reg_n, self.oc_tile = reg_n, oc_tile

    def schedule(self, sch: s_tir.Schedule, target: Target):
        conv = sched.find_block(sch, "conv2d_NCHWc")
        if conv is None or len(sch.get_loops(conv)) != 8:
            return None
        _, plan = schedule_conv_tile(sch, conv, target, self.options, self.reg_n, self.oc_tile)
        return prefetch.insert(sch, plan, self.options)


def schedule_conv_tile(sch: s_tir.Schedule, conv, target: Target, options: CpuOptions, reg_n: int | None = None,
                       oc_tile: int | None = None, rows_outer: bool = False):
    """The direct conv's loops: a register tile of ``reg_n`` columns × ``oc_tile`` channel blocks (derived from
    the target unless given), the epilogue in its write-back. Returns the parallel outer loop and the plan of the
    next tile's weight prefetch (prefetch.py; None when not worth it), which the caller inserts once its schedule
    is complete. ``rows_outer``: output rows outside the channel-block tiles, for a producer computed once per
    row (dw_pointwise)."""
    isa = isa_of(target)
    n, occ, oh, ow, ocb, ic, kh, kw = sch.get_loops(conv)
    oc_bn, ow_size = sched.extent(sch, ocb), sched.extent(sch, ow)
    kernel = sch.get(conv).reads[1].source  # (oc_chunk, ic_chunk, kh, kw, ic_bn, oc_bn)
    ic_bn = int(kernel.shape[4])
    lanes = isa.lanes
    vec_per_block = max(1, oc_bn // lanes)
    inline_pad = sched.inline_padding(sch, conv, ow_size, options.small_conv_macs)
    # A tile over several output rows (sched.pixel_tile) only where the rule picks the tile, and not under a
    # producer computed once per row.
    height = 1 if reg_n or oc_tile else sched.extent(sch, oh)
    chunks = sched.extent(sch, occ)
    block_bytes = None if reg_n or oc_tile else (buffer_bytes(kernel) or 0) // int(kernel.shape[0])
    tile_rows, cols, blocks = sched.pixel_tile(height, ow_size, chunks, vec_per_block, isa.vector_registers,
                                               block_weight_bytes=block_bytes)
    reg_n, oc_tile = reg_n or cols, oc_tile or blocks

    occ_o, occ_i = sch.split(occ, [None, oc_tile])
    oh_o, oh_i = sch.split(oh, [None, tile_rows])
    ow_o, ow_i = sch.split(ow, [None, reg_n])
    ic_o, ic_i = sch.split(ic, [None, ic_bn])
    # ow_i outside occ_i: each broadcast input feeds all oc_tile FMAs at once and dies, so only the
    # accumulators, oc_tile weight vectors and one broadcast are live (no spills).
    rows = sched.extent(sch, oh_o)
    if rows_outer:
        sch.reorder(n, oh_o, occ_o, ow_o, ic_o, kh, kw, ic_i, oh_i, ow_i, occ_i, ocb)
        outer = sch.fuse(n, oh_o)
    else:
        sch.reorder(n, occ_o, oh_o, ow_o, ic_o, kh, kw, ic_i, oh_i, ow_i, occ_i, ocb)
        outer = sch.fuse(n, occ_o, oh_o)
    sch.parallel(outer)
    sched.write_back_tile(sch, conv, ow_o, lanes)
    sched.finish_reduction(sch, conv, ic_o, ocb, [oh_i, ow_i, occ_i], init_unroll=3)
    sched.schedule_padding(sch, conv, lanes, inline=inline_pad)
    return outer, prefetch.plan_next_tile(sch, kernel, outer, occ_o, ic_o, kh, kw, ic_i, oc_tile, rows,
                                          rows_outer, options)
