"""Convs whose output channels only fill half vectors, computed in full-vector blocks on zero-padded weights,
storing only their real channels.

Why: a layer with 24 or 40 output channels gets 8-channel blocks, and 8-lane FMAs run at half the rate of full ones
on a 16-lane target (144→24 1×1 at 56×56: 8-lane blocks 186 µs; the same layer with 32 channels in 16-lane blocks
134 µs). So the conv is computed in full-vector blocks and only the real channels are stored, in the layout the
next layer reads; the consumer is unchanged. Worth it while padding adds at most a third.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.blocked import BLOCKED, is_blocked
from edgec.targets.cpu.options import CpuOptions

NARROW = "conv2d_NCHWc_narrow"  # the stage that stores a widened conv's real channels


def kernel_channels(kernel) -> int:
    """Output channels of a blocked conv kernel expression (oc_chunk × oc_bn)."""
    shape = kernel.ty.shape
    return int(shape[0]) * int(shape[-1])


def widened_block(kernel, out_dtype: str, isa: Isa, options: CpuOptions) -> int | None:
    """Full-vector block to compute a float conv whose output channels only fill half vectors, or None."""
    if not options.widen or not out_dtype.startswith("float"):
        return None
    lanes, oc_bn, channels = isa.lanes, int(kernel.ty.shape[-1]), kernel_channels(kernel)
    if oc_bn >= lanes or channels % oc_bn:
        return None
    padded = -(-channels // lanes) * lanes
    return lanes if 3 * padded <= 4 * channels else None


def widen_kernel(kernel, lanes: int):
    """(oc_chunk, ic_chunk, kh, kw, ic_bn, oc_bn) → (⌈OC/lanes⌉, ic_chunk, kh, kw, ic_bn, lanes), zero-padded."""
    from tvm import te

    oc_chunks, ic_chunks, k_h, k_w, ic_bn, oc_bn = (int(d) for d in kernel.shape)
    channels = oc_chunks * oc_bn

    def value(o, c, h, w, i, lane):
        oc = o * lanes + lane
        return tirx.if_then_else(oc < channels, kernel[tirx.min(oc, channels - 1) // oc_bn, c, h, w, i,
                                                       tirx.min(oc, channels - 1) % oc_bn],
                                 tirx.const(0, kernel.dtype))

    return te.compute((-(-channels // lanes), ic_chunks, k_h, k_w, ic_bn, lanes), value, name="kernel_widened")


def conv2d_nchwc_narrowed(data, wide_kernel, strides, padding, dilation, data_layout: str, out_layout: str,
                          channels: int, out_dtype: str):
    """TOPI's conv2d_NCHWc on the widened kernel, then the real channels stored in ``out_layout``'s blocks."""
    from tvm import te, topi

    lanes = int(wide_kernel.shape[-1])
    wide = topi.nn.conv2d_NCHWc(data, wide_kernel, strides, padding, dilation, data_layout, f"NCHW{lanes}c",
                                out_dtype)
    out_bn = int(BLOCKED.match(out_layout).group(1))
    n, _, height, width, _ = (int(d) for d in wide.shape)
    ratio = lanes // out_bn  # both powers of two: a wide block holds ``ratio`` narrow blocks
    return te.compute((n, channels // out_bn, height, width, out_bn),
                      lambda b, c, y, x, i: wide[b, c // ratio, y, x, c % ratio * out_bn + i], name=NARROW)


def legalize(bb, call, isa: Isa, options: CpuOptions):
    attrs = call.attrs
    if not is_blocked(attrs) or int(attrs.groups) != 1:
        return None
    out_dtype = str(attrs.out_dtype or call.args[0].ty.dtype)
    wide = widened_block(call.args[1], out_dtype, isa, options)
    if not wide:
        return None
    kernel = bb.emit_te(widen_kernel, call.args[1], wide, primfunc_name_hint="conv_kernel_widen")
    return bb.call_te(conv2d_nchwc_narrowed, call.args[0], kernel, list(attrs.strides), list(attrs.padding),
                      list(attrs.dilation), attrs.data_layout, attrs.out_layout, kernel_channels(call.args[1]),
                      out_dtype, primfunc_name_hint="conv2d_NCHWc")


class WidenedConv2dNCHWc(sched.KernelRule):
    """The store stage drives the loops, and the conv is a register tile computed at each group of ``reg_n``
    output columns for all (at most three) wide blocks at once."""

    def schedule(self, sch: s_tir.Schedule, target: Target):
        conv, narrow = sched.find_block(sch, "conv2d_NCHWc"), sched.find_block(sch, NARROW)
        if conv is None or narrow is None or len(sch.get_loops(conv)) != 8:
            return None
        schedule_widened(sch, conv, narrow, target, self.options)
        return sch


def schedule_widened(sch: s_tir.Schedule, conv, narrow, target: Target, options: CpuOptions):
    """Loops of a widened conv and its store stage; returns the parallel loop over output rows."""
    isa = isa_of(target)
    lanes = isa.lanes
    leftover = sched.inline_epilogue(sch, narrow)
    n, c, y, x, i = sch.get_loops(narrow)[-5:]
    wide_blocks = sched.extent(sch, sch.get_loops(conv)[1])
    width = sched.extent(sch, x)
    inline_pad = sched.inline_padding(sch, conv, width, options.small_conv_macs)  # before the conv is a local tile
    reg_n = sched.divisor_at_most(width, max(1, min(16, (isa.vector_registers - wide_blocks - 1) // wide_blocks)))
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
    sched.finish_reduction(sch, conv, ic_o, ocb, [ow, occ], init_unroll=2)
    sched.schedule_padding(sch, conv, lanes, inline=inline_pad)
    for other in leftover:
        sched.schedule_leftover(sch, other, lanes)
    return row
