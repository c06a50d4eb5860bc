"""uint8 × int8 → int32 conv on AMX tiles (Sapphire/Granite Rapids): each ``tdpbusd`` computes a block of
``rows`` output pixels along a row × 16 output channels × 64 input channels (16 K MACs; a vpdpbusd does 64).
onnxruntime's MLAS uses AMX on these CPUs, so a VNNI kernel there leaves most of the int8 throughput unused.
The output-channel block is 16 on AMX targets (they have AVX-512: 16-channel blocks); the emulated kernel also
takes the 8-channel blocks of AVX2 hosts.

Compute: the input is copied once per call into a packed, zero-padded channels-last form (n, padded height,
stride phase, padded width / stride, channels rounded up to a multiple of 64) — a tile row of A is 64
consecutive channels of one pixel, the conv's zero padding is written out, channels past the conv's own are
zero, and each row is split into ``s`` phases for a stride ``s`` so that the pixels of a tile, ``s`` apart in the
input, are consecutive in the copy (one row stride for any stride). The weights are repacked at compile time to
(oc/16, kh, kw, ic/64, 16, 16, 4) with zero rows for the padded channels: the B tiles of one tap, all its
64-channel steps, contiguous. Zero channels on both sides add nothing, so the result is the conv's exactly.

Schedule: parallel over (batch, output-channel blocks, output rows), the row in tiles of ``rows`` pixels (the
largest divisor of the row width up to 16). A task keeps a grid of accumulator tiles (:func:`accumulator_grid`:
2 pixel tiles × 2 channel blocks where the shape allows) for all taps and 64-channel steps: per (tap, step) one
call of the tile intrinsic (amx_intrin.py) per accumulator, whose A and B tiles the calls of a grid share
(amx_state.py: configured once per task, the accumulators loaded before the taps and stored after them, each A
and B tile loaded once per step); then the tiles are written back once through the fused int32 epilogue
(requantize, bias, ReLU, residual) as every other conv kernel here.

Applies with ``CpuOptions.amx`` (on by default) where the target has ``amx-int8`` and ``amx-tile`` (never by CPU
name), or with ``CpuOptions.amx_emulate`` (the same kernel with the block as plain loops: how it is checked on a
host without AMX), to ungrouped uint8 × int8 convs with output channels in blocks of 16 (or 8), at least 64
input channels (fewer would be mostly zero padding: those stay on the VNNI kernel) and rows of at least MIN_ROWS
pixels. Speed on an Intel Xeon with AMX, 1 thread (bench/int8_amx.py, per layer against the VNNI kernel):
3×3 64→64 at 56² 0.57×, 128→128 at 28² 0.48×, 256→256 at 14² 0.43×, stride 2 128→256 0.60×, 1×1 256→1024 at 14²
0.72×; whole ResNet-18 int8 0.46× (bench/int8_speed.py).
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.amx_intrin import AMX, COLS, DEPTH, EMULATE, register_amx_dot
from edgec.targets.cpu.amx_state import TileGrid, hold_tiles
from edgec.targets.cpu.blocked import is_blocked
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.options import CpuOptions

BLOCK = "conv2d_NCHWc_int8_amx"
PACK = "amx_input_pack"
MIN_ROWS = 4  # a tile of fewer pixels does too little per configured tdpbusd (and a prime width has no divisor)
MIN_CHANNELS = DEPTH


def enabled(isa: Isa, options: CpuOptions) -> bool:
    """The AMX kernels are asked for (``options.amx``) and the target has AMX int8 tiles, or the emulated block
    stands in for them."""
    return (options.amx and isa.amx_int8) or options.amx_emulate


def tile_rows(width: int) -> int:
    """Pixels per tile: the largest divisor of the output row up to 16."""
    return sched.divisor_at_most(width, 16)


def applies(call, isa: Isa, options: CpuOptions) -> bool:
    """A blocked, ungrouped uint8 × int8 conv with 16-channel output blocks that the AMX tiles fit."""
    attrs = call.attrs
    if not enabled(isa, options) or not is_blocked(attrs) or int(attrs.groups) != 1:
        return False
    data, kernel, out = call.args[0].ty, call.args[1].ty, call.ty
    if str(data.dtype) != "uint8" or str(kernel.dtype) != "int8" or len(kernel.shape) != 6:
        return False
    try:
        [int(d) for d in (*data.shape, *out.shape)]
    except TypeError:  # a dynamic dimension: the packed copy and the tiles need static ones
        return False
    channels = int(data.shape[1]) * int(data.shape[-1])
    return (int(kernel.shape[-1]) in COLS and channels >= MIN_CHANNELS
            and tile_rows(int(out.shape[3])) >= MIN_ROWS)


def accumulator_grid(row_tiles: int, out_rows: int, channel_blocks: int) -> tuple[int, bool, int]:
    """(pixel groups, whether they are output rows rather than tiles of one row, output-channel blocks) of the
    accumulator tiles a task keeps (amx_state.TileGrid): 2 channel blocks where they are even, and 2 pixel
    groups — two tiles of a row where the row has an even number of them, else two output rows — so that
    each A tile serves two B tiles and each B tile two A tiles (4 C + 2 A + 2 B: all 8 tiles)."""
    if row_tiles % 2 == 0:
        groups, by_rows = 2, False
    else:
        groups, by_rows = (2, True) if out_rows % 2 == 0 else (1, False)
    return groups, by_rows, (2 if channel_blocks % 2 == 0 else 1)


def kernel_tiles(kernel):
    """(oc/16, icc, kh, kw, ic_bn, 16) → (oc/16, kh, kw, ⌈ic/64⌉, 16, 16, 4): B tiles in the 4-deep packing,
    zero past the conv's input channels (a constant: folded at compile time)."""
    from tvm import te, tirx

    oc_chunks, ic_chunks, k_h, k_w, ic_bn, oc_bn = (int(d) for d in kernel.shape)
    channels = ic_chunks * ic_bn
    steps = -(-channels // DEPTH)

    def value(o, h, w, c, f, ob, s):
        ch = c * DEPTH + f * 4 + s
        inside = tirx.all(ch < channels)
        return tirx.if_then_else(inside, kernel[o, tirx.min(ch, channels - 1) // ic_bn, h, w,
                                                tirx.min(ch, channels - 1) % ic_bn, ob], tirx.const(0, "int8"))

    return te.compute((oc_chunks, k_h, k_w, steps, DEPTH // 4, oc_bn, 4), value, name="amx_kernel_tiles")


def conv_amx(data, kernel, strides, padding, dilation, out_dtype: str):
    """The conv on the packed input (see the module docstring): ``data`` (n, icc, h, w, ic_bn) uint8,
    ``kernel`` from :func:`kernel_tiles`; → (n, oc/16, oh, ow, 16) ``out_dtype``."""
    from tvm import te, tirx

    n, ic_chunks, height, width, ic_bn = (int(d) for d in data.shape)
    oc_chunks, k_h, k_w, steps, _, oc_bn, _ = (int(d) for d in kernel.shape)
    s_h, s_w = (int(s) for s in strides)
    d_h, d_w = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    channels = ic_chunks * ic_bn
    out_h = (height + top + bottom - (k_h - 1) * d_h - 1) // s_h + 1
    out_w = (width + left + right - (k_w - 1) * d_w - 1) // s_w + 1
    padded_h, padded_w = height + top + bottom, width + left + right
    phase_w = -(-padded_w // s_w)

    def pack(b, y, p, q, ch):
        # clamped reads (the select never reads outside ``data``), the channel clamped by whole blocks only, so
        # that a vector of one block's channels is one contiguous load (:func:`schedule_pack`)
        iy, ix = y - top, q * s_w + p - left
        inside = tirx.all(ch < channels, iy >= 0, iy < height, ix >= 0, ix < width)
        block = tirx.min(ch // ic_bn, ic_chunks - 1)
        iy_, ix_ = (tirx.min(tirx.max(v, 0), hi) for v, hi in ((iy, height - 1), (ix, width - 1)))
        return tirx.if_then_else(inside, data[b, block, iy_, ix_, ch % ic_bn], tirx.const(0, "uint8"))

    packed = te.compute((n, padded_h, s_w, phase_w, steps * DEPTH), pack, name=PACK)
    ry = te.reduce_axis((0, k_h), name="kh")
    rx = te.reduce_axis((0, k_w), name="kw")
    rc = te.reduce_axis((0, steps), name="ic_outer")
    rf = te.reduce_axis((0, DEPTH // 4), name="ic_f_inner")
    rs = te.reduce_axis((0, 4), name="ic_s_inner")
    return te.compute(
        (n, oc_chunks, out_h, out_w, oc_bn),
        lambda b, o, y, x, ob: te.sum(
            packed[b, y * s_h + ry * d_h, (rx * d_w) % s_w, x + (rx * d_w) // s_w, rc * DEPTH + rf * 4 + rs]
            .astype(out_dtype) * kernel[o, ry, rx, rc, rf, ob, rs].astype(out_dtype), axis=[ry, rx, rc, rf, rs]),
        name=BLOCK)


def legalize(bb, call, isa: Isa, options: CpuOptions):
    if not applies(call, isa, options):
        return None
    attrs = call.attrs
    kernel = bb.emit_te(kernel_tiles, call.args[1], primfunc_name_hint="amx_kernel_repack")
    return bb.call_te(conv_amx, call.args[0], kernel, list(attrs.strides), list(attrs.padding),
                      list(attrs.dilation), str(attrs.out_dtype or "int32"), primfunc_name_hint=BLOCK)


def schedule_pack(sch: s_tir.Schedule, pack) -> None:
    """The input copy: parallel over (batch, padded row), each pixel's channels in vectors of one input block
    (contiguous bytes of ``data``). Vectors of the copy's 64 channels would span blocks that lie a plane apart
    in the blocked input, which LLVM gathers byte by byte: that copy took more than half of the 64 → 64 conv at
    56² (the kernel 0.242 → 0.108 ms on a Xeon with AMX, bench/profile_cpu.py)."""
    data = sch.get(pack).reads[0].source
    b, y, _, _, ch = sch.get_loops(pack)
    sch.parallel(sch.fuse(b, y))
    _, lanes = sch.split(ch, [None, int(data.shape[-1])])
    sch.vectorize(lanes)


class Int8Conv2dAMX(sched.KernelRule):
    """The schedule of :func:`conv_amx`, with the tile block as AMX instructions or, with
    ``options.amx_emulate``, as the plain loops of the same intrinsic description."""

    def schedule(self, sch: s_tir.Schedule, target: Target):
        conv = sched.find_block(sch, BLOCK)
        if conv is None or len(sch.get_loops(conv)) != 10:
            return None
        isa = isa_of(target)
        n, occ, oh, ow, ocb, kh, kw, ic_o, ic_f, ic_s = sch.get_loops(conv)
        rows, cols = tile_rows(sched.extent(sch, ow)), sched.extent(sch, ocb)
        m_tiles, by_rows, n_tiles = accumulator_grid(sched.extent(sch, ow) // rows, sched.extent(sch, oh),
                                                     sched.extent(sch, occ))
        intrinsic = register_amx_dot(rows, cols, 1, EMULATE if self.options.amx_emulate else AMX)
        occ, o = sch.split(occ, [None, n_tiles])
        if by_rows:
            oh, t = sch.split(oh, [None, m_tiles])
            ow_o, ow_i = sch.split(ow, [None, rows])
        else:
            ow_o, t, ow_i = sch.split(ow, [None, m_tiles, rows])
        sch.reorder(n, occ, oh, ow_o, kh, kw, ic_o, o, t, ow_i, ocb, ic_f, ic_s)
        sch.parallel(sch.fuse(n, occ, oh))
        sched.write_back_tile(sch, conv, ow_o, isa.lanes)
        init = sch.decompose_reduction(conv, kh)
        init_loops = sch.get_loops(init)
        sch.vectorize(init_loops[-1])
        pack = sched.find_block(sch, PACK)
        if pack is not None:
            schedule_pack(sch, pack)
        sch.tensorize(ow_i, intrinsic)
        grid = TileGrid(rows, cols, m_tiles, n_tiles, sch.get(t).loop_var, sch.get(o).loop_var)
        sch.unroll(o)
        sch.unroll(t)
        return sch if self.options.amx_emulate else hold_tiles(sch, grid)
