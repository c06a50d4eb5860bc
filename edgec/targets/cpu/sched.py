"""Public schedule helpers of edgec's CPU kernels, in the spirit of TVM dlight's ``base`` (``get_extent``,
``auto_vectorize``, ``try_inline``): each kernel module's rule imports these and nothing private of another.

The shared design is the classic direct-convolution one for SIMD CPUs: a register tile of accumulators held in
vector registers across the whole reduction (:func:`register_tile`), weights read as whole vectors, the fused
elementwise epilogue (bias, ReLU, residual add) applied as the tile is written back (:func:`write_back_tile`), so
the output is written once.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target


def divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def extent(sch: s_tir.Schedule, loop) -> int:
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
    faster as 3+3+2 than as 2+2+2+2 (21 accumulators instead of 14).

    With 16 registers (AVX2) the loads bound the tile instead: a 14×1 tile loads one broadcast input per FMA,
    and the 1×1 expansions of MobileNetV2's early stages (16–24 input channels) ran at 42–44 GFLOP/s on a Zen 3
    core; once ``registers // 2`` accumulators hide the FMA latency, the tile with the most FMAs per load wins
    (4×3: 12 FMAs per 4 broadcasts + 3 weight loads; a partial tail counts what it keeps busy), and those convs
    ran at 86–88 GFLOP/s (bench/profile_cpu.py, 1 thread)."""
    _, reg_n, oc_tile = pixel_tile(1, width, oc_chunks, vec_per_block, registers, partial)
    return reg_n, oc_tile


EPILOGUE_RESERVE = 4  # registers a short reduction's tile leaves free on 32-register targets (direct.tile_reserve)

L1_BYTES = 32 * 1024  # per-core L1 data cache assumed for the register tile's weight slice (x86 cores: 32–48 KB)


def pixel_tile(height: int, width: int, oc_chunks: int, vec_per_block: int, registers: int,
               partial: bool = True, block_weight_bytes: int | None = None, reserve: int = 0) -> tuple[int, int, int]:
    """(rows, columns, channel blocks) of the conv register tile: :func:`register_tile`'s choice, its pixels
    taken from up to four output rows where that scores higher (a strictly better key; ties keep one row), ties
    between equal scores going to more pixels (fewer weight vectors per FMA). With ``block_weight_bytes`` (one
    channel block's weights), columns that do not divide the row are also tried, see below.

    Why rows: with 16 registers the tile wants 4 pixels × 3 channel blocks (12 FMAs per 4 broadcasts + 3 weight
    loads), and a 14-wide row has no 4-column divisor: its tile was 2 columns × 4 blocks (8 FMAs per 6 loads),
    and MobileNetV2's 1×1 projections at 14×14 (576 → 96, 384 → 64) ran at 52–57 GFLOP/s on a Zen 3 core, the
    same 576 → 96 at 12, 16 or 28 wide at 85–90; a 2 × 2 pixel tile runs them at 90–93.

    Why a column tail: a 7-wide row has neither. 7 × 1 keeps 7 accumulators, too few to hide the FMA latency
    (192 → 1152 at 7×7: 77 GFLOP/s), 7 × 2 spills (48), and 4 columns with a predicated 3-column tail run it at
    88. That holds while the tile's weight slice stays in L1 (:data:`L1_BYTES`; there the FMAs bound the tile);
    with larger slices every tile streams its weights from L2 and the most pixels per weight vector win (1152 →
    192 at 7×7: 72 with the tail, 75 with 7 × 1). So a tail is taken only there, only with at least 4 columns
    (2 × 5 ran 320 → 1280 at 43), with whole channel tiles (a tail in both ran it at 33), only where the
    whole-row tile holds one channel block, and where its FMAs per load, scaled by the FMA latency it hides
    (:func:`latency_hidden`), beat that tile's. A 13-wide row (YOLOX's 13×13 stage) has only the 13 × 1 tile,
    one broadcast per FMA: 384 → 192 with its SiLU epilogue ran at 38 GFLOP/s, with 5 columns × 2 blocks and a
    3-column tail at 78. There the weights need not fit L1: 192 → 384 3×3 stride 2 at 13×13 (55 KB per block)
    ran at 43 with 13 × 1 and 64–76 with tails. The score costs 320 → 1280 at 7×7 a little (4 × 2 with a tail 76,
    7 × 1 78).
    Only for 16-register targets: with 32 registers a row already holds the tile (7 × 3 at width 7), and the
    tiles that would score higher there are unmeasured.

    ``reserve``: registers the tile leaves free besides its weights and broadcast (for the epilogue's bias
    vectors and clamp bounds; :data:`EPILOGUE_RESERVE`, taken by the direct conv for short reductions)."""
    small = registers < 32
    row_choices = [r for r in range(1, min(height, 4) + 1) if height % r == 0] if small else [1]
    best = _best_tile(row_choices, [d for d in range(1, min(width, 16) + 1) if width % d == 0],
                      width, oc_chunks, vec_per_block, registers, partial, reserve=reserve)
    if not small or block_weight_bytes is None or best[2] > 1:
        return best  # a tail only for rows whose whole-row tiles hold one channel block (7 × 1)
    long_row = best[0] * best[1] > registers // 2  # one broadcast per FMA along more pixels than the latency needs
    fits = [d for d in range(1, min(oc_chunks, 8) + 1) if long_row or d * block_weight_bytes <= L1_BYTES]
    if not fits:
        return best
    tails = [(1, c, o) for c in range(4, min(width, 16) + 1) if width % c
             for o in fits if oc_chunks % o == 0 and c * o * vec_per_block + o * vec_per_block + 1 <= registers]

    def speed(tile: tuple[int, int, int]) -> float:  # FMAs per load, scaled by the FMA latency hidden
        rows, cols, oc_tile = tile
        fmas, loads = rows * cols * oc_tile * vec_per_block, rows * cols + oc_tile * vec_per_block
        return latency_hidden(*tile, width, oc_chunks, vec_per_block, registers) / (registers // 2) * fmas / loads

    return max([best, *tails], key=speed)  # ties keep the whole-row tile (max returns the first)


def latency_hidden(rows: int, cols: int, oc_tile: int, width: int, oc_chunks: int, vec_per_block: int,
                   registers: int) -> float:
    """Accumulators a tile keeps in flight, up to ``registers // 2`` (enough to hide the FMA latency), over all
    of a row's tiles weighted by their time: a 3-column tail of a 4 × 3 tile on a 7-wide row runs 9 of them."""
    col_tiles, oc_tiles = math.ceil(width / cols), math.ceil(oc_chunks / oc_tile)
    work = time = 0.0
    for c in (cols,) * (col_tiles - 1) + (width - (col_tiles - 1) * cols,):
        for o in (oc_tile,) * (oc_tiles - 1) + (oc_chunks - (oc_tiles - 1) * oc_tile,):
            acc = rows * c * o * vec_per_block
            work += acc
            time += acc / min(acc, registers // 2)
    return work / time


def _best_tile(row_choices: list[int], col_choices: list[int], width: int, oc_chunks: int, vec_per_block: int,
               registers: int, partial: bool, max_oc: int = 8, reserve: int = 0) -> tuple[int, int, int]:
    """The best-scoring (rows, columns, channel blocks) of those given: with 32 registers the most busy
    accumulators, then FMAs per load; with 16, busy accumulators up to ``registers // 2`` (the FMA latency
    hidden), then FMAs per load, then busy accumulators, then pixels."""
    best = (1, 1, 1)
    best_key: tuple = (0.0,)
    for rows in row_choices:
        for cols in col_choices:
            pixels = rows * cols
            if pixels > 16:
                continue
            for oc_tile in (d for d in range(1, min(oc_chunks, max_oc) + 1) if partial or oc_chunks % d == 0):
                acc, weights = pixels * oc_tile * vec_per_block, oc_tile * vec_per_block
                if acc + weights + 1 + reserve > registers:
                    continue
                busy = (acc * oc_chunks / (math.ceil(oc_chunks / oc_tile) * oc_tile)
                        * width / (math.ceil(width / cols) * cols))
                key = (busy, acc / (pixels + weights)) if registers >= 32 else \
                    (min(busy, registers // 2), busy / (pixels + weights), busy, pixels)
                if key > best_key:
                    best, best_key = (rows, cols, oc_tile), key
    return best


def depthwise_row_tile(width: int, vec_per_block: int, max_vectors: int = 8) -> int:
    """Output columns of the depthwise register tile: the largest divisor of the row up to ``max_vectors``
    (CpuOptions.dw_row_tile) vectors, or that many with a predicated tail when the row has no divisor of at least
    half of it (38 → 8+…+6, not 2). Why so few when 28 accumulators fit in 32 registers: the 28-wide tile spills around its window loads
    and ran twice as slow (144 channels at 56×56: 86 → 41–46 µs with 7 or 8; the depthwise → 1×1 pairs of
    MobileNetV2 and EfficientNet-Lite0 at 112/56/28 wide 5–28 % faster, 1 thread, interleaved)."""
    cap = max(1, max_vectors // vec_per_block)
    if width <= cap:
        return width
    best = divisor_at_most(width, cap)
    return best if 2 * best >= cap else cap


def inline_epilogue(sch: s_tir.Schedule, writer) -> list:
    """Reverse-inline every elementwise block that follows ``writer``; return the ones that could not be.

    An epilogue that reads the conv's output twice (HardSwish: ``x · min(max(x + 3, 0), 6) / 6``) gives the writer
    two consumers; its inner stages are first inlined forward into the last one (:func:`collapse_consumers`), so
    the whole epilogue becomes one stage read from registers. Left as it was, four of its five stages ran as
    single-threaded scalar loops over the whole output (PP-PicoDet's 1×1 convs: 7.8 ms instead of 1.5)."""
    collapsed = False
    while True:
        consumers = sch.get_consumers(writer)
        if not consumers:
            return []
        if len(consumers) != 1 and not collapsed:
            collapsed = True
            collapse_consumers(sch, writer)
            continue
        if len(consumers) != 1:
            return list(consumers)
        try:
            sch.reverse_compute_inline(consumers[0])
        except Exception:  # noqa: BLE001  (tir raises ScheduleError subclasses of RuntimeError/TVMError)
            return list(consumers)


def collapse_consumers(sch: s_tir.Schedule, writer) -> None:
    """Inline forward every stage downstream of ``writer`` that has a consumer of its own (the last stages, which
    write the function's outputs, stay), so that elementwise chains which fork and join again reach one stage."""
    seen: set[str] = set()
    todo = list(sch.get_consumers(writer))
    while todo:
        block = todo.pop()
        name = sch.get(block).name_hint
        if name in seen:
            continue
        seen.add(name)
        after = list(sch.get_consumers(block))
        if after:
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001  (not inlinable: a reduction, or a layout change; left as it is)
                pass
        todo.extend(after)


def vectorize_innermost(sch: s_tir.Schedule, loop, lanes: int, max_whole: int) -> None:
    """Vectorize ``loop`` whole when it is at most ``max_whole`` long, else in vector-sized pieces when it divides
    into them (a loop that does neither stays scalar rather than get a masked tail)."""
    size = extent(sch, loop)
    if size <= max_whole:
        sch.vectorize(loop)
    elif size % lanes == 0:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


def schedule_elementwise_root(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Parallel outer loops, vectorized innermost, for a stand-alone stage."""
    loops = sch.get_loops(block)
    if not loops:
        return
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    vectorize_innermost(sch, loops[-1], lanes, max_whole=64)


def schedule_leftover(sch: s_tir.Schedule, block, lanes: int) -> None:
    """A stage of the epilogue that the register tile's write-back could not take (a broadcast into a larger
    tensor: a squeeze-excitation scale multiplied into the feature map it gates), with the elementwise chain
    after it reverse-inlined into it, as one parallel, vectorized stage; what that chain leaves, the same way.

    Why: only the first such stage used to be scheduled, and every stage after it ran as its own single-threaded
    scalar loop over the whole tensor, writing a full intermediate each. PP-OCRv4's text detector quantized: the
    SE conv on a 1×1 map fused with its gate over 96 × 80 × 80 took 2.2 ms (twelve such loops), a sixth of the
    model's kernels (1 thread, Intel Xeon)."""
    rest = inline_epilogue(sch, block)
    schedule_elementwise_root(sch, block, lanes)
    for other in rest:
        schedule_leftover(sch, other, lanes)


def inline_side_inputs(sch: s_tir.Schedule, block) -> None:
    """Inline the elementwise stages that compute the epilogue's other inputs (not ``block``'s own): an int8
    layer's residual add reads the other branch dequantized, ``cast → multiply`` on uint8, which FuseOps puts in
    the same function. Left as stages of their own they ran unscheduled — single-threaded scalar loops over the
    whole tensor — before the conv (ResNet-18 int8: 1.1-1.4 ms per residual conv instead of 0.3).

    Such a stage may also come after ``block`` in the function (a TFLite quantized ADD: the residual's
    requantize and its integer multiply are emitted after the conv); it is then still no input of ``block`` and
    none of its epilogue, and is inlined the same way. Left there, it blocked the epilogue's reverse-inlining at
    the add, and the rest of the epilogue ran as unscheduled scalar loops (MLPerf Tiny ResNet-8: 41 % of the
    inference in one conv)."""
    own = _reachable(sch, block, sch.get_producers)
    downstream = _reachable(sch, block, sch.get_consumers)
    root = sch.get_sblock("root")
    mine = sch.get(block).name_hint
    for child in sch.get_child_blocks(root):
        name = sch.get(child).name_hint
        if name == mine or name in own or name in downstream:
            continue
        try:
            sch.compute_inline(child)
        except Exception:  # noqa: BLE001  (not inlinable: it stays a stage)
            pass


def _reachable(sch: s_tir.Schedule, block, step) -> set[str]:
    """Names of the stages ``step`` (get_producers or get_consumers) reaches from ``block``, transitively."""
    seen: set[str] = set()
    todo = [block]
    while todo:
        for other in step(todo.pop()):
            name = sch.get(other).name_hint
            if name not in seen:
                seen.add(name)
                todo.append(other)
    return seen


def write_back_tile(sch: s_tir.Schedule, block, at_loop, lanes: int, epilogue: bool = True,
                    scope: str = "local") -> None:
    """Accumulate ``block``'s register tile in a local buffer and write it back once per tile at ``at_loop``,
    with the fused elementwise epilogue (bias, ReLU, residual add...) reverse-inlined into the write-back
    (``epilogue=False`` when the consumer is another stage, not an elementwise tail)."""
    if epilogue:
        inline_side_inputs(sch, block)
    cache = sch.cache_write(block, 0, scope)
    sch.reverse_compute_at(cache, at_loop)
    leftover = inline_epilogue(sch, cache) if epilogue else []
    wb_loops = sch.get_loops(cache)
    at_depth = next(i for i, lp in enumerate(wb_loops) if sch.get(lp).same_as(sch.get(at_loop)))
    inner = wb_loops[at_depth + 1:]
    sch.vectorize(inner[-1])
    for loop in inner[:-1] if scope == "local" else []:  # a register tile's write-back, not a whole block's
        sch.unroll(loop)
    for other in leftover:
        schedule_leftover(sch, other, lanes)


def finish_reduction(sch: s_tir.Schedule, block, first_reduce, vector_loop, unrolled: list, init_unroll: int,
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


def schedule_padding(sch: s_tir.Schedule, block, lanes: int, inline: bool = False) -> None:
    """The padded input: inlined into the conv (a bounds check per input read), or materialised once, parallel
    over channel blocks and rows, vectorized along c (along the row for an unblocked input). Which one a conv
    takes: inline_padding."""
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
                schedule_elementwise_root(sch, producer, lanes)


def inline_padding(sch: s_tir.Schedule, conv, width: int, small_conv_macs: int = 4_000_000) -> bool:
    """Whether the conv block ``conv`` with output ``width`` reads its padded input through a bounds check (see
    schedule_padding). Measured on ResNet-18 / MobileNetV2 layers (1 thread): the check wins on wide maps (56×56:
    1.07 → 0.96 ms), ties at 28×28, and loses badly on narrow ones (14×14: 1.01 → 2.58 ms, 7×7: 1.15 → 2.94 ms),
    where it is paid on a large share of reads. Small convs (≤ ``small_conv_macs``, CpuOptions) keep the check whatever their
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
    return width >= 56 or macs <= small_conv_macs


def find_block(sch: s_tir.Schedule, name: str):
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001  (no block of that name)
        return None


class KernelRule(ScheduleRule):
    """A kernel's schedule rule (dlight's ScheduleRule), built from the CpuOptions by registry.rules. Subclasses
    implement :meth:`schedule`: the scheduled ``sch``, or None where the function is not their kernel's."""

    def __init__(self, options) -> None:
        self.options = options

    def apply(self, func, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        return self.schedule(s_tir.Schedule(func), target)

    def schedule(self, sch: s_tir.Schedule, target: Target):
        raise NotImplementedError
