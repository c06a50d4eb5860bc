"""uint8 × int8 → int32 conv on x86 without VNNI (TOPI's conv2d_NCHWc_int8 compute, 2-deep): each step
broadcasts a pair of input channels, zero-extended to 16 bits, against an output-channel block (8 on AVX2, 16 on
AVX-512) × 2 weights sign-extended to 16 bits, and vpmaddwd sums the pairs into int32 — exact for every
uint8 × int8 value (the saturating vpmaddubsw is not). Its own register tile (:func:`register_tile`), the same
fused requantizing write-back as the VNNI kernel.

Why: without it an int8 conv on an AVX2 host ran as the generic widening int32 conv, and the int8 artifact took
4–5× the fp32 artifact's time (ResNet-18 on Zen 3: 153 vs 32 ms, bench/int8_speed.py). Applies where the target
has AVX2 (or AVX-512F) and not AVX-512 VNNI (those take kernels/int8_vnni.py), whatever its name. The AVX-512
form is checked by its assembly and, on AVX-512 hosts, by running it; it has not been timed (no AVX-512 host
without VNNI here)."""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.blocked import is_blocked
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.kernels.int8_vnni import dot_conv_loops, legalize_dot_conv, schedule_dot_conv
from edgec.targets.cpu.options import CpuOptions

DEPTH = 2


def lanes(isa: Isa) -> int:
    """int32 lanes of the vpmaddwd this target has: 16 with AVX-512F, else 8."""
    return 16 if isa.avx512 else 8


def applies(call, isa: Isa) -> bool:
    """uint8 activations × int8 weights, output blocks of one vector, input blocks of whole pairs."""
    data, kernel = call.args[0].ty, call.args[1].ty
    if str(data.dtype) != "uint8" or str(kernel.dtype) != "int8" or not isa.int8_pairs:
        return False
    ic_bn, oc_bn = int(data.shape[-1]), int(kernel.shape[-1])
    return ic_bn % DEPTH == 0 and oc_bn == lanes(isa)


def legalize(bb, call, isa: Isa, options: CpuOptions):
    attrs = call.attrs
    if not is_blocked(attrs) or int(attrs.groups) != 1 or not applies(call, isa):
        return None
    return legalize_dot_conv(bb, call, DEPTH, "conv2d_NCHWc_int8_avx2")


def register_tile(width: int, oc_chunks: int) -> tuple[int, int]:
    """(output pixels, output blocks) per tile: up to 8 blocks sharing one broadcast pair, then pixels up to 8
    accumulators; whole divisors (tensorize wants whole tiles). Measured on Zen 3 (8-channel blocks), 1 thread,
    3×3 convs 64×56² … 512×7² (GMAC/s, ±15 % noise): 1×8 47–52 everywhere; the float conv's 2×4 40–54 but
    no tile at width 7 (7×1: 32); 4×2 36–45; 2×8 and 1×16 spill (15–50). A step of a 1×8 tile is 26 vector uops
    (broadcast 2, weight sign-extensions 8, vpmaddwd 8, adds 8) for 128 MACs: ~19 MACs a cycle on Zen 3's four
    vector pipes, what the kernel reaches. Weights pre-widened to int16 (no sign-extensions) ran no faster:
    twice the bytes from L2."""
    oc_tile = sched.divisor_at_most(oc_chunks, 8)
    return sched.divisor_at_most(width, max(1, 8 // oc_tile)), oc_tile


class Int8Conv2dNCHWcAVX2(sched.KernelRule):
    def schedule(self, sch: s_tir.Schedule, target: Target):
        isa = isa_of(target)
        found = dot_conv_loops(sch, lanes(isa), DEPTH) if isa.int8_pairs else None
        if found is None:
            return None
        from edgec.targets.cpu.intrinsics import register_pair_local_acc

        conv, loops = found
        reg_n, oc_tile = register_tile(sched.extent(sch, loops[3]), sched.extent(sch, loops[1]))
        return schedule_dot_conv(sch, conv, loops, reg_n, oc_tile, isa, register_pair_local_acc(lanes(isa)))
