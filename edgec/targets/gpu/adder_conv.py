"""Adder convolution for CUDA targets (``edgec::AdderConv``, AdderNet, issue 19 item 3): y = −Σ|x_pad − w| + b.

Why: without it a CUDA build runs the inlined float body — a one-hot unfold conv to a [N, C·kh·kw, L] tensor,
subtract against [O, K, 1], abs, sum: K times the input's memory written and read again, and an [N, O, K, L]
intermediate (a 32→32 3×3 layer on 14×14 holds 288·32·196 floats = 7 MiB per image) — for what is a direct
conv with |x − w| in place of x·w. The layer is found by the CPU kernel's matcher
(:func:`edgec.targets.cpu.kernels.adder_conv.adder_conv_parts`), so both targets replace the same bodies.

One PrimFunc per layer (:func:`conv_func`), a direct loop with its thread bindings written in
(``tirx.is_scheduled``): a block is ``threads`` output positions of one image × one tile of ``ob`` output
channels; each thread keeps ``ob`` float accumulators and walks (c, kh, kw), loading one input value (zero
outside the image: the function form's padding, read through a guarded load, no padded copy) and adding
|x − w| for each of its ``ob`` channels: two float operations per term (nvcc folds the abs into the add as an
operand modifier). The weights, laid out at compile time as [O/ob, C, kh, kw, ob] (:func:`pack_weights`), are
the same for every thread of the block at each step (broadcast loads, L1-resident); input loads and output
stores are coalesced along columns. The epilogue is b − acc.

Rounding: each output is a float32 sum of K non-negative terms in (c, kh, kw) order, as the function form's
ReduceSum; tests/test_gpu_kernels.py allows 1e-4 relative. No shared memory and no barriers, so the PrimFunc
with serial thread loops (:func:`edgec.targets.gpu.host_check.serial_threads`) checks its arithmetic on a CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgec.targets.cpu.kernels.adder_conv import AdderConvShape, adder_conv_parts
from edgec.targets.cpu.kernels.binary_conv import padded_vector
from edgec.targets.cpu.kernels.op_kernel import op_kernel_pass, scheduled
from edgec.targets.gpu.thread_plan import ConvThreadPlan

CONV_SYMBOL = "edgec_cuda_adder_conv"


@dataclasses.dataclass(frozen=True)
class Plan(ConvThreadPlan):
    """:class:`ConvThreadPlan` with this kernel's buffer layouts."""

    shape: AdderConvShape

    @property
    def packed_w_shape(self) -> tuple[int, int, int, int, int]:
        s = self.shape
        return (self.o_padded // self.ob, s.c, s.kh, s.kw, self.ob)


def pack_weights(w: np.ndarray, plan: Plan) -> np.ndarray:
    """float [O, C, kh, kw] → [O/ob, C, kh, kw, ob] float32 (channels past O zero, never stored)."""
    full = np.zeros((plan.o_padded,) + tuple(w.shape[1:]), np.float32)
    full[: w.shape[0]] = w
    tiles = full.reshape(plan.o_padded // plan.ob, plan.ob, *w.shape[1:])
    return np.ascontiguousarray(tiles.transpose(0, 2, 3, 4, 1))


def conv_func(plan: Plan, symbol: str = CONV_SYMBOL) -> Any:
    """PrimFunc(x [N, C, H, W] f32, wp [O/ob, C, kh, kw, ob] f32, b [Op] f32) → y [N, O, OH, OW] f32; a block
    per (image, channel tile, ``threads`` positions), a thread per output position × ``ob`` channels."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, c_, h_, w_ = s.n, s.c, s.h, s.w
    o_, oh_, ow_, kh_, kw_ = s.o, s.oh, s.ow, s.kh, s.kw
    sh, sw = s.strides
    dh, dw = s.dilations
    pt, pl = s.pads[0], s.pads[1]
    op_, ob, threads, pblocks = plan.o_padded, plan.ob, plan.threads, plan.position_blocks
    tiles = op_ // ob
    q_ = oh_ * ow_

    x_type, w_type = T.Buffer((n_, c_, h_, w_), "float32"), T.Buffer((tiles, c_, kh_, kw_, ob), "float32")
    b_type, y_type = T.Buffer((op_,), "float32"), T.Buffer((n_, o_, oh_, ow_), "float32")

    @T.prim_func
    def conv(x: x_type, wpk: w_type, bias: b_type, y: y_type):
        for bx in T.thread_binding(n_ * tiles * pblocks, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                acc = T.alloc_buffer((ob,), "float32", scope="local")
                xv = T.alloc_buffer((1,), "float32", scope="local")
                if bx % pblocks * threads + tx < q_:
                    for oi in T.unroll(ob):
                        acc[oi] = T.float32(0)
                    for c, i, j in T.grid(c_, kh_, kw_):
                        xv[0] = T.if_then_else(
                            (bx % pblocks * threads + tx) // ow_ * sh + i * dh >= pt
                            and (bx % pblocks * threads + tx) // ow_ * sh + i * dh < pt + h_
                            and (bx % pblocks * threads + tx) % ow_ * sw + j * dw >= pl
                            and (bx % pblocks * threads + tx) % ow_ * sw + j * dw < pl + w_,
                            x[bx // (pblocks * tiles), c, (bx % pblocks * threads + tx) // ow_ * sh + i * dh - pt,
                              (bx % pblocks * threads + tx) % ow_ * sw + j * dw - pl], T.float32(0))
                        for oi in T.unroll(ob):
                            acc[oi] = acc[oi] + T.fabs(xv[0] - wpk[bx // pblocks % tiles, c, i, j, oi])
                    for oi in T.unroll(ob):
                        if bx // pblocks % tiles * ob + oi < o_:
                            y[bx // (pblocks * tiles), bx // pblocks % tiles * ob + oi,
                              (bx % pblocks * threads + tx) // ow_, (bx % pblocks * threads + tx) % ow_] = (
                                bias[bx // pblocks % tiles * ob + oi] - acc[oi])

    return scheduled(conv, symbol)


def adder_conv_pass(stats: dict[str, Any] | None = None):
    """Relax pass (before the zero pipeline): each inlined ``edgec::AdderConv`` → ``call_tir`` of
    :func:`conv_func`, the weights laid out here as constants; ``stats`` (owned by the build) gets
    ``{"layers": n, "shapes": [...]}``. Every CUDA target takes it."""

    def rewrite(builder: Any, call: Any, lookup: Any, index: int):
        from tvm import relax

        parts = adder_conv_parts(call, lookup)
        if parts is None:
            return None
        shape: AdderConvShape = parts["shape"]
        plan = Plan.for_shape(shape)
        conv = builder.add_func(conv_func(plan, f"{CONV_SYMBOL}_{index}"), f"{CONV_SYMBOL}_{index}")
        return relax.call_tir(conv, [parts["x"], relax.const(pack_weights(parts["w"], plan)),
                                     relax.const(padded_vector(parts["bias"], plan))],
                              out_ty=relax.TensorType((shape.n, shape.o, shape.oh, shape.ow), "float32")), shape

    return op_kernel_pass("EdgecCudaAdderConvKernels", lambda: True, rewrite, stats)
