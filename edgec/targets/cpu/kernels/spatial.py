"""Convolutions with fewer output channels than a vector has lanes, vectorized along the output row.

Why: the blocked (NCHW[x]c) conv puts output channels in the vector lanes, and every FMA takes one broadcast
input value. A conv with 8 output channels on AVX-512 then fills half a vector, and this core (Zen 5) runs 8-lane
FMAs at half the 16-lane rate: the 16 → 8 channel 3×3 conv a 50 % pruning leaves at 28×28 took as long as the
16 → 16 conv it replaced (18 µs). Here the lanes hold 16 neighbouring output columns of one channel instead: each
FMA multiplies a contiguous run of the (padded) input row by one broadcast weight, and each input vector feeds all
output channels of the tile. That conv now takes 12.8 µs, 2.7 of them the transpose of its NCHW16c input; the conv
after it, reading the plain output, 8.8 µs instead of 10 (1 thread). The 50 % pruned embedded model went from
1.40x to 1.56-1.64x faster than the unpruned one (bench/prune.py). With 16 output channels the row form measured
no faster than the blocked conv, so it is kept to fewer. A 3×3 conv with 8 outputs from ≥ 16 inputs now goes
to Winograd instead (winograd.use_winograd: 9 µs for that 16 → 8 conv).

Stages, all in one kernel:

- ``spatial_transpose`` (blocked input only): NCHW[x]c → NCHW;
- ``spatial_pad``: the input, zero-padded in plain NCHW (width innermost), its width rounded up so every output
  row is a whole number of vectors;
- ``conv2d_spatial``: the conv over that padded width (a few columns past the edge are computed and dropped);
- ``conv2d_spatial_out``: the real columns, in plain NCHW, where FuseOps attaches the bias, activation and
  residual add.

The output stays plain NCHW; a conv reading fewer than ``lanes`` channels takes it as it is (``layout``
gives such a conv one-channel input blocks: its own inner loop broadcasts one input value at a time either way).
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.options import CpuOptions

CONV, OUT, PAD, TRANSPOSE = "conv2d_spatial", "conv2d_spatial_out", "spatial_pad", "spatial_transpose"
MIN_WIDTH = 12  # narrower rows would be mostly padding lanes
LANES = 16  # float32 lanes of AVX-512, the only vectors where a half-filled channel block runs at half rate


def applies(call: Any, isa: Isa, options: CpuOptions) -> bool:
    """Whether a Relax ``conv2d`` (still NCHW/OIHW) should be computed along rows: float, ungrouped, stride and
    dilation 1, 4 to lanes - 1 output channels on a LANES-wide target, rows at least MIN_WIDTH wide, and not
    one that Winograd computes (winograd.use_winograd: 8 outputs from ≥ 16 inputs, 3×3). On any vector width, a
    conv with 1 to 3 output channels: too few for a channel block (layout.choose_layouts leaves it NCHW), it ran
    as TVM's generic conv, unscheduled — MediaPipe pose landmarks' 8 → 1 segmentation head at 256×256 took
    10.9 ms of the model's 22 on an AVX2 core.

    Not a 1×1 conv with 4 or more outputs: with no window, the row form's gain (an input vector feeding every
    output of the tile over the taps) is small, and it pays for a padded copy of its whole input. On an Intel Xeon
    (AVX-512, 1 thread, ``bench/profile_cpu.py --cpu-option spatial=true|false``), row form vs blocked: 32 → 8 at
    96×96 1.15 ms vs 0.051, 16 → 8 at 28×28 17.3 µs vs 2.7, 8 → 8 at 20×20 4.0 vs 0.6; MediaPipe's full-range
    face detector, whose two 32 → 8 1×1 convs follow depthwise convs (blocked, the pairs fuse: dw_pointwise),
    4.3 → 1.9 ms of kernels."""
    lanes = isa.lanes
    data_shape = [int(d) for d in call.args[0].ty.shape]
    cout, _, k_h, k_w = (int(d) for d in call.args[1].ty.shape)
    if not options.spatial or not (lanes == LANES or cout < 4):
        return False
    attrs = call.attrs
    if int(attrs.groups) != 1 or any(int(v) != 1 for v in (*attrs.strides, *attrs.dilation)):
        return False
    if "float" not in str(call.args[0].ty.dtype):
        return False  # integer convs (QDQ → int8) keep their own kernels
    _, _, _, width = data_shape
    pad = [int(p) for p in attrs.padding]
    out_w = width + pad[1] + pad[3] - k_w + 1
    if not (1 <= cout < lanes and out_w >= MIN_WIDTH):
        return False
    if cout >= 4 and k_h == k_w == 1:
        return False  # 1×1 with a channel block's worth of outputs: blocked (see the docstring)
    from edgec.targets.cpu.kernels.winograd import tile_for

    return tile_for(call, options) is None  # 16 → 8 at 28×28: 9 µs as Winograd, 13 here


def row_tile(out_w: int, out_channels: int, lanes: int, registers: int = 32) -> tuple[int, int, int]:
    """(channels per tile, vectors per tile, padded row width). A tile of ``channels`` × ``vectors`` accumulators
    stays in registers; every broadcast weight feeds ``vectors`` FMAs and every input vector ``channels``. Up to
    12 channels make one tile, more are split into tiles of at most 8. Vectors: the fewest padding lanes, then the
    longer tile."""
    channels = out_channels if out_channels <= 12 else max(d for d in range(1, 9) if out_channels % d == 0)
    best = None
    for vectors in (3, 2, 1):
        if vectors * channels > registers - 8:
            continue
        span = vectors * lanes
        padded = -(-out_w // span) * span
        key = (padded, -vectors)
        if best is None or key < best[0]:
            best = (key, vectors, padded)
    assert best is not None
    return channels, best[1], best[2]


def conv2d_spatial(data, kernel, padding, out_dtype: str, lanes: int = LANES):
    """Stride-1 conv of NCHW or NCHW[x]c ``data`` with an OIHW ``kernel``; the result is plain NCHW, its rows
    padded to whole ``lanes``-wide vectors inside the kernel."""
    from tvm import te, tirx

    blocked = len(data.shape) == 5
    if blocked:
        n, ic_chunks, in_h, in_w, ic_bn = (int(d) for d in data.shape)
        channels = ic_chunks * ic_bn
    else:
        n, channels, in_h, in_w = (int(d) for d in data.shape)
        ic_bn = 1
    out_c, _, k_h, k_w = (int(d) for d in kernel.shape)
    top, left, bottom, right = (int(v) for v in padding)
    out_h, out_w = in_h + top + bottom - k_h + 1, in_w + left + right - k_w + 1
    _, _, padded_w = row_tile(out_w, out_c, lanes)
    zero, one = tirx.const(0, out_dtype), tirx.const(1, out_dtype)

    if blocked:  # NCHW[x]c → NCHW; with one-channel blocks only a view, else a transpose (see _schedule_pad)
        source = data
        data = te.compute((n, channels, in_h, in_w), lambda b, c, y, x: source[b, c // ic_bn, y, x, c % ic_bn],
                          name=TRANSPOSE)

    def padded(b, c, y, x):
        # The load stays outside the select, which only picks a factor: TVM's simplifier simplifies a select's
        # operands under its condition, where the clamp is the identity, and a load inside it read past the input
        # (32 lanes from a 20-wide last row: 12 floats past the buffer; see kernels/depthwise.py).
        iy, ix = y - top, x - left
        inside = tirx.all(iy >= 0, iy < in_h, ix >= 0, ix < in_w)
        iy, ix = tirx.max(tirx.min(iy, in_h - 1), 0), tirx.max(tirx.min(ix, in_w - 1), 0)
        return data[b, c, iy, ix].astype(out_dtype) * tirx.Select(inside, one, zero)

    pad_w = padded_w + k_w - 1  # the last output vector's last tap
    pad = te.compute((n, channels, in_h + top + bottom, pad_w), padded, name=PAD)
    rc = te.reduce_axis((0, channels), name="rc")
    ry = te.reduce_axis((0, k_h), name="ry")
    rx = te.reduce_axis((0, k_w), name="rx")
    conv = te.compute((n, out_c, out_h, padded_w),
                      lambda b, o, y, x: te.sum(pad[b, rc, y + ry, x + rx] * kernel[o, rc, ry, rx].astype(out_dtype),
                                                axis=[rc, ry, rx]), name=CONV)
    return te.compute((n, out_c, out_h, out_w), lambda b, o, y, x: conv[b, o, y, x], name=OUT)


def legalize(bb, call, isa: Isa, options: CpuOptions):
    """A conv the layout choice left with a plain NCHW output and OIHW kernel: either one that ``applies`` or one
    whose input arrives blocked (layout.choose_layouts gives such a call exactly this form)."""
    attrs = call.attrs
    if not (attrs.out_layout == "NCHW" and attrs.kernel_layout == "OIHW"
            and (attrs.data_layout != "NCHW" or applies(call, isa, options))):
        return None
    return bb.call_te(conv2d_spatial, call.args[0], call.args[1], list(attrs.padding),
                      str(attrs.out_dtype or call.args[0].ty.dtype), isa.lanes, primfunc_name_hint="conv2d_spatial")


class SpatialConv2d(sched.KernelRule):
    """Schedule of ``conv2d_spatial``: output rows in parallel; per row, the padded input is already there (one
    stage before, parallel over channel rows), the conv accumulates tiles of ``channels`` × ``vectors`` row
    vectors in registers over (input channel, kernel row, kernel column) (see row_tile), and the real columns are
    stored with the fused epilogue."""

    def schedule(self, sch: s_tir.Schedule, target: Target):
        conv, out, pad = (sched.find_block(sch, name) for name in (CONV, OUT, PAD))
        if conv is None or out is None or pad is None:
            return None
        isa = isa_of(target)
        lanes = isa.lanes
        leftover = sched.inline_epilogue(sch, out)
        n, oc, oh, ow, rc, ry, rx = sch.get_loops(conv)
        channels, vectors, _ = row_tile(sched.extent(sch, ow), sched.extent(sch, oc), lanes, isa.vector_registers)
        oc_t, oc_i = sch.split(oc, [None, channels])
        ow_t, ow_v, ow_l = sch.split(ow, [None, vectors, lanes])
        sch.reorder(n, oh, oc_t, ow_t, rc, ry, rx, oc_i, ow_v, ow_l)
        row = sch.fuse(n, oh)
        sch.parallel(row)
        sched.write_back_tile(sch, conv, ow_t, lanes, epilogue=False)
        sched.finish_reduction(sch, conv, rc, ow_l, [oc_i, ow_v], init_unroll=2)
        sch.reverse_compute_at(out, row)
        o_loops = sch.get_loops(out)
        sched.vectorize_innermost(sch, o_loops[-1], lanes, max_whole=4 * lanes)
        _schedule_pad(sch, pad)
        for other in leftover:
            sched.schedule_leftover(sch, other, lanes)
        return sch


def _schedule_pad(sch: s_tir.Schedule, pad) -> None:
    """The padded input, parallel over channel rows: a copy along rows, the row loop left to LLVM. Vectorized in
    TIR, the read's column index, clamped into the input per lane (the clamp keeps the read inside the buffer at
    the borders), became a scalar load and an insert per lane: ~3.5 ns an element. Left scalar, on an Intel Xeon
    (1 thread, bench/profile_cpu.py): 8 → 1 3×3 at 256² (MediaPipe's segmentation head) 0.555 → 0.292 ms,
    32 → 8 5×5 at 56² 0.433 → 0.352 ms, 64 → 12 3×3 at 60² 0.643 → 0.464 ms, 16 → 2 3×3 at 19² (batch 2)
    25 → 16.5 µs, the 3 → 4 5×5 first layer the same. Blocked (NCHW[x]c) input is first transposed to plain NCHW,
    parallel over rows, four pixels of one channel per (strided) vector read, the channel block unrolled. TVM has
    no in-register transpose; measured for 16×28×28: 2.7 µs with the copy, against 3.6 µs for a transposing pad
    (one contiguous read per pixel, stores channel by channel)."""
    n, c, y, x = sch.get_loops(pad)
    sch.parallel(sch.fuse(n, c, y))
    transpose = sched.find_block(sch, TRANSPOSE)
    if transpose is None:
        return
    block = int(sch.get(transpose).reads[0].source.shape[-1])
    if block == 1:
        sch.compute_inline(transpose)
        return
    n, c, y, x = sch.get_loops(transpose)
    c_o, c_i = sch.split(c, [None, block])
    x_o, x_i = sch.split(x, [None, sched.divisor_at_most(sched.extent(sch, x), 4)])
    sch.reorder(n, y, c_o, x_o, c_i, x_i)
    sch.parallel(sch.fuse(n, y))
    sch.unroll(c_i)
    sch.vectorize(x_i)
