"""8-bit adder convolution: Σ|qx − qw| with x86's ``vpsadbw``, 32 (AVX2) or 64 (AVX-512BW) byte differences per
instruction, or on AArch64 with the dot product ``uabd`` + ``udot`` (16 per two instructions).

Why: the float adder kernel (adder_conv.py) needs two vector operations (max, fma) per 8 or 16 terms, while
edgec's float conv of the same shape runs as Winograd or one FMA per term, so the float adder layer stays 3-5×
slower than the conv it replaces. An adder layer quantized on one grid for its input and weights
(:mod:`edgec.quantization.adder_qdq`: x = s·(qx − z), w = s·(qw − z)) is y = b − s·Σ|qx − qw|, and x86's
``vpsadbw`` sums |a − b| over each 8 bytes of two vectors into one 64-bit lane: one instruction (+ one add) per
32 or 64 terms.

Layout: input channels in groups of 8 innermost, so one 8-byte group of a pixel is one 64-bit word.

* padding phase: x [N, C, H, W] (uint8, or int8 read as x ^ 0x80: |a − b| is unchanged when both sides flip)
  → scratch ``xp`` [N, C/8, Hp, Wp, 8], the spatial border filled with z (float 0), channels past C with 0;
* conv phase, a parallel task per output row: a register tile of ``positions`` columns × ``vectors`` vectors of
  G output channels (G = 4 in a ymm, 8 in a zmm); per (channel group, kh, kw) each position's 8 bytes are
  broadcast to every 64-bit lane and ``vpsadbw``-ed against the weight vector [G channels × 8 bytes], laid out at
  compile time as [O/G, C/8, kh, kw, G·8] (padding channels 0 on both sides: |0 − 0| = 0);
* epilogue: y = b[o] − s·float(acc), the accumulator exact in int32 (≤ 255·C·kh·kw).

The result equals onnxruntime running the QDQ model (float arithmetic on the dequantized values) up to float32
rounding of its sum (tests/test_adder_int8.py). On AArch64 the same loop nest, 16-byte vectors of 2 channels:
``uabd`` gives the 16 byte differences and ``udot`` against a vector of ones sums each 4 into a 32-bit lane (two
lanes per channel, added in the epilogue); LLVM's float adder loop there is ``fmaxnm`` + ``fmla`` per 4 terms.
Elsewhere (no AVX2, no dot product, CUDA) the float adder kernel takes the layer, reading the dequantized
weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgec.targets.cpu.kernels.adder_conv import adder_conv_parts
from edgec.targets.cpu.kernels.op_kernel import ConvShape, TilePlan, dequantized, op_kernel_pass, scheduled

CONV_SYMBOL = "edgec_adder_int8"
GROUP = 8  # input channels per 64-bit word: vpsadbw's unit


@dataclasses.dataclass(frozen=True)
class Tiling:
    """``bytes``: vector width (16: NEON, 32: ymm, 64: zmm); a tile of ``positions`` output columns × ``vectors``
    vectors of bytes/8 output channels. ``neon``: the step is ``uabd`` + ``udot`` (AArch64 with the dot product)
    instead of ``vpsadbw``."""

    bytes: int
    vectors: int
    positions: int
    neon: bool = False

    @property
    def channels(self) -> int:
        """Output channels per vector: one per 64-bit lane."""
        return self.bytes // 8

    @property
    def lanes(self) -> int:
        """What :class:`op_kernel.TilePlan` counts output channels per vector by."""
        return self.channels

    @property
    def intrinsic(self) -> str:
        if self.neon:
            return "llvm.aarch64.neon.udot.v4i32.v16i8"
        return "llvm.x86.avx512.psad.bw.512" if self.bytes == 64 else "llvm.x86.avx2.psad.bw"

    @classmethod
    def for_isa(cls, isa: Any, o: int, ow: int) -> Tiling:
        """x86: zmm where the target has AVX-512BW, else ymm; two channel vectors where the layer has that many
        channels. Positions: at most 5 with ymm (10 of 16 registers accumulate; the weight vectors are memory
        operands, each broadcast pixel takes a register) — on Zen 3, 256→256 at 14×14 ran 0.86-0.96 ms at 2 × 4
        to 2 × 7 and 1.06-1.37 ms at 3 × 2 to 4 × 3 or 1 × 12 (and 128 at 28², 64 at 56² alike); at most 8 with
        zmm (16 of 32). AArch64: 2 channels a vector, four vectors where there are 8 channels, at most 4
        positions (16 of 32 registers accumulate; the loop holds the 4 weight vectors, a broadcast pixel, the
        ``uabd`` result and the ones vector besides). Of the most positions and one less, the one that wastes
        fewer columns of a row (smaller tiles lose more than they save: 2 × 2 took 1.06 ms on that layer)."""
        if isa.arch == "aarch64":
            size, wide_most, vectors_most = 16, 4, 4
        else:
            wide = isa.has("avx512bw")
            size, wide_most, vectors_most = (64, 8, 2) if wide else (32, 5, 2)
        vectors = max(1, min(vectors_most, -(-o // (size // 8))))
        most = min(wide_most, ow)
        best = min(range(max(1, most - 1), most + 1), key=lambda p: (-(-ow // p) * p, -p))
        return cls(bytes=size, vectors=vectors, positions=best, neon=isa.arch == "aarch64")


@dataclasses.dataclass(frozen=True)
class Plan(TilePlan):
    """The buffers' sizes (:class:`op_kernel.TilePlan`) and the 8-byte channel groups."""

    @property
    def c_groups(self) -> int:
        return -(-self.shape.c // GROUP)

    @property
    def packed_w_shape(self) -> tuple[int, ...]:
        s = self.shape
        return (self.o_padded // self.tiling.channels, self.c_groups, s.kh, s.kw, self.tiling.bytes)


def pack_weights(q: np.ndarray, plan: Plan) -> np.ndarray:
    """uint8 [O, C, kh, kw] → [O/G, C/8, kh, kw, G·8]: byte g·8 + k of a vector is output channel g's input
    channel 8·group + k; padding channels (past C or O) 0."""
    s, g = plan.shape, plan.tiling.channels
    full = np.zeros((plan.o_padded, plan.c_groups * GROUP, s.kh, s.kw), np.uint8)
    full[: s.o, : s.c] = q
    blocked = full.reshape(plan.o_padded // g, g, plan.c_groups, GROUP, s.kh, s.kw)
    return np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 1, 3).reshape(plan.packed_w_shape))


def epilogue_constant(bias: np.ndarray, scale: float, plan: Plan) -> np.ndarray:
    """b[o] zero-padded to the tiled channel count, then −s: y = cb[o] + cb[Op]·acc."""
    out = np.zeros(plan.o_padded + 1, np.float32)
    out[: plan.shape.o] = bias
    out[plan.o_padded] = -np.float32(scale)
    return out


def conv_func(plan: Plan, pad_value: int, flip: bool, x_dtype: str = "uint8", symbol: str = CONV_SYMBOL) -> Any:
    """PrimFunc(x [N, C, H, W] ``x_dtype``, wp ``plan.packed_w_shape`` uint8, cb [Op + 1] f32) → y [N, O, OH, OW]
    f32. ``pad_value``: the byte a padded pixel holds (z, flipped with the data); ``flip``: x read as x ^ 0x80
    (int8 inputs)."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, c_, h_, w_ = s.n, s.c, s.h, s.w
    o_, oh_, ow_ = s.o, s.oh, s.ow
    kh_, kw_ = s.kh, s.kw
    sh, sw = s.strides
    dh, dw = s.dilations
    pt, pl = s.pads[0], s.pads[1]
    hp, wp, op_, cg = plan.hp, plan.wp, plan.o_padded, plan.c_groups
    t = plan.tiling
    vb, pb, g, nbytes = t.vectors, t.positions, t.channels, t.bytes
    tiles_o, tiles_x = op_ // (g * vb), plan.ow_tiles
    words, lanes32 = nbytes // 8, nbytes // 4
    byte_vec, word_vec = f"uint8x{nbytes}", f"int64x{words}"
    acc_vec = f"uint32x{lanes32}" if t.neon else f"int32x{lanes32}"
    acc_type = "uint32" if t.neon else "int32"
    ones = T.Broadcast(T.uint8(1), nbytes)
    intrinsic = t.intrinsic
    pad_byte = T.uint8(pad_value)

    def read(v: Any) -> Any:  # evaluated while the script is parsed: the flip only for int8 inputs
        return T.bitwise_xor(T.Cast("uint8", v), T.uint8(0x80)) if flip else v

    def step(acc: Any, xw: Any, wv: Any) -> Any:  # evaluated while the script is parsed: the ISA's form
        xb = T.reinterpret(byte_vec, T.Broadcast(xw, words))
        if t.neon:  # |x − w| per byte (uabd), each 4 summed into a lane (udot with ones)
            diff = T.max(xb, wv) - T.min(xb, wv)
            return T.call_llvm_pure_intrin(acc_vec, T.llvm_lookup_intrinsic_id(intrinsic), acc, diff, ones)
        return acc + T.reinterpret(acc_vec, T.call_llvm_pure_intrin(word_vec, intrinsic, xb, wv))

    x_type = T.Buffer((n_, c_, h_, w_), x_dtype)
    w_type = T.Buffer(plan.packed_w_shape, "uint8")
    cb_type = T.Buffer((op_ + 1,), "float32")
    y_type = T.Buffer((n_, o_, oh_, ow_), "float32")

    @T.prim_func
    def conv(x: x_type, wpk: w_type, cb: cb_type, y: y_type):
        xp = T.alloc_buffer((n_, cg, hp, wp, 8), "uint8")
        for nh in T.parallel(n_ * hp):
            for c8, col, k in T.grid(cg, wp, 8):
                xp[nh // hp, c8, nh % hp, col, k] = T.if_then_else(c8 * 8 + k < c_, pad_byte, T.uint8(0))
            if nh % hp >= pt and nh % hp < pt + h_:
                for c, col in T.grid(c_, w_):
                    xp[nh // hp, c // 8, nh % hp, pl + col, c % 8] = read(x[nh // hp, c, nh % hp - pt, col])
        for ny in T.parallel(n_ * oh_):
            acc = T.alloc_buffer((pb, vb, lanes32), acc_type, scope="local")
            for tx, to in T.grid(tiles_x, tiles_o):
                for p in T.unroll(pb):
                    for v in T.unroll(vb):
                        acc[p, v, T.Ramp(0, 1, lanes32)] = T.Broadcast(T.Cast(acc_type, 0), lanes32)
                for c8, i, j in T.grid(cg, kh_, kw_):
                    for p in T.unroll(pb):
                        for v in T.unroll(vb):
                            acc[p, v, T.Ramp(0, 1, lanes32)] = step(
                                acc[p, v, T.Ramp(0, 1, lanes32)],
                                T.reinterpret("int64", xp[ny // oh_, c8, ny % oh_ * sh + i * dh,
                                                          (tx * pb + p) * sw + j * dw, T.Ramp(0, 1, 8)]),
                                wpk[to * vb + v, c8, i, j, T.Ramp(0, 1, nbytes)])
                for v in T.unroll(vb):
                    for p in T.unroll(pb):
                        for lane in T.unroll(g):
                            if tx * pb + p < ow_ and (to * vb + v) * g + lane < o_:
                                y[ny // oh_, (to * vb + v) * g + lane, ny % oh_, tx * pb + p] = (
                                    cb[(to * vb + v) * g + lane] + cb[op_] * T.Cast(
                                        "float32", acc[p, v, lane * 2] + acc[p, v, lane * 2 + 1]))

    return scheduled(conv, symbol)


def takes(isa: Any) -> bool:
    """x86-64 with AVX2 (``vpsadbw`` on ymm; zmm with AVX-512BW), or AArch64 with the dot product (``uabd`` +
    ``udot``: cortex-a55/a76/a78, Neoverse; decided by the feature)."""
    return (isa.arch == "x86_64" and isa.has("avx2")) or (isa.arch == "aarch64" and isa.dotprod)


def integer_weights(w: np.ndarray, scale: float, zero: int, dtype: str) -> np.ndarray | None:
    """The integers q with float32((q − z)·s) == w for every weight (the dequantized weights of the shared
    grid), as uint8 (int8 flipped by 0x80), or None when some weight is off the grid."""
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    q = np.rint(w.astype(np.float64) / scale + zero)
    if q.min() < lo or q.max() > hi:
        return None
    back = (q.astype(np.float32) - np.float32(zero)) * np.float32(scale)
    if not np.array_equal(back, w.astype(np.float32)):
        return None
    return (q.astype(np.int16) + (0 if dtype == "uint8" else 128)).astype(np.uint8)


def adder_int8_pass(isa: Any, stats: dict[str, Any] | None = None):
    """Relax pass (before the float adder pass): each inlined ``edgec::AdderConv`` whose input is a dequantized
    integer tensor and whose weights lie on the same grid → ``call_tir`` of :func:`conv_func` on the integer
    tensor. ``stats`` gets ``{"layers": n, "shapes": [...]}``."""

    def rewrite(builder: Any, call: Any, lookup: Any, index: int):
        from tvm import relax

        parts = adder_conv_parts(call, lookup)
        if parts is None:
            return None
        source = dequantized(parts["x"], lookup)
        if source is None:
            return None
        q_x, scale, zero = source
        dtype = str(q_x.ty.dtype)
        q_w = integer_weights(parts["w"], scale, zero, dtype)
        if q_w is None:
            return None
        shape: ConvShape = parts["shape"]
        plan = Plan(shape, Tiling.for_isa(isa, shape.o, shape.ow))
        flip = dtype == "int8"
        pad = (zero + 128) if flip else zero
        func = conv_func(plan, pad, flip, dtype, f"{CONV_SYMBOL}_{index}")
        gv = builder.add_func(func, f"{CONV_SYMBOL}_{index}")
        return relax.call_tir(gv, [q_x, relax.const(pack_weights(q_w, plan)),
                                   relax.const(epilogue_constant(parts["bias"], scale, plan))],
                              out_ty=relax.TensorType((shape.n, shape.o, shape.oh, shape.ow), "float32")), shape

    return op_kernel_pass("EdgecAdderInt8Kernels", lambda: takes(isa), rewrite, stats)
