"""Bit-packed binary convolution for CUDA targets (``edgec::BinaryConv``, issue 19 item 3): XNOR + ``__popc``.

Why: without it a CUDA build runs the inlined float body (a float conv on ±1 values); packed, 32 input channels
are one word and one ``xor`` + ``popc`` + ``add`` replaces 32 multiply-adds (Σ s·w = K − 2·popcount(x xor w),
:mod:`edgec.ops.reference`). The layer is found by the CPU kernel's matcher
(:func:`edgec.targets.cpu.kernels.binary_conv.binary_conv_parts`), so both targets replace exactly the same bodies.

Two PrimFuncs per layer, loop nests written with their thread bindings (``tirx.is_scheduled``: dlight leaves
them alone):

* :func:`pack_func` — float ``x`` [N, C, H, W] (+ ``shift`` [C]) → sign bits ``xp`` [N, Cw, Hp, Wp] uint32, 32
  channels per word (bit 1 = −1, as :mod:`edgec.ops.packing`), the spatial padding in place as zero words (bit 0
  = +1, the function form's padding value), channels past C zero bits. One thread per word; neighbouring threads
  read neighbouring columns of one channel plane (coalesced).
* :func:`conv_func` — ``xp`` and the weights packed at compile time (:func:`pack_weights`, [Op/ob, kh, kw, Cw,
  ob]) → ``y`` [N, O, OH, OW] float32 with ``alpha[o]·(K − 2·pop) + b[o]`` fused. A block is ``threads`` output
  positions of one image × one tile of ``ob`` output channels; each thread keeps ``ob`` int32 popcount
  accumulators, so one activation word load serves ``ob`` xor-popc-adds. The weight words a step reads are the
  same for every thread of the block (one broadcast load each, L1-resident: a layer's packed weights are a few
  KiB), so they are not staged in shared memory; activation loads and output stores are coalesced along columns.

Pad bits are 0 in both operands, so their xor is 0 and K = C·kh·kw counts only real channels; spatial padding
words are 0 = +1 activations, counted in K like the function form's. Output channels are padded to whole tiles in
the packed weights and never stored.

The kernels contain no shared memory and no barriers, so turning every thread loop into a serial loop
(:func:`edgec.targets.gpu.host_check.serial_threads`) gives a CPU program with the same arithmetic and index
maps: tests/test_gpu_kernels.py checks the very PrimFuncs a CUDA build uses that way against onnxruntime.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgec.ops.packing import pack_signs
from edgec.targets.cpu.kernels.binary_conv import WORD_BITS, BinaryConvShape, binary_conv_parts, padded_vector
from edgec.targets.cpu.kernels.op_kernel import op_kernel_pass, pack_then_kernel, scheduled
from edgec.targets.gpu.thread_plan import ConvThreadPlan

PACK_SYMBOL = "edgec_cuda_binary_pack"
CONV_SYMBOL = "edgec_cuda_binary_conv"
PACK_THREADS = 256


@dataclasses.dataclass(frozen=True)
class Plan(ConvThreadPlan):
    """:class:`ConvThreadPlan` with this kernel's buffer layouts."""

    shape: BinaryConvShape

    @property
    def hp(self) -> int:
        return self.shape.h + self.shape.pads[0] + self.shape.pads[2]

    @property
    def wp(self) -> int:
        return self.shape.w + self.shape.pads[1] + self.shape.pads[3]

    @property
    def packed_x_shape(self) -> tuple[int, int, int, int]:
        return (self.shape.n, self.shape.words, self.hp, self.wp)

    @property
    def packed_w_shape(self) -> tuple[int, int, int, int, int]:
        s = self.shape
        return (self.o_padded // self.ob, s.kh, s.kw, s.words, self.ob)


def pack_weights(w: np.ndarray, plan: Plan) -> np.ndarray:
    """Sign bits of ``w`` — float [O, C, kh, kw] or ±1 — as uint32 [Op/ob, kh, kw, Cw, ob] (a tile's ``ob``
    words for one tap and word are adjacent; extra output channels zero words)."""
    words = pack_signs(np.asarray(w, np.float32), axis=1, word_bits=WORD_BITS)  # [O, Cw, kh, kw]
    full = np.zeros((plan.o_padded,) + words.shape[1:], np.uint32)
    full[: w.shape[0]] = words
    tiles = full.reshape(plan.o_padded // plan.ob, plan.ob, *words.shape[1:])  # [T, ob, Cw, kh, kw]
    return np.ascontiguousarray(tiles.transpose(0, 3, 4, 2, 1))


def pack_func(plan: Plan, symbol: str = PACK_SYMBOL) -> Any:
    """PrimFunc(x [N, C, H, W] f32, shift [C] f32) → xp [N, Cw, Hp, Wp] u32, one thread per word."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, c_, h_, w_ = s.n, s.c, s.h, s.w
    cw_, hp, wp = s.words, plan.hp, plan.wp
    pt, pl = s.pads[0], s.pads[1]
    total = n_ * cw_ * hp * wp
    threads = PACK_THREADS
    blocks = -(-total // threads)
    bits = WORD_BITS

    x_type, shift_type = T.Buffer((n_, c_, h_, w_), "float32"), T.Buffer((c_,), "float32")
    xp_type = T.Buffer((n_, cw_, hp, wp), "uint32")

    @T.prim_func
    def pack(x: x_type, shift: shift_type, xp: xp_type):
        for bx in T.thread_binding(blocks, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                word = T.alloc_buffer((1,), "uint32", scope="local")
                if bx * threads + tx < total:
                    word[0] = T.uint32(0)
                    if ((bx * threads + tx) // wp % hp >= pt and (bx * threads + tx) // wp % hp < pt + h_
                            and (bx * threads + tx) % wp >= pl and (bx * threads + tx) % wp < pl + w_):
                        for b in range(T.min(bits, c_ - (bx * threads + tx) // (wp * hp) % cw_ * bits)):
                            word[0] = T.bitwise_or(word[0], T.Select(
                                x[(bx * threads + tx) // (wp * hp * cw_),
                                  (bx * threads + tx) // (wp * hp) % cw_ * bits + b,
                                  (bx * threads + tx) // wp % hp - pt, (bx * threads + tx) % wp - pl]
                                + shift[(bx * threads + tx) // (wp * hp) % cw_ * bits + b] < T.float32(0),
                                T.shift_left(T.uint32(1), T.Cast("uint32", b)), T.uint32(0)))
                    xp[(bx * threads + tx) // (wp * hp * cw_), (bx * threads + tx) // (wp * hp) % cw_,
                       (bx * threads + tx) // wp % hp, (bx * threads + tx) % wp] = word[0]

    return scheduled(pack, symbol)


def conv_func(plan: Plan, symbol: str = CONV_SYMBOL) -> Any:
    """PrimFunc(xp, wp [Op/ob, kh, kw, Cw, ob] u32, alpha [Op], bias [Op]) → y [N, O, OH, OW] f32; a block per
    (image, channel tile, ``threads`` positions), a thread per output position × ``ob`` channels."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, o_, oh_, ow_ = s.n, s.o, s.oh, s.ow
    kh_, kw_, cw_ = s.kh, s.kw, s.words
    sh, sw = s.strides
    dh, dw = s.dilations
    hp, wp, op_, ob = plan.hp, plan.wp, plan.o_padded, plan.ob
    threads, pblocks = plan.threads, plan.position_blocks
    tiles = op_ // ob
    q_ = oh_ * ow_
    k_ = s.k

    xp_type, w_type = T.Buffer((n_, cw_, hp, wp), "uint32"), T.Buffer((tiles, kh_, kw_, cw_, ob), "uint32")
    alpha_type, bias_type = T.Buffer((op_,), "float32"), T.Buffer((op_,), "float32")  # one object each
    y_type = T.Buffer((n_, o_, oh_, ow_), "float32")

    @T.prim_func
    def conv(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, y: y_type):
        for bx in T.thread_binding(n_ * tiles * pblocks, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                acc = T.alloc_buffer((ob,), "int32", scope="local")
                word = T.alloc_buffer((1,), "uint32", scope="local")
                if bx % pblocks * threads + tx < q_:
                    for oi in T.unroll(ob):
                        acc[oi] = 0
                    for i, j, cw in T.grid(kh_, kw_, cw_):
                        word[0] = xp[bx // (pblocks * tiles), cw,
                                     (bx % pblocks * threads + tx) // ow_ * sh + i * dh,
                                     (bx % pblocks * threads + tx) % ow_ * sw + j * dw]
                        for oi in T.unroll(ob):
                            acc[oi] = acc[oi] + T.Cast("int32", T.popcount(T.bitwise_xor(
                                word[0], wpk[bx // pblocks % tiles, i, j, cw, oi])))
                    for oi in T.unroll(ob):
                        if bx // pblocks % tiles * ob + oi < o_:
                            y[bx // (pblocks * tiles), bx // pblocks % tiles * ob + oi,
                              (bx % pblocks * threads + tx) // ow_, (bx % pblocks * threads + tx) % ow_] = (
                                alpha[bx // pblocks % tiles * ob + oi] * T.Cast("float32", k_ - 2 * acc[oi])
                                + bias[bx // pblocks % tiles * ob + oi])

    return scheduled(conv, symbol)


def binary_conv_pass(stats: dict[str, Any] | None = None):
    """Relax pass (before the zero pipeline): each inlined ``edgec::BinaryConv`` → ``call_tir`` of
    :func:`pack_func` and :func:`conv_func`, the weights packed here as constants; ``stats`` (owned by the
    build) gets ``{"layers": n, "shapes": [...]}``. Every CUDA target takes it (``__popc`` is on every GPU)."""

    def rewrite(builder: Any, call: Any, lookup: Any, index: int):
        parts = binary_conv_parts(call, lookup)
        if parts is None:
            return None
        shape: BinaryConvShape = parts["shape"]
        plan = Plan.for_shape(shape)
        return pack_then_kernel(builder, index, plan, (pack_func, PACK_SYMBOL), (conv_func, CONV_SYMBOL),
                                parts["x"], parts["shift"], plan.packed_x_shape,
                                [pack_weights(parts["w"], plan), padded_vector(parts["alpha"], plan),
                                 padded_vector(parts["bias"], plan)], (shape.n, shape.o, shape.oh, shape.ow)), shape

    return op_kernel_pass("EdgecCudaBinaryConvKernels", lambda: True, rewrite, stats)
