"""Adder convolution (``edgec::AdderConv``, AdderNet, issue 19): y[o] = −Σ|x_pad − w[o]| + b[o] as a blocked
direct conv in float32.

Why: the inlined function body unfolds the input with a one-hot conv (K = C·kh·kw times the input), then
subtracts, takes |·| and reduces a [N, O, K, L] tensor: every term goes through memory several times. This kernel
keeps a register tile of output positions × output-channel vectors and streams the weights once per tile.

Arithmetic: |x − w| = 2·max(x, w) − x − w, so

    y[o, p] = b[o] + Σw[o] + Sx[p] − 2·Σ max(x, w[o])

with Sx[p] the sum of the (zero-padded) input over position p's window — independent of o, computed once per
position — and Σw[o] a compile-time constant. The inner loop is then one ``max`` and one ``fma`` (× −2) per term
(two vector operations per ``lanes`` terms, where the literal |x − w| is sub + and(abs mask) + sub: three), and
padding stays exact: a pad position is x = 0, which enters max(0, w) and adds 0 to Sx. The sums are of larger
terms than Σ|x − w| itself, so rounding is that of a float32 sum of max(x, w) (at most 1.3e-6 of the output's
scale over the sweep of tests/test_adder_kernel.py, which allows 1e-4).

One PrimFunc per layer (:func:`conv_func`), written as scheduled loop nests (``tirx.is_scheduled``), in two
parallel phases:

* padding — x [N, C, H, W] → scratch ``xp`` [N, C, Hp, Wp] (zero padded; wide enough for the last position
  tile's extra columns) and ``cs`` [N, Hp, Wp], the channel sum of ``xp`` (Sx is then kh·kw adds per position);
* conv — ``xp``, ``cs``, the weights laid out at compile time as [O/lanes, C, kh, kw, lanes]
  (:func:`pack_weights`, output channels in vector lanes) and ``cb`` = b + Σw → y [N, O, OH, OW]. A parallel task
  per output row; a register tile of ``positions`` output columns × ``vectors`` channel vectors accumulates
  max(broadcast x, weight vector) over (c, kh, kw); the epilogue fuses Sx, Σw and the bias and stores each
  channel vector as one vector expression (LLVM stores its lanes straight from the register, ``vextractps``, not
  through a spilled tile: 3–17 % faster than the lane-by-lane loop it replaced, most on 16-channel layers), a
  partial last vector lane by lane.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgec.targets.cpu.kernels.op_kernel import (ConvShape, TilePlan, conv_shape, op_kernel_pass, producer_chain,
                                                 scheduled, weight_value)

CONV_SYMBOL = "edgec_adder_conv"
AdderConvShape = ConvShape  # an adder conv layer needs nothing beyond the conv's shape


@dataclasses.dataclass(frozen=True)
class Tiling:
    """The register tile: ``positions`` output columns × ``vectors`` vectors of ``lanes`` output channels.
    ``fma``: accumulate as fma(max(x, w), −2, acc), the accumulation on the FMA pipes (the target's FMA
    feature); without it acc + (−2)·max, a multiply and an add. ``maxnum``: take the max as LLVM's ``maxnum``
    (AArch64 ``fmaxnm``, one instruction) instead of TIR's ``max``, which LLVM lowers to compare-and-select: one
    ``maxps`` on x86, but on NEON ``fcmgt`` + a register copy + ``bsl`` (3 instructions instead of 1, and a 7 × 2
    tile's selected values spilled to the stack). The two differ only for NaN inputs."""

    lanes: int
    vectors: int
    positions: int
    fma: bool = True
    maxnum: bool = False

    @classmethod
    def for_isa(cls, isa: Any, o: int, ow: int) -> Tiling:
        """Two channel vectors where there are that many channels, else one; as many positions as the registers
        hold besides the weight vectors and temporaries (32 registers: 12 × 2, 16 registers: 4 × 2), lowered to
        at least half of that when a smaller tile wastes fewer columns of the row (28 columns: 7, not 12).

        On AArch64 a two-vector tile stops at 7 positions: NEON's ``fmaxnm`` has no memory operand, so each
        broadcast x is an ``ld1r`` holding a register too (14 accumulators + 7 broadcasts + 2 weights + the scale).
        In the assembly of eleven 3×3 layers (7-56 columns, cortex-a72 and -a76 alike) the hot loop (3 taps) had
        no stack access at 6 or 7 × 2, 5-6 at 8 × 2 and 24-31 at the x86 tile's 12 × 2 (an 8-column row takes
        4 × 2, where LLVM unrolls the whole window: 33 per 9 taps). One vector keeps up to 14: at 7 × 1 LLVM
        unrolls the whole window too and spills more (25-80) than at 14 × 1 (1-19)."""
        lanes = isa.lanes
        vectors = 2 if o > lanes else 1
        most = max(1, (isa.vector_registers - 2 * vectors - 4) // vectors)
        most = min(most, 12 if vectors == 2 else 14, ow)
        if isa.arch == "aarch64" and vectors == 2:
            most = min(most, 7)
        best = min(range(max(1, most // 2), most + 1), key=lambda p: (-(-ow // p) * p, -p))
        return cls(lanes=lanes, vectors=vectors, positions=best, fma=isa.fma, maxnum=isa.arch == "aarch64")


@dataclasses.dataclass(frozen=True)
class Plan(TilePlan):
    """The buffers' sizes a shape and a tiling imply (:class:`op_kernel.TilePlan`) and this kernel's layouts."""

    @property
    def padded_x_shape(self) -> tuple[int, int, int, int]:
        return (self.shape.n, self.shape.c, self.hp, self.wp)

    @property
    def channel_sum_shape(self) -> tuple[int, int, int]:
        return (self.shape.n, self.hp, self.wp)

    @property
    def packed_w_shape(self) -> tuple[int, int, int, int, int]:
        s = self.shape
        return (self.o_padded // self.tiling.lanes, s.c, s.kh, s.kw, self.tiling.lanes)


def pack_weights(w: np.ndarray, plan: Plan) -> np.ndarray:
    """float [O, C, kh, kw] → [O/lanes, C, kh, kw, lanes] float32 (channels past O zero, never stored)."""
    lanes = plan.tiling.lanes
    full = np.zeros((plan.o_padded,) + tuple(w.shape[1:]), np.float32)
    full[: w.shape[0]] = w
    return np.ascontiguousarray(full.reshape(plan.o_padded // lanes, lanes, *w.shape[1:]).transpose(0, 2, 3, 4, 1))


def epilogue_constant(w: np.ndarray, bias: np.ndarray, plan: Plan) -> np.ndarray:
    """b[o] + Σw[o] (float64 sum, rounded once), zero-padded to the tiled channel count, then one vector of −2:
    the accumulation's scale. Read from memory, not a literal: with the literal −2, LLVM's code for the same
    loop nest ran 1.75x slower on a 128-channel 14×14 layer (0.58 vs 0.33 ms, Zen 5; equal on 64 × 28×28)."""
    out = np.zeros(plan.o_padded + plan.tiling.lanes, np.float32)
    out[: w.shape[0]] = (np.asarray(bias, np.float64) + np.asarray(w, np.float64).sum(axis=(1, 2, 3)))
    out[plan.o_padded:] = -2.0
    return out


def conv_func(plan: Plan, symbol: str = CONV_SYMBOL) -> Any:
    """PrimFunc(x [N, C, H, W] f32, wp [O/lanes, C, kh, kw, lanes], cb [Op + lanes]) → y [N, O, OH, OW] f32,
    exported as ``symbol``.

    Two parallel loops in one function (the second starts when the first has finished): the padding copy with its
    channel sum (scratch buffers ``xp`` [N, C, Hp, Wp], ``cs`` [N, Hp, Wp], from TVM's workspace pool), then the
    conv, a task per output row. One function, not two: a PrimFunc with a single input is taken for a reshape by
    TVM's RewriteDataflowReshape, which cannot read a scheduled loop nest."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, c_, h_, w_ = s.n, s.c, s.h, s.w
    o_, oh_, ow_ = s.o, s.oh, s.ow
    kh_, kw_ = s.kh, s.kw
    sh, sw = s.strides
    dh, dw = s.dilations
    pt, pl = s.pads[0], s.pads[1]
    hp, wp, op_ = plan.hp, plan.wp, plan.o_padded
    lanes, vb, pb = plan.tiling.lanes, plan.tiling.vectors, plan.tiling.positions
    tiles_o, tiles_x = op_ // (lanes * vb), plan.ow_tiles
    fused = plan.tiling.fma
    larger = _maxnum if plan.tiling.maxnum else T.max  # evaluated while the script is parsed

    x_type = T.Buffer((n_, c_, h_, w_), "float32")
    w_type, cb_type = T.Buffer((op_ // lanes, c_, kh_, kw_, lanes), "float32"), T.Buffer((op_ + lanes,), "float32")
    y_type = T.Buffer((n_, o_, oh_, ow_), "float32")

    @T.prim_func
    def conv(x: x_type, wpk: w_type, cb: cb_type, y: y_type):
        xp = T.alloc_buffer((n_, c_, hp, wp), "float32")
        cs = T.alloc_buffer((n_, hp, wp), "float32")
        for nh in T.parallel(n_ * hp):
            for col in T.vectorized(wp):
                cs[nh // hp, nh % hp, col] = T.float32(0)
            for c in range(c_):
                for col in T.vectorized(wp):
                    xp[nh // hp, c, nh % hp, col] = T.float32(0)
                if nh % hp >= pt and nh % hp < pt + h_:
                    for col in T.vectorized(w_):
                        xp[nh // hp, c, nh % hp, pl + col] = x[nh // hp, c, nh % hp - pt, col]
                    for col in T.vectorized(w_):
                        cs[nh // hp, nh % hp, pl + col] = cs[nh // hp, nh % hp, pl + col] + \
                            x[nh // hp, c, nh % hp - pt, col]
        for ny in T.parallel(n_ * oh_):
            acc = T.alloc_buffer((pb, vb, lanes), "float32", scope="local")
            sx = T.alloc_buffer((pb,), "float32", scope="local")
            scale = T.alloc_buffer((lanes,), "float32", scope="local")
            for lane in T.vectorized(lanes):
                scale[lane] = cb[op_ + lane]
            for tx in range(tiles_x):
                for p in T.unroll(pb):
                    sx[p] = T.float32(0)
                for i, j in T.grid(kh_, kw_):
                    for p in T.unroll(pb):
                        sx[p] = sx[p] + cs[ny // oh_, ny % oh_ * sh + i * dh, (tx * pb + p) * sw + j * dw]
                for to in range(tiles_o):
                    for p in T.unroll(pb):
                        for v in T.unroll(vb):
                            for lane in T.vectorized(lanes):
                                acc[p, v, lane] = T.float32(0)
                    for c, i, j in T.grid(c_, kh_, kw_):
                        for p in T.unroll(pb):
                            for v in T.unroll(vb):
                                for lane in T.vectorized(lanes):
                                    if fused:
                                        acc[p, v, lane] = T.fma(larger(
                                            xp[ny // oh_, c, ny % oh_ * sh + i * dh, (tx * pb + p) * sw + j * dw],
                                            wpk[to * vb + v, c, i, j, lane]), scale[lane], acc[p, v, lane])
                                    else:
                                        acc[p, v, lane] = acc[p, v, lane] + scale[lane] * larger(
                                            xp[ny // oh_, c, ny % oh_ * sh + i * dh, (tx * pb + p) * sw + j * dw],
                                            wpk[to * vb + v, c, i, j, lane])
                    for v in T.unroll(vb):
                        for p in T.unroll(pb):
                            if tx * pb + p < ow_:
                                if (to * vb + v + 1) * lanes <= o_:
                                    for lane in T.vectorized(lanes):
                                        y[ny // oh_, (to * vb + v) * lanes + lane, ny % oh_, tx * pb + p] = (
                                            cb[(to * vb + v) * lanes + lane] + sx[p] + acc[p, v, lane])
                                else:
                                    for lane in range(lanes):
                                        if (to * vb + v) * lanes + lane < o_:
                                            y[ny // oh_, (to * vb + v) * lanes + lane, ny % oh_, tx * pb + p] = (
                                                cb[(to * vb + v) * lanes + lane] + sx[p] + acc[p, v, lane])

    return scheduled(conv, symbol)


def _maxnum(a: Any, b: Any) -> Any:
    """max(a, b) as LLVM's ``maxnum`` intrinsic (AArch64 ``fmaxnm``): see :attr:`Tiling.maxnum`."""
    from tvm.script import tirx as T

    return T.call_llvm_pure_intrin("float32", "llvm.maxnum", a, b)


def takes(isa: Any) -> bool:
    """Whether this kernel serves a target: x86-64 with AVX (8 or 16 float lanes), or AArch64 with NEON (4 lanes,
    the max as ``fmaxnm`` and a tile of at most 7 × 2: :class:`Tiling`; checked by its assembly and by runs on the
    emulated device, not timed on a board). Elsewhere the inlined float body stays, which is correct everywhere."""
    return (isa.arch == "x86_64" and isa.lanes >= 8) or (isa.arch == "aarch64" and isa.has("neon"))


def _is_unfold(expr: Any, k: int, lookup: Any) -> bool:
    """Whether ``expr`` is the body's one-hot unfold filters eye(K) as [K, C, kh, kw]: a folded constant, or
    (K² elements past the constant folder's size limit) ``reshape(eye_like(t [K, K], 0))`` left to run."""
    from edgec.targets.relax_rewrite import constant_value

    value = constant_value(expr, lookup)
    if value is not None:
        return value.size == k * k and np.array_equal(value.reshape(k, k), np.eye(k))
    chain = producer_chain(expr, ["reshape", "eye_like"], lookup)
    eye = chain[1] if chain is not None else None
    if eye is None or len(eye.args) < 2:
        return False
    shape = getattr(eye.ty, "shape", None)
    diagonal = eye.args[1]
    return (shape is not None and [int(d) for d in shape] == [k, k] and str(eye.ty.dtype) == "float32"
            and int(getattr(diagonal, "value", -1)) == 0)


def adder_conv_parts(call: Any, lookup: Any) -> dict[str, Any] | None:
    """The pieces of the inlined ``edgec::AdderConv`` body as TVM imports it, or None when ``call`` is not one:

        add(reshape(negative(sum(abs(subtract(reshape(conv2d(x, onehot)), W3)), axis=2))), b)

    (:mod:`edgec.ops.functions`; constants folded by ``lower_edgec_ops``). Every constant is checked — the
    unfold filters are exactly eye(K) as [K, C, kh, kw], W3 is [O, K, 1] (a constant, or the dequantized
    integers of a quantized adder: ``op_kernel.weight_value``), the sum is over K — so the match is
    the adder conv's arithmetic whatever graph it came from (the filters' *shape* gives C, kh, kw)."""
    from edgec.targets.relax_rewrite import constant_value

    chain = producer_chain(call, ["add", "reshape", "negative", "sum", "abs", "subtract", "reshape", "nn.conv2d"],
                           lookup)
    if chain is None:
        return None
    outer, _, _, total, _, diff, _, conv = chain
    x = conv.args[0]
    if total.attrs.axis is None or [int(v) for v in total.attrs.axis] != [2] or total.attrs.keepdims:
        return None
    w3, bias = weight_value(diff.args[1], lookup), constant_value(outer.args[1], lookup)
    filters = getattr(getattr(conv.args[1], "ty", None), "shape", None)
    if w3 is None or bias is None or w3.ndim != 3 or filters is None or len(filters) != 4:
        return None
    k, c, kh, kw = (int(d) for d in filters)
    o = w3.shape[0]
    if (k != c * kh * kw or w3.shape != (o, k, 1) or not _is_unfold(conv.args[1], k, lookup)
            or np.size(bias) not in (1, o)):
        return None
    if np.size(bias) == o and o > 1 and (np.ndim(bias) < 3 or bias.shape[-3] != o):
        return None  # a per-channel vector on some other axis
    shape = conv_shape(conv, x, o, c, kh, kw, AdderConvShape)
    if shape is None:
        return None
    out_shape = getattr(call.ty, "shape", None)
    if out_shape is None or tuple(int(d) for d in out_shape) != (shape.n, o, shape.oh, shape.ow):
        return None
    return {"x": x, "shape": shape, "w": w3.reshape(o, c, kh, kw).astype(np.float32),
            "bias": np.broadcast_to(np.asarray(bias, np.float32).reshape(-1), (o,)).copy()}


def adder_conv_pass(isa: Any, stats: dict[str, Any] | None = None):
    """Relax pass (before the layout pass): each inlined ``edgec::AdderConv`` → ``call_tir`` of :func:`conv_func`,
    the weights laid out here as constants. ``stats`` (owned by the build) is filled with the layers taken:
    ``{"layers": n, "shapes": [...]}``. A target :func:`takes` refuses keeps the float body (the unfold conv,
    subtract and abs it leaves behind are dead code)."""

    def rewrite(builder: Any, call: Any, lookup: Any, index: int):
        from tvm import relax

        parts = adder_conv_parts(call, lookup)
        if parts is None:
            return None
        shape: AdderConvShape = parts["shape"]
        plan = Plan(shape, Tiling.for_isa(isa, shape.o, shape.ow))
        conv = builder.add_func(conv_func(plan, f"{CONV_SYMBOL}_{index}"), f"{CONV_SYMBOL}_{index}")
        return relax.call_tir(conv, [parts["x"], relax.const(pack_weights(parts["w"], plan)),
                                     relax.const(epilogue_constant(parts["w"], parts["bias"], plan))],
                              out_ty=relax.TensorType((shape.n, shape.o, shape.oh, shape.ow), "float32")), shape

    return op_kernel_pass("EdgecAdderConvKernels", lambda: takes(isa), rewrite, stats)
