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
    reduction = sched.extent(sch, ic) * sched.extent(sch, kh) * sched.extent(sch, kw)
    tile_rows, cols, blocks = sched.pixel_tile(height, ow_size, chunks, vec_per_block, isa.vector_registers,
                                               block_weight_bytes=block_bytes,
                                               reserve=tile_reserve(reduction, isa.vector_registers, options))
    k_chunk = None
    if options.k_split and not rows_outer and block_bytes:
        k_tile, k_chunk = k_split_tile(height, ow_size, chunks, oc_bn, vec_per_block, isa.vector_registers,
                                       block_bytes, sched.extent(sch, ic) // ic_bn)
        if k_chunk:
            tile_rows, cols, blocks = k_tile
    reg_n, oc_tile = reg_n or cols, oc_tile or blocks

    occ_o, occ_i = sch.split(occ, [None, oc_tile])
    oh_o, oh_i = sch.split(oh, [None, tile_rows])
    ow_o, ow_i = sch.split(ow, [None, reg_n])
    ic_o, ic_i = sch.split(ic, [None, ic_bn])
    # ow_i outside occ_i: each broadcast input feeds all oc_tile FMAs at once and dies, so only the
    # accumulators, oc_tile weight vectors and one broadcast are live (no spills).
    rows = sched.extent(sch, oh_o)
    if k_chunk:  # the channel-block tiles outermost, then the chunks of input channels, then the pixels
        ic_oo, ic_oi = sch.split(ic_o, [None, k_chunk])
        sch.reorder(n, occ_o, ic_oo, oh_o, ow_o, ic_oi, kh, kw, ic_i, oh_i, ow_i, occ_i, ocb)
        outer = sch.fuse(n, occ_o)
        sch.parallel(outer)
        partial = sch.rfactor(ic_oo, 0)  # per chunk of input channels: partial sums, each from a register tile
        outer, ic_oo, oh_o, ow_o, ic_oi, kh, kw, ic_i, oh_i, ow_i, occ_i, ocb = sch.get_loops(partial)
        sched.write_back_tile(sch, partial, ow_o, lanes, epilogue=False)
        sched.finish_reduction(sch, partial, ic_oi, ocb, [oh_i, ow_i, occ_i], init_unroll=3)
        # The chunks' sums added per output vector, the epilogue applied as it is written.
        sch.reverse_compute_at(conv, outer)
        # Its loops: the chunks first, then the output's (unit extents have none), the channel block last.
        chunk_f, *spatial_f = sch.get_loops(conv)[1:]
        sch.reorder(*spatial_f[:-1], chunk_f, spatial_f[-1])
        sched.write_back_tile(sch, conv, spatial_f[-2] if len(spatial_f) > 1 else outer, lanes)
        sched.finish_reduction(sch, conv, chunk_f, spatial_f[-1], [chunk_f], init_unroll=0)
        sched.schedule_padding(sch, conv, lanes, inline=inline_pad)
        return outer, prefetch.plan_next_chunk(sch, kernel, outer, ic_oo, ic_oi, kh, kw, ic_i, oc_tile, k_chunk,
                                               options)
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


def tile_reserve(reduction: int, registers: int, options: CpuOptions) -> int:
    """Vector registers the register tile leaves free (sched.pixel_tile's ``reserve``): :data:`sched.EPILOGUE_RESERVE`
    on 32-register targets for a reduction of at most ``options.short_reduction`` products per output, else 0.

    Why: with 32 registers the rule's tile is 14 columns × 2 blocks (28 accumulators + 2 weight vectors + one
    broadcast: 31), and its write-back needs the bias vectors and a ReLU6's two bounds on top. Over a long
    reduction that costs nothing measurable, over a short one it is a large share of the tile's time. On an
    Intel Xeon (AVX-512, 1 thread, bench/conv_tiles.py, two runs each) 14 × 2 against 8 × 2 / 8 × 3: the 3 → 32
    3×3 stride-2 stem with ReLU6 (27 products per output) 84–94 against 120–122 GFLOP/s, 16 → 96 1×1 at 112×112
    with ReLU6 126–130 against 139–147 (without the ReLU6 144 against 152), 64 → 96 1×1 at 112×112 158 against
    164; with 64 or more input channels at 14–28 wide (96 → 576, 576 → 96, 64 → 384, 32 → 192) the tiles were
    within ±3 % of each other, so long reductions keep the larger tile."""
    if registers < 32 or reduction > options.short_reduction:
        return 0
    return sched.EPILOGUE_RESERVE


MIN_PARALLEL_TILES = 8  # a conv reducing over input-channel chunks runs in parallel over its channel-block tiles only


def k_split_tile(height: int, width: int, oc_chunks: int, oc_bn: int, vec_per_block: int, registers: int,
                 block_bytes: int, ic_blocks: int) -> tuple[tuple[int, int, int], int | None]:
    """(the register tile, input-channel blocks per chunk) for a conv that reduces over chunks of its input
    channels, or (…, None) where it should not.

    Why: with 16 registers a tile holds few pixels (4 × 3 blocks), so each weight vector it loads serves at most
    a few FMAs; where the tile's weight slice (its channel blocks × every input channel × the window) outgrows
    L1 — 1×1 convs with hundreds of input channels on 7×7 and 14×14 maps, 3×3 stride-2 convs — every tile
    streams it from L2 again and the rule fell back to the whole-row 7 × 1 tile with one block (7 FMAs per 8
    loads). Cut into chunks whose slice fits half of L1 (:data:`sched.L1_BYTES`), each chunk is loaded once and
    reused by every tile of the map, and the tile weights in L1 allow is taken (4 columns and a 3-column tail ×
    2–3 blocks at 7 wide). The chunks' partial sums go to a small buffer (rfactor) and are added, with the
    epilogue, per output vector. On a Zen 3 core (bench/conv_tiles.py ``--cpu-option k_split=false`` against
    the default, 1 thread): 960 → 320 at 7×7 76 → 86 GFLOP/s, 1152 → 192 72 → 95, 960 → 160 77 → 87,
    256 → 512 3×3 stride 2 at 14 → 7 73 → 85, 192 → 384 3×3 stride 2 at 26 → 13
    66 → 85 (672 → 112 at 14×14, 89 → 95 alone, has too few channel-block tiles for the split, below); 1×1
    convs with few input channels (weights in L1) keep their tile.

    The parallel loop is then the channel-block tiles alone (rows inside the chunks: a chunk per row measured
    slower than no split), so the split is taken only with at least :data:`MIN_PARALLEL_TILES` of them (960 → 160
    has 10, 70 tasks without the split; on many cores fewer tasks can cost more than the split gains — measured
    here at 1 and 2 threads only). Only where the partial sums of one channel-block tile fit four times L1 (small maps; larger ones unmeasured), and
    only with 16 registers: a 32-register tile (7 × 3 at 7 wide) already reuses each weight vector 7 times, and
    the split is unmeasured there."""
    tile = sched.pixel_tile(height, width, oc_chunks, vec_per_block, registers, block_weight_bytes=0)
    per_ic_block = tile[2] * block_bytes // ic_blocks
    chunk = sched.divisor_at_most(ic_blocks, max(1, sched.L1_BYTES // 2 // per_ic_block))
    partial_bytes = (ic_blocks // chunk) * height * width * tile[2] * oc_bn * 4
    tiles = -(-oc_chunks // tile[2])
    if registers >= 32 or tile[2] * block_bytes <= sched.L1_BYTES or chunk == ic_blocks \
            or partial_bytes > 4 * sched.L1_BYTES or tiles < MIN_PARALLEL_TILES:
        return tile, None
    return tile, chunk
