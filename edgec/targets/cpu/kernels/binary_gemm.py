"""Bit-packed binary dense layer (``edgec::BinaryGemm``, issue 19): XNOR/popcount on 32-bit words.

Why: the inlined body computes a binary Gemm as a float MatMul on ±1 values, so a binary layer costs what a float
layer costs. Packed, 32 input features are one word, and Σ s·w = K − 2·popcount(x xor w) (:mod:`edgec.ops.reference`).

Two PrimFuncs per layer, loop nests scheduled by construction:

* :func:`pack_func` — float ``x`` [N, K] (+ ``shift`` [K]) → sign bits ``xp`` [N, Kw] uint32 (bit 1 = −1; bits past
  K are 0, so they xor to 0 against the weights' 0 padding and K counts only real features);
* :func:`dense_func` — ``xp`` and the weights packed at compile time, output-minor (``wp`` [Kw, Op] uint32: one
  word of 16 consecutive output features is one vector load) → ``y`` [N, O] float32 with
  ``alpha[o]·(K − 2·pop) + b[o]`` fused. Per row, a register tile of ``ob`` vectors of outputs accumulates int32
  popcounts over the K words: each activation word is broadcast once and serves ``ob`` xor-popcount-adds, and the
  weights stream through once per row (a GEMV is bound by the weight stream: 1 bit per weight instead of 32).

LLVM turns the vector ``ctpop`` into ``vpopcntd`` with AVX-512 VPOPCNTDQ and into a ``vpshufb`` nibble count on AVX2.
On Arm NEON (the same applicability check: :func:`~edgec.targets.cpu.kernels.binary_conv.takes`) it is ``cnt v.16b``
summed into the int32 lanes; the tile is AVX-512's (8 accumulator vectors, 32 registers), of 4 outputs each.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgec.ops.packing import pack_signs
from edgec.targets.cpu.kernels.binary_conv import WORD_BITS, padded_vector, takes
from edgec.targets.cpu.kernels.op_kernel import op_kernel_pass, pack_then_kernel, producer_chain, relu_absorbed, scheduled

PACK_SYMBOL = "edgec_binary_gemm_pack"
DENSE_SYMBOL = "edgec_binary_dense"


@dataclasses.dataclass(frozen=True)
class DenseShape:
    """A binary dense layer: ``n`` rows of ``k`` features → ``o`` outputs."""

    n: int
    k: int
    o: int

    @property
    def words(self) -> int:
        return -(-self.k // WORD_BITS)

    def describe(self) -> str:
        """How the build report lists the layer: ``K->O xN``."""
        return f"{self.k}->{self.o} x{self.n}"


@dataclasses.dataclass(frozen=True)
class DensePlan:
    """The register tile (``ob`` vectors of ``lanes`` outputs) and the padded output count it implies."""

    shape: DenseShape
    lanes: int
    ob: int

    @classmethod
    def for_isa(cls, isa: Any, shape: DenseShape) -> DensePlan:
        """Up to 8 accumulator vectors with AVX-512's 32 registers, 4 with 16 (the AVX2 nibble count needs a
        table, a mask and temporaries); never more vectors than the layer has outputs."""
        lanes = isa.lanes
        vectors = -(-shape.o // lanes)
        return cls(shape, lanes, max(1, min(8 if isa.vector_registers >= 32 else 4, vectors)))

    @property
    def tile(self) -> int:
        return self.lanes * self.ob

    @property
    def o_padded(self) -> int:
        return -(-self.shape.o // self.tile) * self.tile


def pack_weights(w: np.ndarray, plan: DensePlan) -> np.ndarray:
    """Sign bits of ``w`` — [O, K], float or ±1 — as the dense kernel's uint32 [Kw, Op] (extra outputs zero)."""
    words = pack_signs(np.asarray(w, np.float32), axis=1, word_bits=WORD_BITS)  # [O, Kw]
    out = np.zeros((plan.shape.words, plan.o_padded), np.uint32)
    out[:, : w.shape[0]] = words.T
    return out


def pack_func(plan: DensePlan, symbol: str = PACK_SYMBOL) -> Any:
    """PrimFunc(x [N, K] f32, shift [K] f32) → xp [N, Kw] uint32, exported as ``symbol``."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, k_, kw_ = s.n, s.k, s.words
    bits = WORD_BITS
    x_type, shift_type, xp_type = (T.Buffer((n_, k_), "float32"), T.Buffer((k_,), "float32"),
                                   T.Buffer((n_, kw_), "uint32"))

    @T.prim_func
    def pack(x: x_type, shift: shift_type, xp: xp_type):
        for nw in T.parallel(n_ * kw_):
            acc = T.alloc_buffer((1,), "uint32", scope="local")
            acc[0] = T.uint32(0)
            for b in range(T.min(bits, k_ - nw % kw_ * bits)):
                acc[0] = T.bitwise_or(acc[0], T.Select(
                    x[nw // kw_, nw % kw_ * bits + b] + shift[nw % kw_ * bits + b] < T.float32(0),
                    T.shift_left(T.uint32(1), T.Cast("uint32", b)), T.uint32(0)))
            xp[nw // kw_, nw % kw_] = acc[0]

    return scheduled(pack, symbol)


def dense_func(plan: DensePlan, symbol: str = DENSE_SYMBOL) -> Any:
    """PrimFunc(xp [N, Kw], wp [Kw, Op] u32, alpha [Op], bias [Op]) → y [N, O] f32, exported as ``symbol``.
    Parallel over (row, output tile); a tile past the real outputs stores only the real ones."""
    from tvm.script import tirx as T

    s = plan.shape
    n_, o_, kw_, k_ = s.n, s.o, s.words, s.k
    lanes, ob, tile, op_ = plan.lanes, plan.ob, plan.tile, plan.o_padded
    tiles = op_ // tile
    xp_type, w_type = T.Buffer((n_, kw_), "uint32"), T.Buffer((kw_, op_), "uint32")
    alpha_type, bias_type = T.Buffer((op_,), "float32"), T.Buffer((op_,), "float32")
    y_type = T.Buffer((n_, o_), "float32")

    @T.prim_func
    def dense(xp: xp_type, wpk: w_type, alpha: alpha_type, bias: bias_type, y: y_type):
        for nt in T.parallel(n_ * tiles):
            acc = T.alloc_buffer((ob, lanes), "int32", scope="local")
            for oi in T.unroll(ob):
                for lane in T.vectorized(lanes):
                    acc[oi, lane] = 0
            for kw in range(kw_):
                for oi in T.unroll(ob):
                    for lane in T.vectorized(lanes):
                        acc[oi, lane] = acc[oi, lane] + T.Cast("int32", T.popcount(T.bitwise_xor(
                            xp[nt // tiles, kw], wpk[kw, nt % tiles * tile + oi * lanes + lane])))
            for oi in T.unroll(ob):
                if nt % tiles * tile + oi * lanes + lanes <= o_:
                    for lane in T.vectorized(lanes):
                        y[nt // tiles, nt % tiles * tile + oi * lanes + lane] = (
                            alpha[nt % tiles * tile + oi * lanes + lane]
                            * T.Cast("float32", k_ - 2 * acc[oi, lane]) + bias[nt % tiles * tile + oi * lanes + lane])
                else:
                    for lane in range(lanes):
                        if nt % tiles * tile + oi * lanes + lane < o_:
                            y[nt // tiles, nt % tiles * tile + oi * lanes + lane] = (
                                alpha[nt % tiles * tile + oi * lanes + lane]
                                * T.Cast("float32", k_ - 2 * acc[oi, lane])
                                + bias[nt % tiles * tile + oi * lanes + lane])

    return scheduled(dense, symbol)


def binary_gemm_parts(call: Any, lookup: Any) -> dict[str, Any] | None:
    """The pieces of the inlined ``edgec::BinaryGemm`` body as TVM imports it, or None when ``call`` is not one:

        add(multiply(matmul(where(less(add(x, shift), 0), −1, 1), Wᵀ), alpha), b)

    (:mod:`edgec.ops.functions`, constants folded by ``lower_edgec_ops``). Every constant is checked — Wᵀ is ±1,
    the where picks −1/+1, the comparison is against 0 — so the replacement is exact whatever graph it came from."""
    import tvm

    from edgec.targets.relax_rewrite import constant_value

    chain = producer_chain(call, ["add", "multiply", "matmul", "where", "less", "add"], lookup)
    if chain is None:
        return None
    outer, scaled, matmul, where, less, shifted = chain
    values = [constant_value(e, lookup) for e in (matmul.args[1], scaled.args[1], outer.args[1], shifted.args[1], less.args[1],
                                 where.args[1], where.args[2])]
    if any(v is None for v in values):
        return None
    wt, alpha, bias, shift, zero, minus1, plus1 = values
    dims = getattr(getattr(shifted.args[0], "ty", None), "shape", None)
    if (wt.ndim != 2 or not np.all(np.abs(wt) == 1) or float(zero) != 0 or float(minus1) != -1
            or float(plus1) != 1 or dims is None or len(dims) != 2
            or not all(isinstance(d, tvm.tirx.IntImm) for d in dims)
            or str(shifted.args[0].ty.dtype) != "float32" or str(matmul.ty.dtype) != "float32"):
        return None
    k, o = wt.shape
    n = int(dims[0])
    if int(dims[1]) != k or n < 1 or any(np.ndim(v) > 1 or np.size(v) not in (1, size)
                                         for v, size in ((alpha, o), (bias, o), (shift, k))):
        return None
    vec = (lambda v, size: np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (size,)).copy())
    x, shift = relu_absorbed(shifted.args[0], vec(shift, k), lookup)
    return {"x": x, "shape": DenseShape(n=n, k=k, o=o), "w": wt.T, "alpha": vec(alpha, o), "bias": vec(bias, o),
            "shift": shift}


def binary_gemm_pass(isa: Any, stats: dict[str, Any] | None = None):
    """Relax pass: each inlined ``edgec::BinaryGemm`` (2-D input, static shape) → ``call_tir`` of
    :func:`pack_func` and :func:`dense_func`, the weights packed here as constants; ``stats`` as
    :func:`~edgec.targets.cpu.kernels.op_kernel.op_kernel_pass` fills it. Targets the binary conv kernel does not
    take (:func:`~edgec.targets.cpu.kernels.binary_conv.takes`) keep the float body."""

    def rewrite(builder: Any, call: Any, lookup: Any, index: int):
        parts = binary_gemm_parts(call, lookup)
        if parts is None:
            return None
        shape: DenseShape = parts["shape"]
        plan = DensePlan.for_isa(isa, shape)
        return pack_then_kernel(builder, index, plan, (pack_func, PACK_SYMBOL), (dense_func, DENSE_SYMBOL),
                                parts["x"], parts["shift"], (shape.n, shape.words),
                                [pack_weights(parts["w"], plan), padded_vector(parts["alpha"], plan),
                                 padded_vector(parts["bias"], plan)], (shape.n, shape.o)), shape

    return op_kernel_pass("EdgecBinaryGemmKernels", lambda: takes(isa), rewrite, stats)
