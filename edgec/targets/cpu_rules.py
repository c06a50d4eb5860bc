"""edgec's CPU schedule rules: what makes untuned CPU code fast, in the spirit of TVM's dlight rules for GPUs.

Each rule looks at one fused PrimFunc and, if it recognises it, returns a schedule; ``ApplyDefaultSchedule``
tries the rules in order and the first that applies wins. A new rule is one class added to ``rules()``.

The convolution rule follows the classic direct-convolution design for SIMD CPUs: activations in NCHW[x]c (see
``cpu_layout``), a register tile of ``oc_tile`` channel blocks × ``reg_n`` output columns accumulated in vector
registers across the whole reduction, weights read as whole vectors, one input value broadcast per FMA row, and
the epilogue (bias, ReLU, residual add) applied as the tile is written back, so the output is written once.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from edgec.targets.cpu_layout import NARROW, vector_lanes


def _vector_registers(target: Target) -> int:
    lanes = vector_lanes(target)
    return 32 if lanes in (4, 16) else 16  # NEON and AVX-512 have 32 vector registers, AVX2 has 16


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def register_tile(width: int, oc_chunks: int, vec_per_block: int, registers: int,
                  partial: bool = True) -> tuple[int, int]:
    """(columns, channel blocks) of the conv register tile: the most accumulators that fit with the tile's weight
    vectors and one broadcast input (acc + weights + 1 ≤ registers; a spill costs 2.5× on a 7-wide layer), ties
    broken by FMAs per load. The columns divide the row. The channel blocks need not divide theirs when
    ``partial``: the last tile then computes only the blocks left (a predicated tail), and a tile counts the
    accumulators it keeps busy on average. Why: 7 blocks (112 channels, a width pruned to a multiple of 16) only
    divide into 1 or 7, and the 7-wide tile with one block (7 accumulators, too few to hide the FMA latency) ran a
    48 → 112 stride-2 conv at 76 GFLOP/s; 3 blocks with a tail run it at 220. Even 8 blocks on a 7-wide row run 5 %
    faster as 3+3+2 than as 2+2+2+2 (21 accumulators instead of 14)."""
    best = (1, 1)
    best_key = (0.0, 0.0)
    for reg_n in (d for d in range(1, min(width, 16) + 1) if width % d == 0):
        for oc_tile in (d for d in range(1, min(oc_chunks, 8) + 1) if partial or oc_chunks % d == 0):
            acc, weights = reg_n * oc_tile * vec_per_block, oc_tile * vec_per_block
            if acc + weights + 1 > registers:
                continue
            busy = acc * oc_chunks / (math.ceil(oc_chunks / oc_tile) * oc_tile)
            key = (busy, acc / (reg_n + weights))
            if key > best_key:
                best, best_key = (reg_n, oc_tile), key
    return best


DEPTHWISE_ROW_TILE = 8  # most output vectors a depthwise conv accumulates at once along a row


def depthwise_row_tile(width: int, vec_per_block: int) -> int:
    """Output columns of the depthwise register tile: the largest divisor of the row up to DEPTHWISE_ROW_TILE
    vectors, or that many with a predicated tail when the row has no divisor of at least half of it (38 → 8+…+6,
    not 2). Why so few when 28 accumulators fit in 32 registers: the 28-wide tile spills around its window loads
    and ran twice as slow (144 channels at 56×56: 86 → 41–46 µs with 7 or 8; the depthwise → 1×1 pairs of
    MobileNetV2 and EfficientNet-Lite0 at 112/56/28 wide 5–28 % faster, 1 thread, interleaved)."""
    cap = max(1, DEPTHWISE_ROW_TILE // vec_per_block)
    if width <= cap:
        return width
    best = _divisor_at_most(width, cap)
    return best if 2 * best >= cap else cap


def _inline_epilogue(sch: s_tir.Schedule, writer) -> list:
    """Reverse-inline every elementwise block that follows ``writer``; return the ones that could not be."""
    while True:
        consumers = sch.get_consumers(writer)
        if not consumers:
            return []
        if len(consumers) != 1:
            return list(consumers)
        try:
            sch.reverse_compute_inline(consumers[0])
        except Exception:  # noqa: BLE001  (tir raises ScheduleError subclasses of RuntimeError/TVMError)
            return list(consumers)


def _vectorize_innermost(sch: s_tir.Schedule, loop, lanes: int, max_whole: int) -> None:
    """Vectorize ``loop`` whole when it is at most ``max_whole`` long, else in vector-sized pieces when it divides
    into them (a loop that does neither stays scalar rather than get a masked tail)."""
    extent = _extent(sch, loop)
    if extent <= max_whole:
        sch.vectorize(loop)
    elif extent % lanes == 0:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


def _schedule_elementwise_root(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Parallel outer loops, vectorized innermost, for a stand-alone stage."""
    loops = sch.get_loops(block)
    if not loops:
        return
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    _vectorize_innermost(sch, loops[-1], lanes, max_whole=64)


def _write_back_tile(sch: s_tir.Schedule, block, at_loop, lanes: int, epilogue: bool = True) -> None:
    """Accumulate ``block``'s register tile in a local buffer and write it back once per tile at ``at_loop``,
    with the fused elementwise epilogue (bias, ReLU, residual add...) reverse-inlined into the write-back
    (``epilogue=False`` when the consumer is another stage, not an elementwise tail)."""
    cache = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(cache, at_loop)
    leftover = _inline_epilogue(sch, cache) if epilogue else []
    wb_loops = sch.get_loops(cache)
    at_depth = next(i for i, lp in enumerate(wb_loops) if sch.get(lp).same_as(sch.get(at_loop)))
    inner = wb_loops[at_depth + 1:]
    sch.vectorize(inner[-1])
    for loop in inner[:-1]:
        sch.unroll(loop)
    for other in leftover:
        _schedule_elementwise_root(sch, other, lanes)


def _finish_reduction(sch: s_tir.Schedule, block, first_reduce, vector_loop, unrolled: list, init_unroll: int,
                      ) -> None:
    """Vectorize the channel block, unroll the register tile, and split off the accumulator init (zeroed once
    per tile, vectorized) — in that order: vectorize must precede decompose_reduction."""
    sch.vectorize(vector_loop)
    for loop in unrolled:
        sch.unroll(loop)
    init_loops = sch.get_loops(sch.decompose_reduction(block, first_reduce))
    sch.vectorize(init_loops[-1])
    for loop in init_loops[-1 - init_unroll:-1]:
        sch.unroll(loop)


def _schedule_padding(sch: s_tir.Schedule, block, lanes: int, inline: bool = False) -> None:
    """The padded input: inlined into the conv (a bounds check per input read), or materialised once, parallel
    over channel blocks and rows, vectorized along c (along the row for an unblocked input). Which one a conv
    takes: _inline_padding."""
    for producer in sch.get_producers(block):
        if sch.get(producer).name_hint.endswith("pad"):
            if inline:
                sch.compute_inline(producer)
            elif int(sch.get(producer).writes[0].source.shape[-1]) == 1:
                # Unblocked (NCHW1c) input: vectorize along the row, not the unit channel block.
                *outer, w, cb = sch.get_loops(producer)
                sch.parallel(sch.fuse(*outer))
                sch.vectorize(sch.split(w, [None, lanes])[1])
            else:
                _schedule_elementwise_root(sch, producer, lanes)


SMALL_CONV_MACS = 4_000_000  # up to this many MACs, a conv reads its padding bounds-checked (see _inline_padding)


def _inline_padding(sch: s_tir.Schedule, conv, width: int) -> bool:
    """Whether the conv block ``conv`` with output ``width`` reads its padded input through a bounds check (see
    _schedule_padding). Measured on ResNet-18 / MobileNetV2 layers (1 thread): the check wins on wide maps (56×56:
    1.07 → 0.96 ms), ties at 28×28, and loses badly on narrow ones (14×14: 1.01 → 2.58 ms, 7×7: 1.15 → 2.94 ms),
    where it is paid on a large share of reads. Small convs (≤ SMALL_CONV_MACS) keep the check whatever their
    width: the copy is a pass of its own whose fixed cost shows there (16 → 16 stride 2 to 14×14, 0.45 M MACs:
    4 µs checked, 6 µs from the copy; 16 → 32: 8 vs 9 µs; 64 → 128 to 7×7, 3.6 M MACs: 31 vs 33 µs; 32 → 64 to
    14×14, 3.6 M MACs: a tie; ResNet-18's 128 → 256 stride 2, 29 M MACs: 0.56 vs 0.51 ms, the copy wins).
    Unblocked inputs (a model's image, ic_bn 1) always go through the row-vectorized copy: a 7×7 stem (49 checked
    reads per broadcast) runs faster from it in isolation (ResNet-18's 3→64 stem 1.64 → 1.34 ms), and a 3×3 one
    ties there (3→32 stride 2: 0.25 vs 0.26 ms) but not in the model, where the image arrives cold: one sequential
    pass over it beats nine interleaved strided row streams. EfficientNet-Lite0's stem, timed in the model (VM
    instrument): 0.285 → 0.185 ms; the model 4.82 → 4.67 ms, MobileNetV2 4.18 → 4.10 ms (interleaved A/B)."""
    kernel = sch.get(conv).reads[1].source  # (oc_chunk, ic_chunk, kh, kw, ic_bn, oc_bn)
    if int(kernel.shape[4]) == 1:
        return False
    outputs = math.prod(int(d) for d in sch.get(conv).writes[0].source.shape)
    macs = outputs * math.prod(int(d) for d in kernel.shape[1:5])
    return width >= 56 or macs <= SMALL_CONV_MACS


def _find_block(sch: s_tir.Schedule, name: str):
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001  (no block of that name)
        return None


class Conv2dNCHWc(ScheduleRule):
    """conv2d in NCHW[x]c layout (TOPI's conv2d_NCHWc compute) with its fused elementwise epilogue.

    ``reg_n`` / ``oc_tile`` override the register tile the rule derives from the target (for experiments)."""

    def __init__(self, reg_n: int | None = None, oc_tile: int | None = None) -> None:
        self.reg_n, self.oc_tile = reg_n, oc_tile

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        conv = _find_block(sch, "conv2d_NCHWc")
        if conv is None or len(sch.get_loops(conv)) != 8:
            return None
        _, plan = schedule_conv_tile(sch, conv, target, self.reg_n, self.oc_tile)
        from edgec.targets import cpu_prefetch

        return cpu_prefetch.insert(sch, plan)


def schedule_conv_tile(sch: s_tir.Schedule, conv, target: Target, reg_n: int | None = None,
                       oc_tile: int | None = None, rows_outer: bool = False):
    """The direct conv's loops: a register tile of ``reg_n`` columns × ``oc_tile`` channel blocks (derived from
    the target unless given), the epilogue in its write-back. Returns the parallel outer loop and the plan of the
    next tile's weight prefetch (cpu_prefetch; None when not worth it), which the caller inserts once its schedule
    is complete. ``rows_outer``: output rows outside the channel-block tiles, for a producer computed once per
    row (cpu_dw_pointwise)."""
    n, occ, oh, ow, ocb, ic, kh, kw = sch.get_loops(conv)
    oc_bn, ow_size = _extent(sch, ocb), _extent(sch, ow)
    kernel = sch.get(conv).reads[1].source  # (oc_chunk, ic_chunk, kh, kw, ic_bn, oc_bn)
    ic_bn = int(kernel.shape[4])
    lanes = vector_lanes(target)
    vec_per_block = max(1, oc_bn // lanes)
    inline_pad = _inline_padding(sch, conv, ow_size)
    derived = register_tile(ow_size, _extent(sch, occ), vec_per_block, _vector_registers(target))
    reg_n, oc_tile = reg_n or derived[0], oc_tile or derived[1]

    occ_o, occ_i = sch.split(occ, [None, oc_tile])
    ow_o, ow_i = sch.split(ow, [None, reg_n])
    ic_o, ic_i = sch.split(ic, [None, ic_bn])
    # ow_i outside occ_i: each broadcast input feeds all oc_tile FMAs at once and dies, so only the
    # accumulators, oc_tile weight vectors and one broadcast are live (no spills).
    rows = _extent(sch, oh)
    if rows_outer:
        sch.reorder(n, oh, occ_o, ow_o, ic_o, kh, kw, ic_i, ow_i, occ_i, ocb)
        outer = sch.fuse(n, oh)
    else:
        sch.reorder(n, occ_o, oh, ow_o, ic_o, kh, kw, ic_i, ow_i, occ_i, ocb)
        outer = sch.fuse(n, occ_o, oh)
    sch.parallel(outer)
    _write_back_tile(sch, conv, ow_o, lanes)
    _finish_reduction(sch, conv, ic_o, ocb, [ow_i, occ_i], init_unroll=2)
    _schedule_padding(sch, conv, lanes, inline=inline_pad)
    from edgec.targets import cpu_prefetch

    return outer, cpu_prefetch.plan_next_tile(sch, kernel, outer, occ_o, ic_o, kh, kw, ic_i, oc_tile, rows,
                                              rows_outer)


class WidenedConv2dNCHWc(ScheduleRule):
    """A conv computed in full-vector blocks on zero-padded weights, storing only its real channels (see
    cpu_layout.widened_block): the store stage drives the loops, and the conv is a register tile computed at each
    group of ``reg_n`` output columns for all (at most three) wide blocks at once."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        conv, narrow = _find_block(sch, "conv2d_NCHWc"), _find_block(sch, NARROW)
        if conv is None or narrow is None or len(sch.get_loops(conv)) != 8:
            return None
        schedule_widened(sch, conv, narrow, target)
        return sch


def schedule_widened(sch: s_tir.Schedule, conv, narrow, target: Target):
    """Loops of a widened conv and its store stage; returns the parallel loop over output rows."""
    lanes = vector_lanes(target)
    leftover = _inline_epilogue(sch, narrow)
    n, c, y, x, i = sch.get_loops(narrow)[-5:]
    wide_blocks = _extent(sch, sch.get_loops(conv)[1])
    width = _extent(sch, x)
    inline_pad = _inline_padding(sch, conv, width)  # before the conv becomes a local tile
    reg_n = _divisor_at_most(width, max(1, min(16, (_vector_registers(target) - wide_blocks - 1) // wide_blocks)))
    x_o, x_i = sch.split(x, [None, reg_n])
    sch.reorder(n, y, x_o, c, x_i, i)
    row = sch.fuse(n, y)
    sch.parallel(row)
    sch.vectorize(i)
    sch.unroll(x_i)
    sch.unroll(c)
    sch.compute_at(conv, x_o, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")  # the register tile itself
    _, occ, _, ow, ocb, ic, kh, kw = sch.get_loops(conv)[-8:]
    kernel = sch.get(conv).reads[1].source  # (oc_chunk, ic_chunk, kh, kw, ic_bn, oc_bn)
    ic_o, ic_i = sch.split(ic, [None, int(kernel.shape[4])])
    sch.reorder(ic_o, kh, kw, ic_i, ow, occ, ocb)
    _finish_reduction(sch, conv, ic_o, ocb, [ow, occ], init_unroll=2)
    _schedule_padding(sch, conv, lanes, inline=inline_pad)
    for other in leftover:
        _schedule_elementwise_root(sch, other, lanes)
    return row


class Int8Conv2dNCHWcVNNI(ScheduleRule):
    """uint8 × int8 → int32 conv (TOPI's conv2d_NCHWc_int8) with AVX-512 VNNI: each vpdpbusd multiplies 4 input
    channels (one broadcast 32-bit word) by a 16 output channels × 4 weight block and accumulates 16 int32 — four
    times the MACs of an fp32 FMA. Same register tile and fused (requantizing) write-back as the fp32 rule."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        conv = _find_block(sch, "conv2d_NCHWc_int8")
        if conv is None or len(sch.get_loops(conv)) != 10:
            return None
        from edgec.targets.intrinsics import register_vnni_local_acc

        intrinsic = register_vnni_local_acc()
        n, occ, oh, ow, ocb, kh, kw, ic_o, ic_f, ic_s = sch.get_loops(conv)
        if _extent(sch, ocb) != 16 or _extent(sch, ic_s) != 4:
            return None
        reg_n, oc_tile = register_tile(_extent(sch, ow), _extent(sch, occ), 1, _vector_registers(target),
                                       partial=False)  # tensorize wants whole tiles
        occ_o, occ_i = sch.split(occ, [None, oc_tile])
        ow_o, ow_i = sch.split(ow, [None, reg_n])
        sch.reorder(n, occ_o, oh, ow_o, ic_o, kh, kw, ic_f, ow_i, occ_i, ocb, ic_s)
        sch.parallel(sch.fuse(n, occ_o, oh))
        _write_back_tile(sch, conv, ow_o, vector_lanes(target))
        sch.unroll(ow_i)
        sch.unroll(occ_i)
        init = sch.decompose_reduction(conv, ic_o)
        init_loops = sch.get_loops(init)
        sch.vectorize(init_loops[-1])
        _schedule_padding(sch, conv, vector_lanes(target), inline=False)  # before tensorize replaces the block
        sch.tensorize(ocb, intrinsic)
        return sch


class DepthwiseConv2dNCHWc(ScheduleRule):
    """Depthwise conv in NCHW[x]c: a row of ``reg_n`` output vectors accumulated over the kernel window; each
    input vector is a plain load (channels are innermost), each weight vector is reused across the row."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        conv = _find_block(sch, "depthwise_conv2d_NCHWc")
        if conv is None or len(sch.get_loops(conv)) != 7:
            return None
        n, cc, oh, ow, cb, ry, rx = sch.get_loops(conv)
        lanes = vector_lanes(target)
        vec_per_block = max(1, _extent(sch, cb) // lanes)
        reg_n = depthwise_row_tile(_extent(sch, ow), vec_per_block)
        ow_o, ow_i = sch.split(ow, [None, reg_n])
        sch.reorder(n, cc, oh, ow_o, ry, rx, ow_i, cb)
        sch.parallel(sch.fuse(n, cc, oh))
        _write_back_tile(sch, conv, ow_o, lanes)
        _finish_reduction(sch, conv, ry, cb, [ow_i, rx], init_unroll=1)
        return sch  # (no pad stage: the compute clamps its reads, see cpu_layout.depthwise_conv2d_nchwc)


GEMV = True  # edgec's default; benchmarks switch it off to compare with the register-tiled matmul


class Matmul(ScheduleRule):
    """Dense / batched matmul ``C[..., m, n] = sum_k A[..., m, k] · B[..., k, n]`` with B's n contiguous (ONNX
    Gemm/MatMul with constant weights arrive this way: the transpose of a constant weight folds away).
    A tile of ``mt`` rows × ``nt`` columns stays in registers across k; the epilogue is fused in the write-back."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        block = _find_block(sch, "matmul") or _find_block(sch, "T_matmul_NN")
        if block is None:
            return None
        loops = sch.get_loops(block)
        kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
        if len(loops) < 3 or len(kinds) != len(loops) or kinds[-1] != 2 or any(k != 0 for k in kinds[:-1]):
            return None  # iter_type 0: spatial, 2: reduction
        b_shape = [int(d) for d in sch.get(block).reads[1].source.shape]
        *batch, m, n, k = loops
        if b_shape[-1] != _extent(sch, n) or b_shape[-2] != _extent(sch, k):
            return None
        lanes = vector_lanes(target)
        n_size, m_size = _extent(sch, n), _extent(sch, m)
        if GEMV and m_size == 1 and all(_extent(sch, b) == 1 for b in batch):
            return self._gemv(sch, block, [*batch, m], n, k, lanes)
        candidates = [d for d in range(1, min(n_size, 4 * lanes) + 1) if n_size % d == 0]
        nt = max(candidates, key=lambda d: (d % lanes == 0 or d >= lanes, d))
        vectors = -(-nt // lanes)
        mt = _divisor_at_most(m_size, max(1, min(8, (_vector_registers(target) - 4) // vectors)))
        m_o, m_i = sch.split(m, [None, mt])
        n_o, n_i = sch.split(n, [None, nt])
        sch.reorder(*batch, m_o, n_o, k, m_i, n_i)
        outer = sch.fuse(*batch, m_o, n_o)
        sch.parallel(outer)
        _write_back_tile(sch, block, outer, lanes)
        _finish_reduction(sch, block, k, n_i, [m_i], init_unroll=0)
        return sch

    @staticmethod
    def _gemv(sch: s_tir.Schedule, block, unit_loops: list, n, k, lanes: int):
        """One input row (a classifier at batch 1): memory-bound on the weights, so they are read in storage
        order — k outer, four rows at a time, each row's n contiguous — into an accumulator row that stays in
        L1. Column tiles held in registers across k (the batched path) read the weights as short strided runs,
        which the prefetchers follow poorly: in a whole model the weights come from L3 or DRAM."""
        n_size = _extent(sch, n)
        vec = lanes
        while n_size % vec:
            vec //= 2  # whole vectors of a power-of-two width (an odd width compiles to scalar code)
        n_chunks = n_size // vec
        n_p = _divisor_at_most(n_chunks, 4)  # a few column ranges, parallel over cores (each still streams rows)
        k_unroll = _divisor_at_most(_extent(sch, k), 4)
        n_p, n_o, n_i = sch.split(n, [n_p, None, vec])
        k_o, k_i = sch.split(k, [None, k_unroll])
        sch.reorder(n_p, k_o, n_o, k_i, n_i)
        outer = sch.fuse(*unit_loops, n_p)
        sch.parallel(outer)
        cache = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(cache, outer)
        leftover = _inline_epilogue(sch, cache)
        wb = sch.get_loops(cache)[-1]
        _vectorize_innermost(sch, wb, lanes, max_whole=lanes)
        for other in leftover:
            _schedule_elementwise_root(sch, other, lanes)
        sch.vectorize(n_i)
        sch.unroll(k_i)
        init = sch.decompose_reduction(block, k_o)
        _vectorize_innermost(sch, sch.get_loops(init)[-1], lanes, max_whole=lanes)
        return sch


def _reduces_outside_innermost(block_stmt) -> bool:
    """Whether every input of the block is indexed along its innermost (contiguous) axis by the block's last
    spatial iterator alone: then a window reduction of any size is whole-vector adds along that axis (global
    average pooling in NCHW[x]c reduces H×W and keeps the channel block innermost), one accumulator per vector.
    (Loops and iterators are still in the same order here: the rule checks it before touching the loops.)"""
    spatial = [iv.var for iv in block_stmt.iter_vars if iv.iter_type == 0]
    return bool(spatial and block_stmt.reads) and all(
        region.region[-1].min.same_as(spatial[-1]) for region in block_stmt.reads)


class SpatialWindow(ScheduleRule):
    """Elementwise / layout-transform / pooling functions: elementwise producers inlined, then the outer spatial
    loops in parallel, the window reduction (pooling, if any) next, the innermost spatial loop vectorized — in
    NCHW[x]c that is the channel block, so a pooling window is a sequence of whole-vector max/add."""

    max_window = 64

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        for block in blocks[:-1]:  # producers: inline into their consumers where possible
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001  (not inlinable: keep it as its own stage)
                pass
        blocks = sch.get_child_blocks(root)
        lanes = vector_lanes(target)
        for block in blocks:
            kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
            loops = sch.get_loops(block)
            if len(kinds) != len(loops) or any(k not in (0, 2) for k in kinds) or not loops:
                return None
            spatial = [lp for lp, k in zip(loops, kinds) if k == 0]
            reduce = [lp for lp, k in zip(loops, kinds) if k == 2]
            window = 1
            for lp in reduce:
                window *= _extent(sch, lp)
            if not spatial or (window > self.max_window and not _reduces_outside_innermost(sch.get(block))):
                return None  # a reduction along the contiguous axis (softmax, a row mean): not this rule's job
            sch.reorder(*spatial[:-1], *reduce, spatial[-1])
            if len(spatial) > 1:
                sch.parallel(sch.fuse(*spatial[:-1]))
            # before decompose_reduction: the update alone is no reduction block
            _vectorize_innermost(sch, spatial[-1], lanes, max_whole=4 * lanes)
            if reduce:
                sch.decompose_reduction(block, reduce[0])
        return sch


def rules(target: Target) -> list[ScheduleRule]:
    from tvm.s_tir import dlight as dl

    from edgec.targets.cpu_dw_pointwise import DepthwisePointwise
    from edgec.targets.cpu_spatial_conv import SpatialConv2d
    from edgec.targets.cpu_winograd import schedule_rule as winograd_rule

    return [winograd_rule(), Int8Conv2dNCHWcVNNI(), DepthwisePointwise(), WidenedConv2dNCHWc(), SpatialConv2d(),
            Conv2dNCHWc(), DepthwiseConv2dNCHWc(), Matmul(), SpatialWindow(), dl.cpu.GEMV(),
            dl.cpu.Reduction()]


def cpu_schedule_pass(target: Target):
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(*rules(target))
