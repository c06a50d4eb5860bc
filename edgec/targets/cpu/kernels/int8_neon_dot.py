"""int8 conv with the Arm dot product (ARMv8.2-A ``dotprod``: sdot): each sdot multiplies 4 input channels (one
broadcast 32-bit word) by a 4 output channels × 4 weight block and accumulates 4 int32 — four times the MACs of a
NEON fp32 fma, as vpdpbusd is on x86 (kernels/int8_vnni.py, whose 4-deep kernel repack, loop order, register
tile and fused requantizing write-back this kernel shares; the blocks are 4 wide, NEON's int32 lanes).

sdot takes signed bytes on both sides. A TFLite int8 model's activations are signed already; edgec's own QDQ
models (onnxruntime's convention) have uint8 activations, so the kernel reads each uint8 x as the int8 x − 128 —
one eor of the broadcast word's top bits — and adds 128·Σw per output channel (a constant, folded at build time)
in the fused write-back: Σ x·w = Σ (x − 128)·w + 128·Σ w exactly, the conv's zero padding included (a padded 0 reads
as −128 and the 128·Σw over every tap puts it back).

Why: without it an int8 conv on Arm ran as the generic widening int32 conv (scalar-ish code), so int8 artifacts
were no faster than fp32 there. Applies where the target has the ``dotprod`` feature (cortex-a55/a76/a78, Neoverse,
Apple M, …), whatever its name; checked by its assembly and run exactly under the emulated aarch64 device. Not timed
on a board here."""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.blocked import is_blocked
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.kernels.int8_vnni import dot_conv_loops, kernel_deep, legalize_dot_conv, schedule_dot_conv
from edgec.targets.cpu.options import CpuOptions

DEPTH = LANES = 4  # sdot: 4 bytes deep, 4 int32 lanes
NAME = "conv2d_NCHWc_int8_sdot"
SHIFT = 128  # uint8 x is read as the int8 x − 128


def applies(call, isa: Isa) -> bool:
    """uint8 or int8 activations × int8 weights on a target with the dot product, 4-channel blocks."""
    data, kernel = call.args[0].ty, call.args[1].ty
    if not isa.dotprod or str(data.dtype) not in ("uint8", "int8") or str(kernel.dtype) != "int8":
        return False
    ic_bn, oc_bn = int(data.shape[-1]), int(kernel.shape[-1])
    return ic_bn % DEPTH == 0 and oc_bn == LANES


def legalize(bb, call, isa: Isa, options: CpuOptions):
    attrs = call.attrs
    if not is_blocked(attrs) or int(attrs.groups) != 1 or not applies(call, isa):
        return None
    if str(call.args[0].ty.dtype) == "int8":
        return legalize_dot_conv(bb, call, DEPTH, NAME)
    kernel = bb.emit_te(kernel_deep, call.args[1], DEPTH, primfunc_name_hint="int8_kernel_repack")
    sums = bb.emit_te(shifted_weight_sums, call.args[1], primfunc_name_hint="int8_kernel_sums")
    conv = bb.emit_te(shifted_conv, call.args[0], kernel, [int(s) for s in attrs.strides],
                      [int(p) for p in attrs.padding], [int(d) for d in attrs.dilation], primfunc_name_hint=NAME)
    return bb.call_te(add_sums, conv, sums, primfunc_name_hint="int8_shift_back")  # fused into the write-back


def add_sums(conv, sums):
    """Σ (x − 128)·w + 128·Σw per output channel: the shifted conv's integers back to Σ x·w."""
    from tvm import te

    return te.compute(conv.shape, lambda b, o, y, x, ob: conv[b, o, y, x, ob] + sums[o, ob], name="shift_back")


def shifted_weight_sums(kernel):
    """128 · Σ w per output channel, (oc_chunks, oc_bn) int32, of the blocked (…, ic_bn, oc_bn) kernel: what
    :func:`add_sums` adds back to the shifted conv (a constant, folded at build time)."""
    from tvm import te

    oc_chunks, ic_chunks, k_h, k_w, ic_bn, oc_bn = (int(d) for d in kernel.shape)
    c, h, w, i = (te.reduce_axis((0, n), name=f"r{n_}") for n_, n in
                  enumerate((ic_chunks, k_h, k_w, ic_bn)))
    return te.compute((oc_chunks, oc_bn), lambda o, ob: te.sum(
        kernel[o, c, h, w, i, ob].astype("int32") * SHIFT, axis=[c, h, w, i]), name="int8_kernel_sums")


def shifted_conv(data, kernel, strides, padding, dilation):
    """uint8 NCHWc data × the 4-deep int8 kernel as Σ (x − 128)·w: TOPI's conv2d_NCHWc_int8 loops (the same 10
    loops and block name, so :func:`dot_conv_loops` finds it) with the activations shifted into sdot's signed
    range. (A reduction ``init`` would have saved the add, but TVM's create_prim_func drops it.)"""
    from tvm import te, topi
    from tvm.topi.nn.utils import get_pad_tuple

    n, _, in_h, in_w, _ = (int(d) for d in data.shape)
    oc_chunks, ic_chunks, k_h, k_w, _, oc_bn, depth = (int(d) for d in kernel.shape)
    (s_h, s_w), (d_h, d_w) = strides, dilation
    top, left, bottom, right = get_pad_tuple(padding, ((k_h - 1) * d_h + 1, (k_w - 1) * d_w + 1))
    padded = (topi.nn.pad(data, (0, 0, top, left, 0), (0, 0, bottom, right, 0), name="data_pad")
              if top or left or bottom or right else data)
    out_h = (in_h + top + bottom - (k_h - 1) * d_h - 1) // s_h + 1
    out_w = (in_w + left + right - (k_w - 1) * d_w - 1) // s_w + 1
    r_h, r_w = te.reduce_axis((0, k_h), name="kh"), te.reduce_axis((0, k_w), name="kw")
    r_c = te.reduce_axis((0, ic_chunks), name="ic_outer")
    r_f = te.reduce_axis((0, int(kernel.shape[4])), name="ic_f_inner")
    r_s = te.reduce_axis((0, depth), name="ic_s_inner")
    return te.compute(
        (n, oc_chunks, out_h, out_w, oc_bn),
        lambda b, o, y, x, ob: te.sum(
            (padded[b, r_c, y * s_h + r_h * d_h, x * s_w + r_w * d_w, r_f * depth + r_s].astype("int32") - SHIFT)
            * kernel[o, r_c, r_h, r_w, r_f, ob, r_s].astype("int32"),
            axis=[r_h, r_w, r_c, r_f, r_s]),
        name="conv2d_NCHWc_int8")


def register_tile(width: int, oc_chunks: int, registers: int) -> tuple[int, int]:
    """(output pixels, output blocks) per tile: the most accumulators such that they, one weight vector per block
    and one broadcast per pixel fit the registers (each pixel's eor'd word is its own register, unlike the FMA
    conv's one reused broadcast); ties to the fewer loads; whole divisors (tensorize wants whole tiles). What
    sched.register_tile chose for the FMA conv (14×2 at width 56) spilled 69 times per loop step; llvm-mca
    (cortex-a76, the 64→64 3×3 conv at 56×56) puts it at 10 MACs a cycle and this 4×4 tile at 25 (peak 32)."""
    best, best_key = (1, 1), (0, 0)
    for reg_n in (d for d in range(1, min(width, 8) + 1) if width % d == 0):
        for oc_tile in (d for d in range(1, min(oc_chunks, 8) + 1) if oc_chunks % d == 0):
            if reg_n * oc_tile + reg_n + oc_tile > registers:
                continue
            key = (reg_n * oc_tile, -(reg_n + oc_tile))
            if key > best_key:
                best, best_key = (reg_n, oc_tile), key
    return best


class Int8Conv2dNCHWcNeonDot(sched.KernelRule):
    def schedule(self, sch: s_tir.Schedule, target: Target):
        isa = isa_of(target)
        found = dot_conv_loops(sch, LANES, DEPTH) if isa.dotprod else None
        if found is None:
            return None
        from edgec.targets.cpu.intrinsics import register_sdot_local_acc

        conv, loops = found
        data = next(r.source for r in sch.get(conv).reads if len(r.source.shape) == 5)  # the activations
        reg_n, oc_tile = register_tile(sched.extent(sch, loops[3]), sched.extent(sch, loops[1]),
                                       isa.vector_registers)
        return schedule_dot_conv(sch, conv, loops, reg_n, oc_tile, isa, register_sdot_local_acc(str(data.dtype)))
