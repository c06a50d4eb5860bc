"""Bit-packed binary convolution (``edgec::BinaryConv``, issue 19): XNOR/popcount on 32-bit words.

Why: the inlined function body computes a binary conv as a float conv on ±1 values, so a binary layer costs what
a float layer costs. Packed, 32 input channels are one word and one ``xor`` + ``popcount`` replaces 32 multiply-adds
(Σ s·w = K − 2·popcount(x xor w), :mod:`edgec.ops.reference`).

Two PrimFuncs, written as loop nests (they are scheduled by construction, ``tirx.is_scheduled``):

* :func:`pack_func` — float ``x`` [N, C, H, W] (+ ``shift`` [C]) → sign bits ``xp`` [N, Hp, Cw, Wp] uint32, the
  spatial padding already in place as zero words (bit 0 = +1, edgec's padding value) and channels past C as zero
  bits. Words along the width are contiguous, so the conv loads a vector of output columns at once.
* :func:`conv_func` — ``xp`` and the weights packed at compile time (:func:`pack_weights`, [Op, kh, kw, Cw]) →
  ``y`` [N, O, OH, OW] float32 with the epilogue ``alpha[o]·(K − 2·pop) + b[o]`` fused. Each parallel task is one
  output row; a register tile of ``ob`` output channels × one vector of output columns accumulates int32 popcounts
  over (kh, kw, Cw): one activation vector load serves ``ob`` broadcast-xor-popcount-adds. LLVM turns the vector
  ``ctpop`` into ``vpopcntd`` where the target has AVX-512 VPOPCNTDQ and into a ``vpshufb`` nibble count on AVX2.

Pad bits are 0 in both operands, so their xor is 0 and K = C·kh·kw counts only real positions. Output columns
are computed in whole vectors (the packed row is wide enough, extra columns read zero padding) and only the real
ones are stored; output channels are padded to whole tiles in the packed weights and not stored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgec.ops.packing import pack_signs

WORD_BITS = 32
PACK_SYMBOL = "edgec_binary_pack"
CONV_SYMBOL = "edgec_binary_conv"


@dataclasses.dataclass(frozen=True)
class BinaryConvShape:
    """One binary conv layer's static shape and attributes (ONNX Conv's, group 1); ``pads`` = (top, left,
    bottom, right)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)

    @property
    def oh(self) -> int:
        return (self.h + self.pads[0] + self.pads[2] - self.dilations[0] * (self.kh - 1) - 1) // self.strides[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pads[1] + self.pads[3] - self.dilations[1] * (self.kw - 1) - 1) // self.strides[1] + 1

    @property
    def words(self) -> int:
        return -(-self.c // WORD_BITS)

    @property
    def k(self) -> int:
        """The reduction length that counts: real channels × window."""
        return self.c * self.kh * self.kw


@dataclasses.dataclass(frozen=True)
class Tiling:
    """The register tile: ``ob`` output channels × ``lanes`` output columns (one vector of int32)."""

    lanes: int
    ob: int

    @classmethod
    def for_isa(cls, isa: Any, o: int) -> Tiling:
        """16 lanes and 8 channels with AVX-512's 32 registers; 8 lanes and 4 channels with 16 registers (the
        AVX2 nibble count needs a lookup table, a mask and temporaries besides the accumulators)."""
        ob = 8 if isa.vector_registers >= 32 else 4
        return cls(lanes=isa.lanes, ob=min(ob, o))


@dataclasses.dataclass(frozen=True)
class Plan:
    """The packed buffers' sizes a shape and a tiling imply."""

    shape: BinaryConvShape
    tiling: Tiling

    @property
    def ow_padded(self) -> int:
        lanes = self.tiling.lanes
        return -(-self.shape.ow // lanes) * lanes

    @property
    def o_padded(self) -> int:
        return -(-self.shape.o // self.tiling.ob) * self.tiling.ob

    @property
    def hp(self) -> int:
        s = self.shape
        return s.h + s.pads[0] + s.pads[2]

    @property
    def wp(self) -> int:
        """Wide enough for every column a whole output vector reads (beyond the real padding: zero words)."""
        s = self.shape
        needed = (self.ow_padded - 1) * s.strides[1] + (s.kw - 1) * s.dilations[1] + 1
        return max(s.w + s.pads[1] + s.pads[3], needed)

    @property
    def packed_x_shape(self) -> tuple[int, int, int, int]:
        return (self.shape.n, self.hp, self.shape.words, self.wp)

    @property
    def packed_w_shape(self) -> tuple[int, int, int, int]:
        return (self.o_padded, self.shape.kh, self.shape.kw, self.shape.words)


def pack_weights(w: np.ndarray, plan: Plan) -> np.ndarray:
    """Sign bits of ``w`` — float [O, C, kh, kw] or ±1 — as the conv's uint32 [Op, kh, kw, Cw] (extra output
    channels all zero words)."""
    words = pack_signs(np.asarray(w, np.float32), axis=1, word_bits=WORD_BITS)  # [O, Cw, kh, kw]
    out = np.zeros(plan.packed_w_shape, np.uint32)
    out[: w.shape[0]] = np.transpose(words, (0, 2, 3, 1))
    return out


def padded_vector(values: np.ndarray, plan: Plan) -> np.ndarray:
    """A per-output-channel float vector (alpha, bias) padded with zeros to the tiled channel count."""
    out = np.zeros(plan.o_padded, np.float32)
    out[: values.shape[0]] = values
    return out


def _finish(func: Any, symbol: str) -> Any:
    return func.with_attr({"global_symbol": symbol, "tirx.is_scheduled": True, "tirx.noalias": True})


def pack_func(plan: Plan, symbol: str = PACK_SYMBOL) -> Any:
    """PrimFunc(x [N, C, H, W] f32, shift [C] f32) → xp (uint32, :attr:`Plan.packed_x_shape`), exported as
    ``symbol``."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, c_, h_, w_ = s.n, s.c, s.h, s.w
    hp, wp, cw_ = plan.hp, plan.wp, s.words
    pt, pl = s.pads[0], s.pads[1]
    lanes = plan.tiling.lanes
    wv = w_ // lanes  # whole vectors of a row; the rest is a scalar tail
    bits = WORD_BITS

    # buffer types as names: TVMScript reads string dtypes inside annotations, pyflakes would not
    x_type, shift_type = T.Buffer((n_, c_, h_, w_), "float32"), T.Buffer((c_,), "float32")
    xp_type = T.Buffer((n_, hp, cw_, wp), "uint32")

    @T.prim_func
    def pack(x: x_type, shift: shift_type, xp: xp_type):
        for nh in T.parallel(n_ * hp):
            for cw in range(cw_):
                for col in T.vectorized(wp):
                    xp[nh // hp, nh % hp, cw, col] = T.uint32(0)
                if nh % hp >= pt and nh % hp < pt + h_:
                    for b in range(T.min(bits, c_ - cw * bits)):
                        for v in range(wv):
                            for lane in T.vectorized(lanes):
                                xp[nh // hp, nh % hp, cw, pl + v * lanes + lane] = T.bitwise_or(
                                    xp[nh // hp, nh % hp, cw, pl + v * lanes + lane],
                                    T.Select(x[nh // hp, cw * bits + b, nh % hp - pt, v * lanes + lane]
                                             + shift[cw * bits + b] < T.float32(0),
                                             T.shift_left(T.uint32(1), T.Cast("uint32", b)), T.uint32(0)))
                        for t in range(w_ - wv * lanes):
                            xp[nh // hp, nh % hp, cw, pl + wv * lanes + t] = T.bitwise_or(
                                xp[nh // hp, nh % hp, cw, pl + wv * lanes + t],
                                T.Select(x[nh // hp, cw * bits + b, nh % hp - pt, wv * lanes + t]
                                         + shift[cw * bits + b] < T.float32(0),
                                         T.shift_left(T.uint32(1), T.Cast("uint32", b)), T.uint32(0)))

    return _finish(pack, symbol)


def conv_func(plan: Plan, symbol: str = CONV_SYMBOL) -> Any:
    """PrimFunc(xp, wp [Op, kh, kw, Cw] u32, alpha [Op], bias [Op]) → y [N, O, OH, OW] f32, exported as
    ``symbol``."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, o_, oh_, ow_ = s.n, s.o, s.oh, s.ow
    kh_, kw_, cw_ = s.kh, s.kw, s.words
    sh, sw = s.strides
    dh, dw = s.dilations
    hp, wp, op_ = plan.hp, plan.wp, plan.o_padded
    lanes, ob = plan.tiling.lanes, plan.tiling.ob
    tiles_o, tiles_x = op_ // ob, plan.ow_padded // lanes
    k_ = s.k

    xp_type, w_type = T.Buffer((n_, hp, cw_, wp), "uint32"), T.Buffer((op_, kh_, kw_, cw_), "uint32")
    alpha_type, bias_type = T.Buffer((op_,), "float32"), T.Buffer((op_,), "float32")  # one object each
    y_type = T.Buffer((n_, o_, oh_, ow_), "float32")

    @T.prim_func
    def conv(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, y: y_type):
        for ny in T.parallel(n_ * oh_):
            acc = T.alloc_buffer((ob, lanes), "int32", scope="local")
            for to in range(tiles_o):
                for tx in range(tiles_x):
                    for oi in T.unroll(ob):
                        for lane in T.vectorized(lanes):
                            acc[oi, lane] = 0
                    for i, j, cw in T.grid(kh_, kw_, cw_):
                        for oi in T.unroll(ob):
                            for lane in T.vectorized(lanes):
                                acc[oi, lane] = acc[oi, lane] + T.Cast("int32", T.popcount(T.bitwise_xor(
                                    xp[ny // oh_, ny % oh_ * sh + i * dh, cw, (tx * lanes + lane) * sw + j * dw],
                                    wpk[to * ob + oi, i, j, cw])))
                    for oi in T.unroll(ob):
                        if to * ob + oi < o_:
                            if tx * lanes + lanes <= ow_:
                                for lane in T.vectorized(lanes):
                                    y[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane] = (
                                        alpha[to * ob + oi] * T.Cast("float32", k_ - 2 * acc[oi, lane])
                                        + bias[to * ob + oi])
                            else:
                                for lane in range(ow_ - tx * lanes):
                                    y[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane] = (
                                        alpha[to * ob + oi] * T.Cast("float32", k_ - 2 * acc[oi, lane])
                                        + bias[to * ob + oi])

    return _finish(conv, symbol)
