"""Bit-packed binary convolution (``edgec::BinaryConv``, issue 19): XNOR/popcount on 32-bit words.

Why: the inlined function body computes a binary conv as a float conv on ±1 values, so a binary layer costs what
a float layer costs. Packed, 32 input channels are one word and one ``xor`` + ``popcount`` replaces 32 multiply-adds
(Σ s·w = K − 2·popcount(x xor w), :mod:`edgec.ops.reference`).

Two PrimFuncs per layer, written as loop nests (scheduled by construction, ``tirx.is_scheduled``), in one of two
forms (:attr:`Plan.flat`):

* :func:`pack_func` — float ``x`` [N, C, H, W] (+ ``shift`` [C]) → sign bits in uint32 words, 32 channels per word
  (uint16 words of 16 for layers of ≤ 16 channels where bytes are counted, :meth:`Tiling.for_isa`),
  the spatial padding in place as zero words (bit 0 = +1, edgec's padding value), channels past C zero bits.
  Row form: ``xp`` [N, Hp, Cw, S, Wq] (S the column stride: padded column ``col`` at phase ``col % S``, index
  ``col // S``, so an output vector's columns read contiguous words at any stride). Flat form (stride-1 "same"
  convs): ``xp`` [N, Cw, plane], the vertically padded rows of a word plane back to back.
* :func:`conv_func` — ``xp`` and the weights packed at compile time (:func:`pack_weights`, [Op, kh, kw, Cw]) →
  ``y`` [N, O, OH, OW] float32 with the epilogue ``alpha[o]·(K − 2·pop) + b[o]`` fused. A register tile of ``ob``
  output channels × one vector of outputs accumulates int32 popcounts over (kh, kw, Cw): one activation vector
  load serves ``ob`` broadcast-xor-popcount-adds. Row form: a parallel task per output row, vectors of output
  columns (a 14-wide row computes 16). Flat form: a task per vector of output positions ``y·OW + x`` (vectors span
  rows; the taps that leave a row's edge are masked to +1). LLVM turns the vector ``ctpop`` into ``vpopcntd``
  where the target has AVX-512 VPOPCNTDQ, and on Arm NEON with the dot product into ``cnt v.16b`` + ``udot``;
  elsewhere (AVX2, Skylake-SP's AVX-512, NEON without the dot product) both forms count bits per byte (a
  ``vpshufb`` nibble count, ``cnt v.16b``) and add the counts as bytes for up to 31 words before widening them
  (:attr:`Tiling.byte_counts`) (:func:`takes`).

Three rewrites follow in the graph (:func:`binary_conv_pass`): a conv whose output only the next binary layer's
pack reads writes that layer's packed words itself from integer bounds on its popcounts (:func:`conv_pack_func`);
a conv whose output only a residual add reads adds the shortcut — and the ReLUs around it — in its epilogue
(:class:`Residual`, :func:`fuse_residual`); and any other float-output conv a pack reads writes the packed words
from its float values, keeping the float map where something else reads it too (:class:`SignOut`,
:func:`fuse_sign_output`). Between binary layers only a float layer's output is then packed by a pack kernel.

Pad bits are 0 in both operands, so their xor is 0 and K = C·kh·kw counts only real positions. Outputs are computed
in whole vectors (the packed buffers are long enough, extra positions read zero words) and only the real ones are
stored; output channels are padded to whole tiles in the packed weights and not stored.

Cost: three vector ALU operations (xor with a broadcast weight word, popcount, add) per 32·lanes binary MACs;
on AVX-512 that is ~2 T binary MAC/s per Zen 5 core, 6-8x edgec's float 3x3 conv (Winograd) end to end
(bench/binary_conv.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgec.ops.packing import pack_signs
from edgec.targets.cpu.kernels.op_kernel import (ConvShape, conv_shape, op_kernel_pass, pack_then_kernel, producer_chain,
                                                 relu_absorbed, scheduled)

WORD_BITS = 32
BYTE_STEPS = 31  # words whose byte counts (≤ 8 each) add up in a byte before it can overflow: 31 · 8 = 248
PACK_SYMBOL = "edgec_binary_pack"
CONV_SYMBOL = "edgec_binary_conv"


@dataclasses.dataclass(frozen=True)
class BinaryConvShape(ConvShape):
    """A binary conv layer: :class:`ConvShape` and the packed sizes it implies."""

    @property
    def words(self) -> int:
        return -(-self.c // WORD_BITS)

    @property
    def k(self) -> int:
        """The reduction length that counts: real channels × window."""
        return self.c * self.kh * self.kw

    @property
    def same_stride1(self) -> bool:
        """A stride-1 "same" conv (output as wide as the input): what :attr:`Plan.flat` runs on its flat form."""
        return (self.strides == (1, 1) and self.dilations == (1, 1) and self.pads[1] + self.pads[3] == self.kw - 1
                and self.ow == self.w)


@dataclasses.dataclass(frozen=True)
class Tiling:
    """The register tile: ``ob`` output channels × ``lanes`` output columns (one vector of int32).
    ``byte_counts``: count the bits of each byte (LLVM's byte ``ctpop``) and add those counts as bytes for up to
    :data:`BYTE_STEPS` words before widening them to the int32 lanes, instead of a per-word ``ctpop`` that widens
    every word — on x86 without VPOPCNTDQ two ``vpsadbw``, unpacks and a pack: 14 vector operations a word
    against 8 (a micro-kernel on Zen 3: 267 against 187 G binary MACs/s); on NEON without the dot product ``cnt``
    + two pairwise widening adds against ``cnt`` + one byte add. Where a word's count is one instruction
    (VPOPCNTDQ) or its widening one ``udot`` (the Arm dot product), the per-word form stays."""

    lanes: int
    ob: int
    byte_counts: bool = False
    word_bits: int = WORD_BITS
    float_lanes: int = 0  # the target's float32 vector (0: ``lanes``), what the pack compares at a time

    @property
    def pack_lanes(self) -> int:
        """Columns the pack reads per vector: a float vector of the target, whatever the conv's word vector
        (32 16-bit words on AVX-512 would leave a 28-wide row as 16 + 8 + 4 scalar columns)."""
        return self.float_lanes or self.lanes

    @property
    def word_dtype(self) -> str:
        return f"uint{self.word_bits}"

    @classmethod
    def for_isa(cls, isa: Any, o: int, c: int | None = None, flat: bool = False, ow: int | None = None) -> Tiling:
        """16 lanes and 8 channels with AVX-512's 32 registers; 8 lanes and 4 channels with 16 registers (the
        AVX2 nibble count needs a lookup table, a mask and temporaries besides the accumulators).

        A layer of at most 16 input channels (``c``) packs them into 16-bit words where bytes are counted: a
        32-bit word would be half padding, so each vector now holds twice the positions (16 lanes on AVX2) and
        every bit counted is a channel. With VPOPCNTDQ the 16-bit words are counted by ``vpopcntw`` where the
        target has AVX-512 BITALG (Ice Lake and later, Zen 4 and later) and added in 16-bit lanes
        (:attr:`Plan.acc_dtype`): 32 positions per zmm instead of 16 (the MNIST BNN's 16 → 16 convs at 28×28 on a
        Xeon with BITALG, alone: 5.0 → 2.4 µs writing packed words, 4.3 → 2.9 µs writing floats); a row form of
        ≤ 16 outputs (``ow``) takes a half vector. Without BITALG, and with the Arm dot product (``udot`` widens
        a word's count in one instruction), the 32-bit word stays. On 16 registers the flat form
        (``flat``) of 16-bit words takes 2 channels a tile: its 16-lane mask per tap column, byte counters and
        nibble table left 4 channels spilling (16 → 16 channels at 28×28 on a Zen 3: 9.4 µs with 4, 7.7 with 2,
        7.6 with 8; the row form 4.3 with 4, 4.7 with 2)."""
        ob = 8 if isa.vector_registers >= 32 else 4
        byte_counts = ((isa.arch == "x86_64" and not isa.vpopcntdq and (isa.lanes == 8 or isa.has("avx512bw")))
                       or (isa.arch == "aarch64" and not isa.dotprod))
        half_words = byte_counts or (isa.vpopcntdq and isa.has("avx512bitalg"))  # vpopcntw: BITALG
        word_bits = 16 if half_words and c is not None and c <= 16 else WORD_BITS
        if word_bits == 16 and flat and isa.vector_registers < 32:
            ob = 2
        lanes = isa.lanes * WORD_BITS // word_bits
        if word_bits == 16 and not byte_counts and not flat and ow is not None and ow <= isa.lanes:
            lanes = isa.lanes  # vpopcntw on a half vector: a row of ≤ 16 outputs, as many operations, no waste
        return cls(lanes=lanes, ob=min(ob, o), byte_counts=byte_counts, word_bits=word_bits, float_lanes=isa.lanes)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The packed buffers' sizes a shape and a tiling imply."""

    shape: BinaryConvShape
    tiling: Tiling

    @property
    def words(self) -> int:
        """Words of :attr:`Tiling.word_bits` channels per position."""
        return -(-self.shape.c // self.tiling.word_bits)

    @property
    def acc_dtype(self) -> str:
        """The popcount accumulators' type where words are counted one by one (not :attr:`Tiling.byte_counts`):
        16-bit words add up in 16-bit lanes (one vector per tile row, no widening per word) while the largest
        count, 16 bits × the words a tile reduces, fits; otherwise int32."""
        t, s = self.tiling, self.shape
        if t.word_bits == 16 and not t.byte_counts and 16 * s.kh * s.kw * self.words < 1 << 16:
            return "uint16"
        return "int32"

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
    def wq(self) -> int:
        """Words per column phase: padded column ``col`` is stored at phase ``col % stride``, index
        ``col // stride``, so output columns ``x..x+lanes`` read contiguous words at any stride (a strided
        conv's loads were gathers: 1.6x slower per MAC). Wide enough for every column a whole output vector
        reads (beyond the real padding: zero words)."""
        s = self.shape
        sw = s.strides[1]
        return max(-(-(s.w + s.pads[1] + s.pads[3]) // sw),
                   self.ow_padded + (s.kw - 1) * s.dilations[1] // sw)

    @property
    def flat(self) -> bool:
        """A stride-1 "same" conv (output as wide as the input: 3×3 pad 1, 1×1 pad 0) runs on the *flat* form:
        output positions q = y·OW + x are one index, so a vector of 16 spans rows and a 14-wide row wastes no
        lanes (the row kernel computes 16 columns for 14: 12.5 % of its work). Each cw plane stores the
        vertically padded rows back to back without column padding, so the words a tap (i, j) reads for q..q+15
        are contiguous (q + i·W + j − pad_left); the lanes whose column falls off the row's edge read a
        neighbour row's word and are masked to 0 (+1, the padding value) by a per-tap mask."""
        return self.shape.same_stride1

    @property
    def q_vectors(self) -> int:
        """Flat form: vectors of output positions per image."""
        return -(-self.shape.oh * self.shape.ow // self.tiling.lanes)

    @property
    def slack(self) -> int:
        """Flat form: zero words before a plane's first row (the left tap of position 0 reads at −pad_left)."""
        return max(self.tiling.lanes, self.shape.pads[1])

    @property
    def plane(self) -> int:
        """Flat form: words per cw plane — slack, Hp·W rows, and zeros for the last vector's overhang."""
        return self.slack + self.hp * self.shape.w + self.tiling.lanes + self.shape.kw

    @property
    def packed_x_shape(self) -> tuple[int, ...]:
        if self.flat:
            return (self.shape.n, self.words, self.plane)
        return (self.shape.n, self.hp, self.words, self.shape.strides[1], self.wq)

    @property
    def packed_w_shape(self) -> tuple[int, int, int, int]:
        return (self.o_padded, self.shape.kh, self.shape.kw, self.words)


@dataclasses.dataclass(frozen=True)
class Residual:
    """A float tensor added to the conv's output in its epilogue (a residual block's shortcut):
    ``y = post(alpha·(K − 2·pop) + b + pre(r))``, ``pre`` / ``post`` a ReLU or nothing. Why: in a binary
    ResNet the shortcut add (and the ReLUs around it) was its own kernel reading and writing the whole float map
    after every block (the MNIST BNN: 2.1 + 1.3 µs of 23, and two calls)."""

    pre_relu: bool = False
    post_relu: bool = False


def _epilogue(k: int, residual: Residual | None) -> Any:
    """``value(alpha, bias, count, r)``: the float output of one position and channel from its popcount (and
    the residual's value ``r``, unread without a residual), built while a script is parsed."""
    from tvm.script import tirx as T

    def value(alpha: Any, bias: Any, count: Any, r: Any) -> Any:
        v = alpha * T.Cast("float32", k - 2 * T.Cast("int32", count)) + bias
        if residual is None:
            return v
        v = v + (T.max(r, T.float32(0)) if residual.pre_relu else r)
        return T.max(v, T.float32(0)) if residual.post_relu else v

    return value


@dataclasses.dataclass(frozen=True)
class SignOut:
    """The next binary layer's packed input written by the conv's epilogue from its float output: the sign bit
    of ``y + shift`` for each channel (``shift`` [O], the next layer's, a ReLU absorbed as in its pack), in
    ``next_plan``'s layout (flat or row form, its padding words zero); ``keep_float``: the float ``y`` is stored
    too (a residual block's sum also feeds the next shortcut). Why: issue 19's "binary activations stay packed
    between binary layers" where :func:`conv_pack_func`'s integer bounds do not apply — a residual sum, a row-form
    conv, a next layer of another form — the float map and the pack kernel that re-read it go."""

    next_plan: Plan
    keep_float: bool = False


def _next_offset(plan: Plan) -> tuple[Any, int]:
    """(``offset(n, y, x)``, stride): where ``plan``'s packed input, flattened, holds word 0 of unpadded position
    (y, x) — word ``cw`` lies ``cw · stride`` further."""
    s = plan.shape
    pt, pl = s.pads[0], s.pads[1]
    if plan.flat:
        return (lambda n, y, x: n * plan.words * plan.plane + plan.slack + (y + pt) * s.w + x), plan.plane
    sw, wq, hp, cw = s.strides[1], plan.wq, plan.hp, plan.words
    return (lambda n, y, x: ((n * hp + y + pt) * cw * sw + (x + pl) % sw) * wq + (x + pl) // sw), sw * wq


def _without_params(func: Any, names: set[str], views: set[str]) -> Any:
    """``func`` without the parameters named ``names`` — buffers its body never reads (a variant's unused
    inputs, its static branches not taken), so one script serves every signature — and without the top-level
    buffer declarations named ``views`` (their flattened views)."""
    import tvm

    body = func.body
    if isinstance(body, tvm.tirx.SeqStmt):
        body = tvm.tirx.SeqStmt([st for st in body.seq
                                 if not (isinstance(st, tvm.tirx.DeclBuffer) and st.buffer.name in views)])
    params = [p for p in func.params if p.name not in names]
    return tvm.tirx.PrimFunc(params, body, func.ret_type, func.attrs)


def pack_weights(w: np.ndarray, plan: Plan) -> np.ndarray:
    """Sign bits of ``w`` — float [O, C, kh, kw] or ±1 — as the conv's words [Op, kh, kw, Cw] (extra output
    channels all zero words)."""
    words = pack_signs(np.asarray(w, np.float32), axis=1, word_bits=plan.tiling.word_bits)  # [O, Cw, kh, kw]
    out = np.zeros(plan.packed_w_shape, plan.tiling.word_dtype)
    out[: w.shape[0]] = np.transpose(words, (0, 2, 3, 1))
    return out


def padded_vector(values: np.ndarray, plan: Any) -> np.ndarray:
    """A per-output-channel float vector (alpha, bias) padded with zeros to the tiled channel count of ``plan``
    (a :class:`Plan`, or binary_gemm's DensePlan: anything with ``o_padded``)."""
    out = np.zeros(plan.o_padded, np.float32)
    out[: values.shape[0]] = values
    return out


def pack_func(plan: Plan, symbol: str = PACK_SYMBOL) -> Any:
    """PrimFunc(x [N, C, H, W] f32, shift [C] f32) → xp (:attr:`Tiling.word_dtype`, :attr:`Plan.packed_x_shape`), exported as
    ``symbol``."""
    from tvm.script import tirx as T

    if plan.flat:
        return _pack_flat(plan, symbol)
    s = plan.shape
    n_, c_, h_, w_ = s.n, s.c, s.h, s.w
    hp, wq, cw_ = plan.hp, plan.wq, plan.words
    pt, pl = s.pads[0], s.pads[1]
    sw = s.strides[1]
    bits, wt = plan.tiling.word_bits, plan.tiling.word_dtype
    (f0, s0, c0), (f1, s1, c1), (f2, s2, c2), (f3, s3, c3) = _row_segments(w_, plan.tiling.pack_lanes)

    # buffer types as names: TVMScript reads string dtypes inside annotations, pyflakes would not
    x_type, shift_type = T.Buffer((n_, c_, h_, w_), "float32"), T.Buffer((c_,), "float32")
    xp_type = T.Buffer((n_, hp, cw_, sw, wq), wt)

    @T.macro
    def segment(x, shift, xp, nh, cw, begin, width, vectors):
        """``vectors`` words of ``width`` columns from column ``begin``: 32 channels or-ed into a register."""
        for v in range(vectors):
            acc = T.alloc_buffer((width,), wt, scope="local")
            for lane in T.vectorized(width):
                acc[lane] = T.Cast(wt, 0)
            for b in range(T.min(bits, c_ - cw * bits)):
                for lane in T.vectorized(width):
                    acc[lane] = T.bitwise_or(acc[lane], T.Select(
                        x[nh // hp, cw * bits + b, nh % hp - pt, begin + v * width + lane] + shift[cw * bits + b]
                        < T.float32(0), T.shift_left(T.Cast(wt, 1), T.Cast(wt, b)), T.Cast(wt, 0)))
            for lane in T.vectorized(width):
                xp[nh // hp, nh % hp, cw, (pl + begin + v * width + lane) % sw,
                   (pl + begin + v * width + lane) // sw] = acc[lane]

    @T.prim_func
    def pack(x: x_type, shift: shift_type, xp: xp_type):
        for nh in T.parallel(n_ * hp):
            for cw in range(cw_):
                for phase in range(sw):
                    for col in T.vectorized(wq):
                        xp[nh // hp, nh % hp, cw, phase, col] = T.Cast(wt, 0)
                if nh % hp >= pt and nh % hp < pt + h_:
                    segment(x, shift, xp, nh, cw, f0, s0, c0)
                    segment(x, shift, xp, nh, cw, f1, s1, c1)
                    segment(x, shift, xp, nh, cw, f2, s2, c2)
                    segment(x, shift, xp, nh, cw, f3, s3, c3)

    return scheduled(pack, symbol)


def conv_func(plan: Plan, symbol: str = CONV_SYMBOL, residual: Residual | None = None,
              sign: SignOut | None = None) -> Any:
    """PrimFunc(xp, wp [Op, kh, kw, Cw] u32, alpha [Op], bias [Op]) → y [N, O, OH, OW] f32, exported as
    ``symbol``; with ``residual``, PrimFunc(xp, wp, alpha, bias, r [N, O, OH, OW] f32, y) adding ``r`` in the
    epilogue (:class:`Residual`); with ``sign``, PrimFunc(xp, wp, alpha, bias, [r], shift [O], [y], xpn) writing
    the next layer's packed input (:class:`SignOut`)."""
    from tvm.script import tirx as T

    if plan.flat:
        return _conv_flat(plan, symbol, residual=residual, sign=sign)
    s = plan.shape
    n_, o_, oh_, ow_ = s.n, s.o, s.oh, s.ow
    kh_, kw_, cw_ = s.kh, s.kw, plan.words
    sh, sw = s.strides
    dh, dw = s.dilations
    hp, wq, op_ = plan.hp, plan.wq, plan.o_padded
    lanes, ob = plan.tiling.lanes, plan.tiling.ob
    tiles_o, tiles_x = op_ // ob, plan.ow_padded // lanes
    k_ = s.k
    wt, at = plan.tiling.word_dtype, plan.acc_dtype

    xp_type, w_type = T.Buffer((n_, hp, cw_, sw, wq), wt), T.Buffer((op_, kh_, kw_, cw_), wt)
    alpha_type, bias_type = T.Buffer((op_,), "float32"), T.Buffer((op_,), "float32")  # one object each
    y_type, r_type = T.Buffer((n_, o_, oh_, ow_), "float32"), T.Buffer((n_, o_, oh_, ow_), "float32")

    value = _epilogue(k_, residual)

    def load(xp, ny, tx, i, j, cw, lane):  # the words of row ``ny``'s column vector ``tx`` under tap (i, j)
        return xp[ny // oh_, ny % oh_ * sh + i * dh, cw, j * dw % sw, tx * lanes + lane + j * dw // sw]

    def load_vector(xp, ny, tx, i, j, cw):
        return xp[ny // oh_, ny % oh_ * sh + i * dh, cw, j * dw % sw, T.Ramp(tx * lanes + j * dw // sw, 1, lanes)]

    counts = _counts_macro(plan, load, load_vector)

    if sign is not None:
        return _row_sign(plan, symbol, sign, residual, value, counts)

    @T.macro
    def task(xp, wpk, alpha, bias, r, y, ny):  # one output row ``ny`` (image × row): every tile
        acc = T.alloc_buffer((ob, lanes), at, scope="local")
        acc8 = T.alloc_buffer((ob, lanes), wt, scope="local")  # 4 byte counters a lane (byte_counts)
        for to in range(tiles_o):
            for tx in range(tiles_x):
                counts(xp, wpk, acc, acc8, ny, tx, to)
                for oi in T.unroll(ob):
                    if to * ob + oi < o_:
                        if tx * lanes + lanes <= ow_:
                            for lane in T.vectorized(lanes):
                                y[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane] = value(
                                    alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                    r[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane])
                        else:
                            for lane in range(ow_ - tx * lanes):
                                y[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane] = value(
                                    alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                    r[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane])

    if residual is None:
        @T.prim_func
        def conv(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, y: y_type):
            for ny in T.parallel(n_ * oh_):
                task(xp, wpk, alpha, bias, y, y, ny)  # no residual: ``r`` is never read

        return scheduled(conv, symbol)

    @T.prim_func
    def conv_res(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, r: r_type, y: y_type):
        for ny in T.parallel(n_ * oh_):
            task(xp, wpk, alpha, bias, r, y, ny)

    return scheduled(conv_res, symbol)


def _counts_macro(plan: Plan, load: Any, load_vector: Any) -> Any:
    """The reduction both forms share, as a TVMScript macro ``counts(xp, wpk, acc, acc8, p, q, to)``:
    ``acc[oi, lane]`` = popcount(x xor w) of channel tile ``to`` over (kh, kw, words), for the positions a form
    names by (``p``, ``q``) — ``load(xp, p, q, i, j, cw, lane)`` reads a lane's word under tap (i, j), and
    ``load_vector(xp, p, q, i, j, cw)`` the whole vector (:attr:`Tiling.byte_counts`' byte-wise path)."""
    from tvm.script import tirx as T

    s = plan.shape
    kh_, kw_, cw_ = s.kh, s.kw, plan.words
    lanes, ob = plan.tiling.lanes, plan.tiling.ob
    byte_counts, wt, at = plan.tiling.byte_counts, plan.tiling.word_dtype, plan.acc_dtype
    byte_count, widen, widen_after = _byte_counting(lanes, kh_ * kw_ * cw_, plan.tiling.word_bits)

    @T.macro
    def counts(xp, wpk, acc, acc8, p, q, to):
        for oi in T.unroll(ob):
            for lane in T.vectorized(lanes):
                acc[oi, lane] = T.Cast(at, 0)
        if byte_counts:  # byte counts summed for up to BYTE_STEPS words, then widened
            for oi in T.unroll(ob):
                for lane in T.vectorized(lanes):
                    acc8[oi, lane] = T.Cast(wt, 0)
            for i, j, cw in T.grid(kh_, kw_, cw_):
                for oi in T.unroll(ob):
                    acc8[oi, T.Ramp(0, 1, lanes)] = acc8[oi, T.Ramp(0, 1, lanes)] + byte_count(T.bitwise_xor(
                        load_vector(xp, p, q, i, j, cw), T.Broadcast(wpk[to * ob + oi, i, j, cw], lanes)))
                if widen_after((i * kw_ + j) * cw_ + cw):
                    for oi in T.unroll(ob):
                        for lane in T.vectorized(lanes):
                            acc[oi, lane] = acc[oi, lane] + widen(acc8[oi, lane])
                            acc8[oi, lane] = T.Cast(wt, 0)
        else:
            for i, j, cw in T.grid(kh_, kw_, cw_):
                for oi in T.unroll(ob):
                    for lane in T.vectorized(lanes):
                        acc[oi, lane] = acc[oi, lane] + T.Cast(at, T.popcount(T.bitwise_xor(
                            load(xp, p, q, i, j, cw, lane), wpk[to * ob + oi, i, j, cw])))

    return counts


def _row_segments(width: int, lanes: int) -> list[tuple[int, int, int]]:
    """(first column, vector width, vectors) covering ``width`` columns: whole vectors, then at most one half and
    one quarter vector, then scalars (a 14-wide row is 8 + 4 + 2, not 14 scalar words)."""
    seg = [lanes, lanes // 2, lanes // 4, 1] if lanes >= 4 else [lanes, 1, 1, 1]
    count = [width // seg[0], 0, 0, 0]
    for i in (1, 2, 3):
        left = width - sum(c * w for c, w in zip(count, seg))
        count[i] = left // seg[i] if i == 3 else min(1, left // seg[i])
    first = [sum(c * w for c, w in zip(count[:i], seg[:i])) for i in range(4)]
    return list(zip(first, seg, count))


def _pack_flat(plan: Plan, symbol: str) -> Any:
    """The flat form's pack: xp [N, Cw, plane], row h of the vertically padded image at slack + h·W."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, c_, h_, w_ = s.n, s.c, s.h, s.w
    cw_, pt = plan.words, s.pads[0]
    slack, plane = plan.slack, plan.plane
    bits, wt = plan.tiling.word_bits, plan.tiling.word_dtype
    (f0, s0, c0), (f1, s1, c1), (f2, s2, c2), (f3, s3, c3) = _row_segments(w_, plan.tiling.pack_lanes)
    x_type, shift_type = T.Buffer((n_, c_, h_, w_), "float32"), T.Buffer((c_,), "float32")
    xp_type = T.Buffer((n_, cw_, plane), wt)

    @T.macro
    def segment(x, shift, xp, n, cw, h, begin, width, vectors):
        for v in range(vectors):
            acc = T.alloc_buffer((width,), wt, scope="local")
            for lane in T.vectorized(width):
                acc[lane] = T.Cast(wt, 0)
            for b in range(T.min(bits, c_ - cw * bits)):
                for lane in T.vectorized(width):
                    acc[lane] = T.bitwise_or(acc[lane], T.Select(
                        x[n, cw * bits + b, h, begin + v * width + lane] + shift[cw * bits + b] < T.float32(0),
                        T.shift_left(T.Cast(wt, 1), T.Cast(wt, b)), T.Cast(wt, 0)))
            for lane in T.vectorized(width):
                xp[n, cw, slack + (h + pt) * w_ + begin + v * width + lane] = acc[lane]

    @T.prim_func
    def pack(x: x_type, shift: shift_type, xp: xp_type):
        for nc in T.parallel(n_ * cw_):
            for col in range(slack + pt * w_):
                xp[nc // cw_, nc % cw_, col] = T.Cast(wt, 0)
            for col in range(plane - slack - (pt + h_) * w_):
                xp[nc // cw_, nc % cw_, slack + (pt + h_) * w_ + col] = T.Cast(wt, 0)
            for h in range(h_):
                segment(x, shift, xp, nc // cw_, nc % cw_, h, f0, s0, c0)
                segment(x, shift, xp, nc // cw_, nc % cw_, h, f1, s1, c1)
                segment(x, shift, xp, nc // cw_, nc % cw_, h, f2, s2, c2)
                segment(x, shift, xp, nc // cw_, nc % cw_, h, f3, s3, c3)

    return scheduled(pack, symbol)


def _byte_counting(lanes: int, steps: int, bits: int = WORD_BITS) -> tuple[Any, Any, Any]:
    """The expressions of :attr:`Tiling.byte_counts`, built while a script is parsed: ``count(v)`` — the bits set
    in each byte of the vector ``v`` of ``bits``-bit words (LLVM's byte ``ctpop``: a ``vpshufb`` nibble count on
    x86, ``cnt v.16b`` on NEON), as a vector of the same words holding one byte counter per byte; ``widen(v)``,
    one lane's counters summed into an int32 (each ≤ 248: no carry between them); and ``widen_after(step)``,
    whether the counters are widened after word ``step`` of the ``steps`` a tile reduces: every
    :data:`BYTE_STEPS` words and after the last."""
    from tvm.script import tirx as T

    wt = f"uint{bits}"
    byte_vec, word_vec = f"uint8x{bits // 8 * lanes}", f"{wt}x{lanes}"

    def count(v: Any) -> Any:
        return T.reinterpret(word_vec, T.popcount(T.reinterpret(byte_vec, v)))

    def widen(v: Any) -> Any:
        if bits == 16:
            return T.Cast("int32", T.bitwise_and(v, T.Cast(wt, 0xFF)) + T.shift_right(v, T.Cast(wt, 8)))
        pairs = T.bitwise_and(v, T.uint32(0x00FF00FF)) + T.bitwise_and(T.shift_right(v, T.uint32(8)),
                                                                        T.uint32(0x00FF00FF))
        return T.Cast("int32", T.bitwise_and(pairs, T.uint32(0xFFFF)) + T.shift_right(pairs, T.uint32(16)))

    def widen_after(step: Any) -> Any:
        return T.Or(step % BYTE_STEPS == BYTE_STEPS - 1, step == steps - 1)

    return count, widen, widen_after


def _conv_flat(plan: Plan, symbol: str, next_plan: Plan | None = None, residual: Residual | None = None,
               sign: SignOut | None = None) -> Any:
    """The flat form's conv: each parallel task is one vector of output positions of one image; per tap column j
    a mask (all ones, or 0 where the column leaves the row) is computed once and and-ed into the loaded words.

    With ``next_plan`` (:func:`conv_pack_func`) the epilogue writes the next binary layer's packed words instead of
    floats: PrimFunc(xp, wpk, alpha, bias, shift [O], xpn (``next_plan``'s flat words))."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, o_, oh_, ow_ = s.n, s.o, s.oh, s.ow
    kh_, kw_, cw_ = s.kh, s.kw, plan.words
    pl, w_ = s.pads[1], s.w
    op_, slack, plane, qv_ = plan.o_padded, plan.slack, plan.plane, plan.q_vectors
    lanes, ob = plan.tiling.lanes, plan.tiling.ob
    tiles_o, q_ = op_ // ob, oh_ * ow_
    k_ = s.k
    bits, wt, at = plan.tiling.word_bits, plan.tiling.word_dtype, plan.acc_dtype

    xp_type, w_type = T.Buffer((n_, cw_, plane), wt), T.Buffer((op_, kh_, kw_, cw_), wt)
    alpha_type, bias_type = T.Buffer((op_,), "float32"), T.Buffer((op_,), "float32")
    y_type, r_type = T.Buffer((n_, o_, oh_, ow_), "float32"), T.Buffer((n_, o_, oh_, ow_), "float32")

    @T.macro
    def masks(mask, nq):
        for j in range(kw_):
            for lane in T.vectorized(lanes):
                mask[j, lane] = T.Select(
                    (nq % qv_ * lanes + lane) % ow_ + j - pl >= 0
                    and (nq % qv_ * lanes + lane) % ow_ + j - pl < w_, T.Cast(wt, (1 << bits) - 1), T.Cast(wt, 0))

    def load(xp, nq, mask, i, j, cw, lane):  # the task's words under tap (i, j), the row's edge masked
        return T.bitwise_and(xp[nq // qv_, cw, slack + nq % qv_ * lanes + lane + i * w_ + j - pl], mask[j, lane])

    def load_vector(xp, nq, mask, i, j, cw):
        return T.bitwise_and(xp[nq // qv_, cw, T.Ramp(slack + nq % qv_ * lanes + i * w_ + j - pl, 1, lanes)],
                             mask[j, T.Ramp(0, 1, lanes)])

    counts = _counts_macro(plan, load, load_vector)

    value = _epilogue(k_, residual)

    @T.macro
    def tasks(xp, wpk, alpha, bias, r, y):
        for nq in T.parallel(n_ * qv_):
            acc = T.alloc_buffer((ob, lanes), at, scope="local")
            acc8 = T.alloc_buffer((ob, lanes), wt, scope="local")  # 4 byte counters a lane (byte_counts)
            mask = T.alloc_buffer((kw_, lanes), wt, scope="local")
            masks(mask, nq)
            for to in range(tiles_o):
                counts(xp, wpk, acc, acc8, nq, mask, to)
                for oi in T.unroll(ob):
                    if to * ob + oi < o_:
                        if nq % qv_ * lanes + lanes <= q_:
                            for lane in T.vectorized(lanes):
                                y[nq // qv_, to * ob + oi, nq % qv_ * lanes + lane] = value(
                                    alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                    r[nq // qv_, to * ob + oi, nq % qv_ * lanes + lane])
                        else:
                            for lane in range(q_ - nq % qv_ * lanes):
                                y[nq // qv_, to * ob + oi, nq % qv_ * lanes + lane] = value(
                                    alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                    r[nq // qv_, to * ob + oi, nq % qv_ * lanes + lane])

    if sign is not None:
        return _flat_sign(plan, symbol, sign, residual, value, masks, counts)
    if next_plan is None and residual is None:
        @T.prim_func
        def conv(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, y4: y_type):
            y = T.decl_buffer((n_, o_, oh_ * ow_), "float32", data=y4.data)  # the same memory, positions flattened
            tasks(xp, wpk, alpha, bias, y, y)  # no residual: ``r`` is never read

        return scheduled(conv, symbol)
    if next_plan is None:
        @T.prim_func
        def conv_res(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, r4: r_type, y4: y_type):
            r = T.decl_buffer((n_, o_, oh_ * ow_), "float32", data=r4.data)
            y = T.decl_buffer((n_, o_, oh_ * ow_), "float32", data=y4.data)
            tasks(xp, wpk, alpha, bias, r, y)

        return scheduled(conv_res, symbol)

    nb, nwt, ncw = next_plan.tiling.word_bits, next_plan.tiling.word_dtype, next_plan.words
    nplane = next_plan.plane
    head = next_plan.slack + next_plan.shape.pads[0] * w_  # the first data word of a next-layer plane
    tail = next_plan.slack + (next_plan.shape.pads[0] + oh_) * w_  # the first padding word after the data
    lo_type, hi_type = T.Buffer((op_,), "int32"), T.Buffer((op_,), "int32")  # one object each
    xpn_type = T.Buffer((n_, ncw, nplane), nwt)
    # the sign bits are built in lanes as wide as the compare's masks (no narrowing per channel): 16-bit where
    # the counts are 16-bit and the next words too, else 32-bit, narrowed once at the store
    word_acc = "uint16" if at == "uint16" and nb == 16 else "uint32"

    @T.prim_func
    def conv_pack(xp: xp_type, wpk: w_type, lo: lo_type, hi: hi_type, xpn: xpn_type):
        for nc in range(n_ * ncw):  # the next layer's padding words (+1): zero
            for col in range(head):
                xpn[nc // ncw, nc % ncw, col] = T.Cast(nwt, 0)
            for col in range(nplane - tail):
                xpn[nc // ncw, nc % ncw, tail + col] = T.Cast(nwt, 0)
        for nq in T.parallel(n_ * qv_):
            acc = T.alloc_buffer((ob, lanes), at, scope="local")
            acc8 = T.alloc_buffer((ob, lanes), wt, scope="local")
            mask = T.alloc_buffer((kw_, lanes), wt, scope="local")
            words = T.alloc_buffer((ncw, lanes), word_acc, scope="local")
            masks(mask, nq)
            for cw in range(ncw):
                for lane in T.vectorized(lanes):
                    words[cw, lane] = T.Cast(word_acc, 0)
            for to in range(tiles_o):
                counts(xp, wpk, acc, acc8, nq, mask, to)
                for oi in T.unroll(ob):
                    if to * ob + oi < o_:
                        for lane in T.vectorized(lanes):
                            words[(to * ob + oi) // nb, lane] = T.bitwise_or(words[(to * ob + oi) // nb, lane], T.Select(
                                acc[oi, lane] >= T.Cast(at, lo[to * ob + oi])
                                and acc[oi, lane] <= T.Cast(at, hi[to * ob + oi]),
                                T.shift_left(T.Cast(word_acc, 1), T.Cast(word_acc, (to * ob + oi) % nb)),
                                T.Cast(word_acc, 0)))
            for cw in range(ncw):
                if nq % qv_ * lanes + lanes <= q_:
                    for lane in T.vectorized(lanes):
                        xpn[nq // qv_, cw, head + nq % qv_ * lanes + lane] = T.Cast(nwt, words[cw, lane])
                else:
                    for lane in range(q_ - nq % qv_ * lanes):
                        xpn[nq // qv_, cw, head + nq % qv_ * lanes + lane] = T.Cast(nwt, words[cw, lane])

    return scheduled(conv_pack, symbol)


def _sign_types(plan: Plan, nxt: Plan) -> tuple[Any, ...]:
    """The buffer types of a :class:`SignOut` kernel's parameters (xp, wpk, alpha, bias, r, shift, y, xpn), one
    object each."""
    from tvm.script import tirx as T

    s, op_ = plan.shape, plan.o_padded
    out = (s.n, s.o, s.oh, s.ow)
    return (T.Buffer(plan.packed_x_shape, plan.tiling.word_dtype),
            T.Buffer((op_, s.kh, s.kw, plan.words), plan.tiling.word_dtype), T.Buffer((op_,), "float32"),
            T.Buffer((op_,), "float32"), T.Buffer(out, "float32"), T.Buffer((s.o,), "float32"),
            T.Buffer(out, "float32"), T.Buffer(nxt.packed_x_shape, nxt.tiling.word_dtype))


def _row_sign(plan: Plan, symbol: str, sign: SignOut, residual: Residual | None, value: Any, counts: Any) -> Any:
    """The row form writing :class:`SignOut` words (and the float map where ``keep_float``): PrimFunc(xp, wpk,
    alpha, bias, [r], shift [O], [y], xpn) — ``value`` and ``counts`` :func:`conv_func`'s. A row's sign words
    are gathered over its channel tiles for every column vector, then stored."""
    from tvm.script import tirx as T

    s, nxt = plan.shape, sign.next_plan
    n_, o_, oh_, ow_ = s.n, s.o, s.oh, s.ow
    op_, lanes, ob = plan.o_padded, plan.tiling.lanes, plan.tiling.ob
    tiles_o, tiles_x = op_ // ob, plan.ow_padded // lanes
    wt, at = plan.tiling.word_dtype, plan.acc_dtype
    nb, nwt, ncw = nxt.tiling.word_bits, nxt.tiling.word_dtype, nxt.words
    total = int(np.prod(nxt.packed_x_shape))
    next_flat, keep = nxt.flat, sign.keep_float
    (offset, cw_stride), head = _next_offset(nxt), nxt.slack + nxt.shape.pads[0] * ow_
    whole_vectors = residual is None

    xp_type, w_type, alpha_type, bias_type, r_type, shift_type, y_type, xpn_type = _sign_types(plan, nxt)

    @T.prim_func
    def conv_sign(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, r: r_type, shift: shift_type,
                  y: y_type, xpn: xpn_type):
        words_n = T.decl_buffer((total,), nwt, data=xpn.data)
        for i in range(total):  # the next layer's padding words (+1): zero
            words_n[i] = T.Cast(nwt, 0)
        for ny in T.parallel(n_ * oh_):
            acc = T.alloc_buffer((ob, lanes), at, scope="local")
            acc8 = T.alloc_buffer((ob, lanes), wt, scope="local")
            vals = T.alloc_buffer((lanes,), "float32", scope="local")
            words = T.alloc_buffer((ncw, tiles_x, lanes), "uint32", scope="local")
            for cw, tx in T.grid(ncw, tiles_x):
                for lane in T.vectorized(lanes):
                    words[cw, tx, lane] = T.uint32(0)
            for to in range(tiles_o):
                for tx in range(tiles_x):
                    counts(xp, wpk, acc, acc8, ny, tx, to)
                    for oi in T.unroll(ob):
                        if to * ob + oi < o_:
                            if whole_vectors:  # nothing read past the row: the last vector computes whole
                                for lane in T.vectorized(lanes):
                                    vals[lane] = value(alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                                       r[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane])
                            elif tx * lanes + lanes <= ow_:
                                for lane in T.vectorized(lanes):
                                    vals[lane] = value(alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                                       r[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane])
                            else:  # the shortcut is not read past the row's end
                                for lane in range(ow_ - tx * lanes):
                                    vals[lane] = value(alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                                       r[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane])
                            if keep:
                                if tx * lanes + lanes <= ow_:
                                    for lane in T.vectorized(lanes):
                                        y[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane] = vals[lane]
                                else:  # columns past the row are never stored
                                    for lane in range(ow_ - tx * lanes):
                                        y[ny // oh_, to * ob + oi, ny % oh_, tx * lanes + lane] = vals[lane]
                            for lane in T.vectorized(lanes):
                                words[(to * ob + oi) // nb, tx, lane] = T.bitwise_or(
                                    words[(to * ob + oi) // nb, tx, lane],
                                    T.Select(vals[lane] + shift[to * ob + oi] < T.float32(0),
                                             T.shift_left(T.uint32(1), T.Cast("uint32", (to * ob + oi) % nb)),
                                             T.uint32(0)))
            for cw, tx in T.grid(ncw, tiles_x):
                if next_flat and tx * lanes + lanes <= ow_:
                    for lane in T.vectorized(lanes):
                        xpn[ny // oh_, cw, head + ny % oh_ * ow_ + tx * lanes + lane] = T.Cast(nwt, words[cw, tx, lane])
                else:
                    for lane in range(T.min(lanes, ow_ - tx * lanes)):
                        words_n[offset(ny // oh_, ny % oh_, tx * lanes + lane) + cw * cw_stride] = T.Cast(
                            nwt, words[cw, tx, lane])

    unused = ({"r"} if residual is None else set()) | (set() if keep else {"y"})
    return scheduled(_without_params(conv_sign, unused, set()), symbol)


def _flat_sign(plan: Plan, symbol: str, sign: SignOut, residual: Residual | None, value: Any, masks: Any,
               counts: Any) -> Any:
    """The flat form writing :class:`SignOut` words (and the float map where ``keep_float``): PrimFunc(xp, wpk,
    alpha, bias, [r], shift [O], [y], xpn) — ``value``, ``masks`` and ``counts`` :func:`_conv_flat`'s."""
    from tvm.script import tirx as T

    s, nxt = plan.shape, sign.next_plan
    n_, o_, oh_, ow_ = s.n, s.o, s.oh, s.ow
    op_, qv_ = plan.o_padded, plan.q_vectors
    lanes, ob = plan.tiling.lanes, plan.tiling.ob
    tiles_o, q_ = op_ // ob, oh_ * ow_
    wt, at = plan.tiling.word_dtype, plan.acc_dtype
    nb, nwt, ncw = nxt.tiling.word_bits, nxt.tiling.word_dtype, nxt.words
    total = int(np.prod(nxt.packed_x_shape))
    next_flat, keep = nxt.flat, sign.keep_float
    (offset, cw_stride), head = _next_offset(nxt), nxt.slack + nxt.shape.pads[0] * ow_
    whole_vectors = residual is None

    xp_type, w_type, alpha_type, bias_type, r_type, shift_type, y_type, xpn_type = _sign_types(plan, nxt)

    @T.prim_func
    def conv_sign(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, r4: r_type, shift: shift_type,
                  y4: y_type, xpn: xpn_type):
        r = T.decl_buffer((n_, o_, q_), "float32", data=r4.data)
        y = T.decl_buffer((n_, o_, q_), "float32", data=y4.data)
        words_n = T.decl_buffer((total,), nwt, data=xpn.data)
        for i in range(total):  # the next layer's padding words (+1): zero
            words_n[i] = T.Cast(nwt, 0)
        for nq in T.parallel(n_ * qv_):
            acc = T.alloc_buffer((ob, lanes), at, scope="local")
            acc8 = T.alloc_buffer((ob, lanes), wt, scope="local")
            mask = T.alloc_buffer((s.kw, lanes), wt, scope="local")
            vals = T.alloc_buffer((lanes,), "float32", scope="local")
            words = T.alloc_buffer((ncw, lanes), "uint32", scope="local")
            dst = T.alloc_buffer((lanes,), "int32", scope="local")  # row-form next: each lane's word 0
            masks(mask, nq)
            if not next_flat:  # the scatter's offsets, once per task (lanes past the map: never used)
                for lane in T.vectorized(lanes):
                    dst[lane] = offset(nq // qv_, (nq % qv_ * lanes + lane) // ow_, (nq % qv_ * lanes + lane) % ow_)
            for cw in range(ncw):
                for lane in T.vectorized(lanes):
                    words[cw, lane] = T.uint32(0)
            for to in range(tiles_o):
                counts(xp, wpk, acc, acc8, nq, mask, to)
                for oi in T.unroll(ob):
                    if to * ob + oi < o_:
                        if whole_vectors:  # nothing read past the map: the last vector computes whole
                            for lane in T.vectorized(lanes):
                                vals[lane] = value(alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                                   r[nq // qv_, to * ob + oi, nq % qv_ * lanes + lane])
                        elif nq % qv_ * lanes + lanes <= q_:
                            for lane in T.vectorized(lanes):
                                vals[lane] = value(alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                                   r[nq // qv_, to * ob + oi, nq % qv_ * lanes + lane])
                        else:  # the shortcut is not read past the map's end
                            for lane in range(q_ - nq % qv_ * lanes):
                                vals[lane] = value(alpha[to * ob + oi], bias[to * ob + oi], acc[oi, lane],
                                                   r[nq // qv_, to * ob + oi, nq % qv_ * lanes + lane])
                        if keep:
                            if nq % qv_ * lanes + lanes <= q_:
                                for lane in T.vectorized(lanes):
                                    y[nq // qv_, to * ob + oi, nq % qv_ * lanes + lane] = vals[lane]
                            else:  # lanes past the map are never stored
                                for lane in range(q_ - nq % qv_ * lanes):
                                    y[nq // qv_, to * ob + oi, nq % qv_ * lanes + lane] = vals[lane]
                        for lane in T.vectorized(lanes):
                            words[(to * ob + oi) // nb, lane] = T.bitwise_or(words[(to * ob + oi) // nb, lane],
                                T.Select(vals[lane] + shift[to * ob + oi] < T.float32(0),
                                         T.shift_left(T.uint32(1), T.Cast("uint32", (to * ob + oi) % nb)),
                                         T.uint32(0)))
            for cw in range(ncw):
                if next_flat and nq % qv_ * lanes + lanes <= q_:
                    for lane in T.vectorized(lanes):
                        xpn[nq // qv_, cw, head + nq % qv_ * lanes + lane] = T.Cast(nwt, words[cw, lane])
                elif next_flat:
                    for lane in range(q_ - nq % qv_ * lanes):
                        xpn[nq // qv_, cw, head + nq % qv_ * lanes + lane] = T.Cast(nwt, words[cw, lane])
                else:
                    for lane in range(T.min(lanes, q_ - nq % qv_ * lanes)):
                        words_n[dst[lane] + cw * cw_stride] = T.Cast(nwt, words[cw, lane])

    unused = ({"r4"} if residual is None else set()) | (set() if keep else {"y4"})
    views = {"r4": "r", "y4": "y"}
    return scheduled(_without_params(conv_sign, unused, {views[u] for u in unused}), symbol)


def fusable(plan: Plan, next_plan: Plan) -> bool:
    """Whether :func:`conv_pack_func` can write ``next_plan``'s packed input from ``plan``'s conv: both flat
    forms, the next layer reading exactly this output (channels, size, batch)."""
    s, t = plan.shape, next_plan.shape
    return (plan.flat and next_plan.flat and t.c == s.o and (t.n, t.h, t.w) == (s.n, s.oh, s.ow)
            and next_plan.tiling.word_bits % plan.tiling.ob == 0)


def conv_pack_func(plan: Plan, next_plan: Plan, symbol: str) -> Any:
    """PrimFunc(xp, wpk, lo [Op] int32, hi [Op] int32, xpn) → the next binary layer's packed input, with no
    float output in between (:func:`fusable` plans): output channel o's bit is set where its popcount lies in
    [lo[o], hi[o]] (:func:`sign_bounds`). Why: issue 19 asks that binary activations stay packed between binary
    layers; the float map and its pack kernel go, and the epilogue is two integer compares a channel instead of
    the float affine map, the shift and a compare (the fused conv with floats in its epilogue cost what the
    separate pack did: 16 → 16 channels at 28×28 on a Zen 3, 8.9 µs against 7.6 + 1.25)."""
    return _conv_flat(plan, symbol, next_plan)


def sign_bounds(alpha: np.ndarray, bias: np.ndarray, shift: np.ndarray, k: int, o_padded: int
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi) int32 [o_padded]: for each output channel, the popcounts p ∈ [0, k] whose output
    ``alpha·(k − 2p) + bias`` plus the next layer's ``shift`` is negative (the next sign bit 1), as the interval
    [lo, hi] — evaluated in float32 for every p, the product and the sums each rounded as onnxruntime's Mul and
    Add round them. The output is monotone in p (rounding is), so the set is an interval (empty: lo > hi; a NaN
    never compares below 0); None, keeping the float output, should it ever not be one. Padded channels get the
    empty interval."""
    p = np.arange(k + 1, dtype=np.int64)
    lo = np.ones(o_padded, np.int32)
    hi = np.zeros(o_padded, np.int32)
    with np.errstate(all="ignore"):
        y = np.float32(alpha)[:, None] * (k - 2 * p).astype(np.float32)[None, :]
        negative = ((y + np.float32(bias)[:, None]).astype(np.float32) + np.float32(shift)[:, None]) < 0
    for o, row in enumerate(negative):
        hits = np.flatnonzero(row)
        if hits.size == 0:
            continue
        if hits[-1] - hits[0] + 1 != hits.size:
            return None
        lo[o], hi[o] = hits[0], hits[-1]
    return lo, hi


def takes(isa: Any) -> bool:
    """Whether this kernel (and binary_gemm's, which asks the same) serves a target: one with a vector popcount.
    x86-64 has it natively with AVX-512 VPOPCNTDQ and as LLVM's vpshufb nibble count with AVX2; AArch64 NEON as
    ``cnt v.16b`` summed into the int32 lanes (``uaddlp`` + ``uadalp``, or ``udot`` with the dot product
    extension). Arm is checked by its assembly and by runs on the emulated device (qemu-user), not timed on a
    board; its tile is 8 output channels (as with AVX-512's 32 registers) × 4 lanes: 8 accumulators and 8
    broadcast weight words fit NEON's 32 registers, no stack access in the hot loop. Elsewhere the inlined float body stays, which is correct everywhere."""
    return (isa.arch == "x86_64" and (isa.vpopcntdq or isa.has("avx2"))) or (isa.arch == "aarch64" and isa.has("neon"))


def binary_conv_parts(call: Any, lookup: Any) -> dict[str, Any] | None:
    """The pieces of the inlined ``edgec::BinaryConv`` body as TVM imports it, or None when ``call`` is not one:

        add(multiply(add(conv2d(where(less(add(x, shift), 0), −2, 0), W), Σ_window W), alpha), b)

    (:mod:`edgec.ops.functions`; the constants folded by ``lower_edgec_ops``). Every constant is checked, not
    assumed — W is ±1 and the added term is exactly each filter's sum — so the match is the binary conv's
    arithmetic whatever graph it came from, and replacing it is exact."""
    from edgec.targets.relax_rewrite import constant_value

    chain = producer_chain(call, ["add", "multiply", "add", "nn.conv2d", "where", "less", "add"], lookup)
    if chain is None:
        return None
    outer, scaled, integer, conv, where, less, shifted = chain
    values = [constant_value(e, lookup) for e in (conv.args[1], integer.args[1], scaled.args[1], outer.args[1], shifted.args[1],
                                 less.args[1], where.args[1], where.args[2])]
    if any(v is None for v in values):
        return None
    w, wsum, alpha, bias, shift, zero, minus2, zero2 = values
    o, c = w.shape[:2]
    if (not np.all(np.abs(w) == 1) or float(zero) != 0 or float(minus2) != -2 or float(zero2) != 0
            or any(np.size(v) not in (1, n) for v, n in ((alpha, o), (bias, o), (shift, c)))
            or wsum.size != o or not np.array_equal(wsum.reshape(o), w.sum(axis=(1, 2, 3)))):
        return None
    for v, n, axis in ((alpha, o, -3), (bias, o, -3), (shift, c, -3)):
        if np.size(v) == n and n > 1 and (np.ndim(v) < 3 or v.shape[axis] != n):
            return None  # a per-channel vector on some other axis
    shape = conv_shape(conv, shifted.args[0], o, c, w.shape[2], w.shape[3], BinaryConvShape)
    if shape is None:
        return None
    vec = (lambda v, n: np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (n,)).copy())
    x, shift = relu_absorbed(shifted.args[0], vec(shift, c), lookup)
    return {"x": x, "shape": shape, "w": w, "alpha": vec(alpha, o), "bias": vec(bias, o), "shift": shift}


def binary_conv_pass(isa: Any, stats: dict[str, Any] | None = None):
    """Relax pass (before the layout pass): each inlined ``edgec::BinaryConv`` → ``call_tir`` of :func:`pack_func`
    and :func:`conv_func`, the weights packed here as constants; then each pack whose input is a binary conv's
    output read by nothing else becomes that conv writing packed words (:func:`fuse_conv_pack`). ``stats`` (owned
    by the build) is filled with the layers taken and the convs that write packed words:
    ``{"layers": n, "shapes": [...], "packed_outputs": m}``. A target :func:`takes` refuses keeps the float body
    (the conv, where and less it leaves behind are dead code)."""
    import tvm

    plans: dict[str, Plan] = {}

    def rewrite(builder: Any, call: Any, lookup: Any, index: int):
        parts = binary_conv_parts(call, lookup)
        if parts is None:
            return None
        shape: BinaryConvShape = parts["shape"]
        plan = Plan(shape, Tiling.for_isa(isa, shape.o, shape.c, shape.same_stride1, shape.ow))
        plans[f"{CONV_SYMBOL}_{index}"] = plans[f"{PACK_SYMBOL}_{index}"] = plan
        return pack_then_kernel(builder, index, plan, (pack_func, PACK_SYMBOL), (conv_func, CONV_SYMBOL),
                                parts["x"], parts["shift"], plan.packed_x_shape,
                                [pack_weights(parts["w"], plan), padded_vector(parts["alpha"], plan),
                                 padded_vector(parts["bias"], plan)], (shape.n, shape.o, shape.oh, shape.ow),
                                plan.tiling.word_dtype), shape

    kernels = op_kernel_pass("EdgecBinaryConvKernels", lambda: takes(isa), rewrite, stats)

    @tvm.transform.module_pass(opt_level=0, name="EdgecBinaryConvPacked")
    def _pass(mod: Any, _ctx: Any) -> Any:
        plans.clear()
        mod = kernels(mod)
        fused = residuals = signs = 0
        if plans:
            mod, fused = fuse_conv_pack(mod, plans)
            taken: dict[str, tuple[str, Residual]] = {}
            mod, residuals = fuse_residual(mod, plans, taken)
            mod, signs = fuse_sign_output(mod, plans, taken)
        if stats is not None and stats.get("layers"):
            stats["packed_outputs"] = fused
            stats["residual_epilogues"] = residuals
            stats["sign_epilogues"] = signs
        return mod

    return _pass


def fuse_conv_pack(mod: Any, plans: dict[str, Plan]) -> tuple[Any, int]:
    """(``mod`` with each ``pack(conv(…))`` whose conv output nothing else reads replaced by one call of
    :func:`conv_pack_func`, how many): the plans by kernel symbol (``plans``) decide :func:`fusable`."""
    from tvm import relax

    from edgec.targets.relax_rewrite import constant_value, rewrite_with_builder

    fused: list[str] = []
    replaced: list[str] = []

    @relax.expr_functor.mutator
    class _Fuse(relax.PyExprMutator):
        def visit_function_(self, func: Any) -> Any:
            self.uses = use_counts(func)
            return super().visit_function_(func)

        def visit_call_(self, call: Any) -> Any:
            name = kernel_name(call)
            new = super().visit_call_(call)
            if name is None or name not in plans or not name.startswith(PACK_SYMBOL):
                return new
            x, shift = call.args[1].fields
            conv = self.lookup_binding(x) if isinstance(x, relax.Var) else None
            conv_name = kernel_name(conv)
            if (conv_name is None or not conv_name.startswith(CONV_SYMBOL) or conv_name not in plans
                    or self.uses.get(x, 0) != 1 or not fusable(plans[conv_name], plans[name])):
                return new
            xp, wpk, alpha, bias = conv.args[1].fields
            values = [constant_value(e, self.lookup_binding) for e in (alpha, bias, shift)]
            plan = plans[conv_name]
            bounds = None if any(v is None for v in values) else sign_bounds(
                values[0][: plan.shape.o], values[1][: plan.shape.o], values[2], plan.shape.k, plan.o_padded)
            if bounds is None:
                return new
            symbol = f"{CONV_SYMBOL}_pack{name[len(PACK_SYMBOL):]}"
            gv = self.builder_.add_func(conv_pack_func(plan, plans[name], symbol), symbol)
            fused.append(symbol)
            replaced.extend([conv_name, name])
            return relax.call_tir(gv, [self.visit_expr(xp), self.visit_expr(wpk), relax.const(bounds[0]),
                                       relax.const(bounds[1])], out_ty=call.ty_args[0])

    mod = rewrite_with_builder(mod, _Fuse)
    if not fused:
        return mod, 0
    return without_dead_kernels(mod, replaced), len(fused)


def kernel_name(call: Any) -> str | None:
    """The PrimFunc a Relax ``call_tir`` with a tuple of arguments calls, or None for any other expression."""
    import tvm
    from tvm import relax

    if (isinstance(call, relax.Call) and call.op == tvm.ir.Op.get("relax.call_tir")
            and isinstance(call.args[1], relax.Tuple)):
        return call.args[0].name_hint
    return None


def bound_values(func: Any) -> dict[Any, Any]:
    """Each dataflow variable of a Relax function → the expression bound to it, as the function stands (a
    mutator's own lookup gives the rewritten one)."""
    return {b.var: b.value for block in getattr(func.body, "blocks", []) for b in block.bindings}


def use_counts(func: Any) -> dict[Any, int]:
    """How many bindings (and the function's result) read each variable of a Relax function: a kernel output
    read once can be fused into its reader."""
    from tvm import relax

    uses: dict[Any, int] = {}
    for block in getattr(func.body, "blocks", []):
        for binding in block.bindings:
            for var in relax.analysis.free_vars(binding.value):
                uses[var] = uses.get(var, 0) + 1
    for var in relax.analysis.free_vars(func.body.body):
        uses[var] = uses.get(var, 0) + 1
    return uses


def without_dead_kernels(mod: Any, candidates: list[str]) -> Any:
    """``mod`` after dead-code elimination, without the PrimFuncs among ``candidates`` that no Relax function
    calls any more (DCE keeps PrimFuncs that carry a global symbol)."""
    import tvm
    from tvm import relax

    mod = relax.transform.DeadCodeElimination()(mod)
    used: set[str] = set()
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: used.add(e.name_hint)
                                            if isinstance(e, tvm.ir.GlobalVar) else None)
    dropped = set(candidates) - used
    return tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint not in dropped},
                        attrs=mod.attrs, global_infos=mod.global_infos)


def fuse_residual(mod: Any, plans: dict[str, Plan], taken: dict[str, tuple[str, Residual]] | None = None
                  ) -> tuple[Any, int]:
    """(``mod`` with each ``[relu](add(conv, [relu](r)))`` — a float-output binary conv read by nothing else,
    ``r`` a float tensor of the conv output's shape — replaced by one call of :func:`conv_func` with that
    :class:`Residual` epilogue, how many). A ReLU on ``r`` is taken when nothing else reads its output, the
    outer one when nothing else reads the sum. ``taken`` (if given) receives each new kernel's symbol → (the
    conv's symbol, its :class:`Residual`). The sum is the conv's float output plus r, as onnxruntime adds
    them (the affine map itself may be one fused multiply-add: equal within float tolerance, not bit for bit)."""
    import tvm
    import tvm_ffi
    from tvm import relax

    from edgec.targets.relax_rewrite import rewrite_with_builder

    add_op, relu_op = tvm.ir.Op.get("relax.add"), tvm.ir.Op.get("relax.nn.relu")
    fused: list[str] = []
    replaced: list[str] = []

    def is_call(expr: Any, op: Any) -> bool:
        return isinstance(expr, relax.Call) and expr.op == op

    @relax.expr_functor.mutator
    class _Fuse(relax.PyExprMutator):
        def visit_function_(self, func: Any) -> Any:
            self.uses = use_counts(func)
            self.bound = bound_values(func)
            # a sum read only by a ReLU is fused at the ReLU (post), not at the add
            self.at_relu = [v for v in self.bound.values() if is_call(v, relu_op) and self.match(v.args[0])]
            return super().visit_function_(func)

        def match(self, var: Any) -> tuple[Any, Any, bool] | None:
            """(conv call, r, pre ReLU) when ``var`` (read once) is bound to a fusable add."""
            add = self.bound.get(var) if isinstance(var, relax.Var) and self.uses.get(var, 0) == 1 else None
            return self.match_add(add) if is_call(add, add_op) else None

        def match_add(self, add: Any) -> tuple[Any, Any, bool] | None:
            for a, b in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
                conv = self.bound.get(a) if isinstance(a, relax.Var) and self.uses.get(a, 0) == 1 else None
                name = kernel_name(conv)
                if (name is None or len(conv.args[1].fields) != 4 or name not in plans
                        or not name.startswith(CONV_SYMBOL + "_")
                        or not tvm_ffi.structural_equal(a.ty, b.ty)):
                    continue
                inner = self.bound.get(b) if isinstance(b, relax.Var) and self.uses.get(b, 0) == 1 else None
                if is_call(inner, relu_op):
                    return conv, inner.args[0], True
                return conv, b, False
            return None

        def visit_call_(self, call: Any) -> Any:
            new = super().visit_call_(call)
            post = any(call.same_as(v) for v in self.at_relu)
            if post:
                add = self.bound[call.args[0]]
            elif is_call(call, add_op) and not any(call.same_as(self.bound.get(v.args[0])) for v in self.at_relu):
                add = call
            else:
                return new
            found = self.match_add(add)
            if found is None:
                return new
            conv, r, pre = found
            name = conv.args[0].name_hint
            symbol = f"{name}_res{len(fused)}"
            gv = self.builder_.add_func(conv_func(plans[name], symbol, Residual(pre, post)), symbol)
            if taken is not None:
                taken[symbol] = (name, Residual(pre, post))
            fused.append(symbol)
            replaced.append(name)
            xp, wpk, alpha, bias = (self.visit_expr(e) for e in conv.args[1].fields)
            return relax.call_tir(gv, [xp, wpk, alpha, bias, self.visit_expr(r)], out_ty=conv.ty_args[0])

    mod = rewrite_with_builder(mod, _Fuse)
    if not fused:
        return mod, 0
    return without_dead_kernels(mod, replaced), len(fused)


def fuse_sign_output(mod: Any, plans: dict[str, Plan], residuals: dict[str, tuple[str, Residual]]
                     ) -> tuple[Any, int]:
    """(``mod`` with each binary ``pack(y, shift)`` whose ``y`` is a float-output binary conv's — plain or with
    a residual epilogue (``residuals``: symbol → (conv symbol, :class:`Residual`)) — of the shape the pack reads,
    ``shift`` a constant, replaced by the conv writing the packed words itself (:class:`SignOut`): the float map
    kept as a second output when something else reads it, how many). :func:`fuse_conv_pack` runs first and
    takes the flat → flat pairs its integer bounds serve."""
    from tvm import relax

    from edgec.targets.relax_rewrite import constant_value, rewrite_with_builder

    fused: list[str] = []
    replaced: list[str] = []

    @relax.expr_functor.mutator
    class _Fuse(relax.PyExprMutator):
        def visit_function_(self, func: Any) -> Any:
            uses = use_counts(func)
            bound = bound_values(func)
            self.pairs: list[tuple[Any, Any, SignOut, Residual | None, Plan, np.ndarray]] = []
            seen: list[Any] = []
            for pack in bound.values():
                name = kernel_name(pack)
                if name is None or name not in plans or not name.startswith(PACK_SYMBOL):
                    continue
                x, shift = pack.args[1].fields
                conv = bound.get(x) if isinstance(x, relax.Var) else None
                conv_name = kernel_name(conv)
                base, residual = residuals.get(conv_name, (conv_name, None))
                if (base is None or not base.startswith(CONV_SYMBOL + "_") or base not in plans
                        or any(conv.same_as(c) for c in seen)):
                    continue
                plan, nxt = plans[base], plans[name]
                s, t = plan.shape, nxt.shape
                value = constant_value(shift, lambda v: bound.get(v))
                if value is None or t.c != s.o or (t.n, t.h, t.w) != (s.n, s.oh, s.ow):
                    continue
                seen.append(conv)
                sign = SignOut(nxt, keep_float=uses.get(x, 0) > 1)
                self.pairs.append((conv, pack, sign, residual, plan, np.asarray(value, np.float32).reshape(-1)))
            self.tuples: dict[int, Any] = {}
            return super().visit_function_(func)

        def fused_call(self, conv: Any, pack: Any, sign: SignOut, residual: Residual | None, plan: Plan,
                       shift: np.ndarray) -> Any:
            symbol = f"{CONV_SYMBOL}_sign{len(fused)}"
            gv = self.builder_.add_func(conv_func(plan, symbol, residual, sign), symbol)
            fused.append(symbol)
            replaced.extend([kernel_name(conv), kernel_name(pack)])
            args = [self.visit_expr(e) for e in conv.args[1].fields]
            outs = [conv.ty_args[0], pack.ty_args[0]] if sign.keep_float else pack.ty_args[0]
            return relax.call_tir(gv, [*args, relax.const(shift)], out_ty=outs)

        def visit_call_(self, call: Any) -> Any:
            new = super().visit_call_(call)
            for i, (conv, pack, sign, residual, plan, shift) in enumerate(self.pairs):
                if call.same_as(conv) and sign.keep_float:
                    self.tuples[i] = self.builder_.emit(self.fused_call(conv, pack, sign, residual, plan, shift))
                    return relax.TupleGetItem(self.tuples[i], 0)
                if call.same_as(pack):
                    if sign.keep_float:
                        return relax.TupleGetItem(self.tuples[i], 1)
                    return self.fused_call(conv, pack, sign, residual, plan, shift)
            return new

    mod = rewrite_with_builder(mod, _Fuse)
    if not fused:
        return mod, 0
    return without_dead_kernels(mod, replaced), len(fused)
