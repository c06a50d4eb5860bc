"""Bit-packed binary dense layer for CUDA targets (``edgec::BinaryGemm``, issue 19 item 3): XNOR + ``__popc``.

Why: without it a CUDA build runs the inlined body, a float MatMul on ±1 values with 32-bit weights; packed, a
weight is one bit and 32 features are one ``xor`` + ``popc``. The layer is found by the CPU kernel's matcher
(:func:`edgec.targets.cpu.kernels.binary_gemm.binary_gemm_parts`).

Two PrimFuncs per layer, thread bindings written in (``tirx.is_scheduled``):

* :func:`pack_func` — float ``x`` [N, K] (+ ``shift`` [K]) → ``xp`` [N, Kw] uint32 sign bits (bit 1 = −1, bits
  past K zero: they xor to 0 against the weights' zero padding, and K counts only real features); a thread per
  word.
* :func:`dense_func` — ``xp`` and the weights packed at compile time output-minor (``wp`` [Kw, O] uint32:
  neighbouring threads, neighbouring outputs, read neighbouring words — coalesced) → ``y`` [N, O] float32 with
  ``alpha[o]·(K − 2·pop) + b[o]`` fused; a thread per output of one row, a block per 128 outputs of one row (the
  row's words are the same for the whole block: broadcast loads). A batch-1 layer is a GEMV bound by the weight
  stream, which is 32× smaller than the float body's.

No shared memory and no barriers: :func:`edgec.targets.gpu.host_check.serial_threads` checks it on a CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgec.ops.packing import pack_signs
from edgec.targets.cpu.kernels.binary_conv import WORD_BITS
from edgec.targets.cpu.kernels.binary_gemm import DenseShape, binary_gemm_parts
from edgec.targets.cpu.kernels.op_kernel import op_kernel_pass, pack_then_kernel, scheduled

PACK_SYMBOL = "edgec_cuda_binary_gemm_pack"
DENSE_SYMBOL = "edgec_cuda_binary_dense"
PACK_THREADS = 256


@dataclasses.dataclass(frozen=True)
class Plan:
    """``threads`` outputs of one row per block (whole warps, at most 128)."""

    shape: DenseShape
    threads: int

    @classmethod
    def for_shape(cls, shape: DenseShape) -> Plan:
        return cls(shape, threads=min(128, -(-shape.o // 32) * 32))

    @property
    def o_blocks(self) -> int:
        return -(-self.shape.o // self.threads)


def pack_weights(w: np.ndarray, plan: Plan) -> np.ndarray:
    """Sign bits of ``w`` — [O, K], float or ±1 — as uint32 [Kw, O]."""
    words = pack_signs(np.asarray(w, np.float32), axis=1, word_bits=WORD_BITS)  # [O, Kw]
    return np.ascontiguousarray(words.T.astype(np.uint32))


def pack_func(plan: Plan, symbol: str = PACK_SYMBOL) -> Any:
    """PrimFunc(x [N, K] f32, shift [K] f32) → xp [N, Kw] u32, a thread per word."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, k_, kw_ = s.n, s.k, s.words
    total = n_ * kw_
    threads = PACK_THREADS
    blocks = -(-total // threads)
    bits = WORD_BITS
    x_type, shift_type, xp_type = (T.Buffer((n_, k_), "float32"), T.Buffer((k_,), "float32"),
                                   T.Buffer((n_, kw_), "uint32"))

    @T.prim_func
    def pack(x: x_type, shift: shift_type, xp: xp_type):
        for bx in T.thread_binding(blocks, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                word = T.alloc_buffer((1,), "uint32", scope="local")
                if bx * threads + tx < total:
                    word[0] = T.uint32(0)
                    for b in range(T.min(bits, k_ - (bx * threads + tx) % kw_ * bits)):
                        word[0] = T.bitwise_or(word[0], T.Select(
                            x[(bx * threads + tx) // kw_, (bx * threads + tx) % kw_ * bits + b]
                            + shift[(bx * threads + tx) % kw_ * bits + b] < T.float32(0),
                            T.shift_left(T.uint32(1), T.Cast("uint32", b)), T.uint32(0)))
                    xp[(bx * threads + tx) // kw_, (bx * threads + tx) % kw_] = word[0]

    return scheduled(pack, symbol)


def dense_func(plan: Plan, symbol: str = DENSE_SYMBOL) -> Any:
    """PrimFunc(xp [N, Kw] u32, wp [Kw, O] u32, alpha [O], bias [O]) → y [N, O] f32, a thread per output."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, k_, kw_, o_ = s.n, s.k, s.words, s.o
    threads, oblocks = plan.threads, plan.o_blocks
    xp_type, w_type = T.Buffer((n_, kw_), "uint32"), T.Buffer((kw_, o_), "uint32")
    alpha_type, bias_type, y_type = T.Buffer((o_,), "float32"), T.Buffer((o_,), "float32"), T.Buffer((n_, o_),
                                                                                                    "float32")

    @T.prim_func
    def dense(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, y: y_type):
        for bx in T.thread_binding(n_ * oblocks, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                acc = T.alloc_buffer((1,), "int32", scope="local")
                if bx % oblocks * threads + tx < o_:
                    acc[0] = 0
                    for kw in range(kw_):
                        acc[0] = acc[0] + T.Cast("int32", T.popcount(T.bitwise_xor(
                            xp[bx // oblocks, kw], wpk[kw, bx % oblocks * threads + tx])))
                    y[bx // oblocks, bx % oblocks * threads + tx] = (
                        alpha[bx % oblocks * threads + tx] * T.Cast("float32", k_ - 2 * acc[0])
                        + bias[bx % oblocks * threads + tx])

    return scheduled(dense, symbol)


def binary_gemm_pass(stats: dict[str, Any] | None = None):
    """Relax pass (before the zero pipeline): each inlined ``edgec::BinaryGemm`` (2-D input, static shape) →
    ``call_tir`` of :func:`pack_func` and :func:`dense_func`; ``stats`` as the other kernels' passes fill it."""

    def rewrite(builder: Any, call: Any, lookup: Any, index: int):
        parts = binary_gemm_parts(call, lookup)
        if parts is None:
            return None
        shape: DenseShape = parts["shape"]
        plan = Plan.for_shape(shape)
        return pack_then_kernel(builder, index, plan, (pack_func, PACK_SYMBOL), (dense_func, DENSE_SYMBOL),
                                parts["x"], parts["shift"], (shape.n, shape.words),
                                [pack_weights(parts["w"], plan), parts["alpha"], parts["bias"]],
                                (shape.n, shape.o)), shape

    return op_kernel_pass("EdgecCudaBinaryGemmKernels", lambda: True, rewrite, stats)
