"""uint8 × int8 → int32 matmul with AVX-512 VNNI (quantized Gemm/MatMul with constant weights: FC layers, token rows).

qdq_lower leaves ``matmul(xq, W int8 [K, N], out_dtype=int32)`` + int32 corrections + requantize; scheduled as a
generic matmul it widens every byte to int32 and does one multiply-add per lane. Here the weights are repacked at
compile time to ``[N16/16, K4/4, 16, 4]`` (N padded to 16 and K to 4 with zeros): one 64-byte row per
(16 columns × 4 k) block, what one vpdpbusd reads against a broadcast 4-byte word of the input row — 64 MACs per
instruction, four times an fp32 FMA's. A register tile of rows × 16-column blocks stays in local accumulators across
k, and the fused epilogue (corrections, requantize) runs in the tile's write-back, as in the int8 conv
(:mod:`int8_vnni`). Signed activations read ``x + 128`` and the int32 result drops ``128 · Σw`` (exact), as the
conv path does. Applies where the target has the ``avx512vnni`` feature."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.kernels import int8_amx_matmul as amx_matmul
from edgec.targets.cpu.kernels.int8_vnni import to_unsigned
from edgec.targets.cpu.options import CpuOptions

BLOCK = "int8_matmul_vnni"  # the accumulating block (and the kernel's name in the fused function's)
UNPACK = "int8_matmul_unpack"  # the N16 → N columns view the epilogue reads
COLUMNS, DEPTH = 16, 4  # one vpdpbusd: 16 int32 columns, 4 bytes of k each
OUT_EWISE_FUSABLE = 4  # relax OpPatternKind: the epilogue fuses into it, as into a matmul


def applies(call: Any, weight: np.ndarray | None, isa: Isa) -> bool:
    """An int32-accumulating matmul of uint8/int8 activations (rows × K, any leading dims, static) by a constant
    2-D int8 weight on a VNNI target."""
    if not isa.vnni or getattr(call.op, "name", None) != "relax.matmul" or weight is None:
        return False
    x = call.args[0].ty
    if str(call.attrs.out_dtype) != "int32" or str(x.dtype) not in ("uint8", "int8") or len(x.shape) < 2:
        return False
    if weight.dtype != np.int8 or weight.ndim != 2 or any(not isinstance(getattr(d, "value", None), int)
                                                          for d in x.shape):
        return False
    return int(x.shape[-1]) == weight.shape[0]


def pack_weights(w: np.ndarray) -> np.ndarray:
    """``W[K, N]`` int8 → ``[N16/16, K4/4, 16, 4]``, zero-padded: block (n, k) holds columns 16n..16n+15 × k rows
    4k..4k+3 as one 64-byte row, column-major within it (each column's 4 bytes adjacent: vpdpbusd's lane)."""
    k, n = w.shape
    padded = np.zeros((k + -k % DEPTH, n + -n % COLUMNS), np.int8)
    padded[:k, :n] = w
    k4, n16 = padded.shape
    return np.ascontiguousarray(padded.reshape(k4 // DEPTH, DEPTH, n16 // COLUMNS, COLUMNS).transpose(2, 0, 3, 1))


def matmul_compute(x, w, n: int):
    """``out[..., j] = Σ_k x[..., k] · W[k, j]`` for ``j < n`` from x ``[..., K4]`` uint8 and the packed ``w``: the
    accumulation over all N16 columns (whole vpdpbusd blocks), then the view of the first ``n`` (inlined into the
    epilogue by the rule)."""
    from tvm import te

    *lead, k4 = (int(d) for d in x.shape)
    blocks = int(w.shape[0])
    ko = te.reduce_axis((0, k4 // DEPTH), "ko")
    ki = te.reduce_axis((0, DEPTH), "ki")
    acc = te.compute((*lead, blocks * COLUMNS),
                     lambda *i: te.sum(x[(*i[:-1], ko * DEPTH + ki)].astype("int32")
                                       * w[i[-1] // COLUMNS, ko, i[-1] % COLUMNS, ki].astype("int32"), axis=[ko, ki]),
                     name=BLOCK)
    return te.compute((*lead, n), lambda *i: acc[i], name=UNPACK)


def vnni_matmul_pass(isa: Isa, options: CpuOptions):
    """Relax pass (before legalization): each quantized matmul :func:`applies` takes becomes ``call_tir`` of
    :func:`matmul_compute` on the input (shifted to uint8 when signed, zero-padded to K4) and the packed constant
    weights, annotated as a matmul so FuseOps fuses its epilogue. The weights' packing and ``128 · Σw`` are
    computed here, at compile time."""
    import tvm
    from tvm import relax

    from edgec.targets.relax_rewrite import constant_value, rewrite_with_builder

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != "relax.matmul":
                return call
            weight = constant_value(call.args[1], self.lookup_binding)
            if not applies(call, weight, isa) or amx_matmul.fits(call, weight.shape, isa, options):
                return call  # AMX targets have VNNI too: the tile kernel takes what it fits
            x = call.args[0]
            signed = str(x.ty.dtype) == "int8"
            if signed:
                x = to_unsigned(x)
            k, n = weight.shape
            if k % DEPTH:
                x = relax.op.nn.pad(x, [0, 0] * (len(call.args[0].ty.shape) - 1) + [0, -k % DEPTH])
            if x is not call.args[0]:
                x = self.builder_.emit(x, "int8_matmul_input")
            out = self.builder_.call_te(matmul_compute, x, relax.const(pack_weights(weight)), n,
                                        primfunc_name_hint=BLOCK, primfunc_attrs={"op_pattern": OUT_EWISE_FUSABLE})
            if signed:
                shift = (128 * weight.astype(np.int64).sum(axis=0)).astype(np.int32)
                out = relax.op.subtract(out, relax.const(shift, "int32"))
            return out

    @tvm.transform.module_pass(opt_level=0, name="EdgecInt8MatmulVnni")
    def _pass(mod, _ctx):
        if not (isa.vnni and options.int8_matmul_vnni):
            return mod
        return rewrite_with_builder(mod, _Rewrite)  # the kernels it adds land in the builder's module

    return _pass


class Int8MatmulVNNI(sched.KernelRule):
    """The fused function of :func:`matmul_compute` + epilogue: rows × column blocks of 16 in registers (local
    int32 accumulators), k in steps of 4 as one vpdpbusd per block, the epilogue reverse-computed per tile."""

    def schedule(self, sch: s_tir.Schedule, target: Target):
        from edgec.targets.cpu.intrinsics import register_vnni_local_acc

        if sched.find_block(sch, BLOCK) is None:
            return None
        return schedule_matmul(sch, isa_of(target), register_vnni_local_acc())


def schedule_matmul(sch: s_tir.Schedule, isa: Isa, intrinsic: str) -> s_tir.Schedule:
    """The rule's schedule with the 16 × 4 dot product tensorized as ``intrinsic`` (vpdpbusd; a test passes a
    portable one of the same contract to run the rest of the kernel on a host without VNNI)."""
    block = sched.find_block(sch, BLOCK)
    *batch, m, n, ko, ki = sch.get_loops(block)
    m_size, blocks = sched.extent(sch, m), sched.extent(sch, n) // COLUMNS
    # The epilogue: one output stage, the unpack view and every stage between inlined into it.
    output = _inline_epilogue(sch, block)
    sch.set_scope(block, 0, "local")
    nt, mt = _tile(isa, m_size, blocks)
    m_o, m_i = sch.split(m, [None, mt])
    n_o, n_i, lanes16 = sch.split(n, [None, nt, COLUMNS])
    # Column blocks outer when there are more column tiles than row tiles (a tile's k × 16·nt weight panel then
    # stays in L1/L2 while every row tile passes over it); rows outer otherwise (each row tile read once).
    first, second = (n_o, m_o) if blocks // nt >= -(-m_size // mt) else (m_o, n_o)
    sch.reorder(*batch, first, second, ko, m_i, n_i, lanes16, ki)
    outer = sch.fuse(*batch, first, second)
    sch.parallel(outer)
    sch.reverse_compute_at(output, outer)
    *_, on = sch.get_loops(output)
    sch.vectorize(sch.split(on, [None, COLUMNS])[1])
    sch.unroll(m_i)
    sch.unroll(n_i)
    for producer in sch.get_producers(block):  # the input's K4 zero padding, where it was fused here
        if sch.get(producer).name_hint.endswith("pad"):
            sch.compute_inline(producer)
    init = sch.decompose_reduction(block, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(lanes16, intrinsic)
    return sch


def _tile(isa: Isa, rows: int, blocks: int) -> tuple[int, int]:
    """(column blocks, rows) of the register tile, dividing their extents (tensorize takes whole tiles).

    Several rows: up to 4 blocks and the rows that fit the registers next to them (accumulators + one weight
    vector per block + the broadcast input word). One row (an FC layer at batch 1): up to 8 blocks, the weights
    read as memory operands — each accumulator is a dependency chain of vpdpbusd (latency 5 on Ice Lake), and
    3 chains left the loop latency-bound (llvm-mca, icelake-server, K=1024 N=1000: 3 blocks 38 MACs/cycle, 7 blocks
    89; ``bench/int8_matmul.py --mca icelake-server``). Row counts with no divisor near the register budget
    (a prime 7) fall back to fewer rows per tile: correct, less register reuse."""
    if rows == 1:
        return sched.divisor_at_most(blocks, 8), 1
    nt = sched.divisor_at_most(blocks, 4)
    mt = sched.divisor_at_most(rows, max(1, min(8, (isa.vector_registers - nt - 2) // nt)))
    return nt, mt


def _inline_epilogue(sch: s_tir.Schedule, block) -> Any:
    """Inline the unpack view and every elementwise stage after it into the function's last stage (the one
    written to the output buffer), which is returned: the tile's write-back computes the whole epilogue."""
    consumers = [sch.get_consumers(block)]
    stages = []
    seen = set()
    while consumers:
        for c in consumers.pop():
            name = sch.get(c).name_hint
            if name not in seen:
                seen.add(name)
                stages.append(c)
                consumers.append(sch.get_consumers(c))
    output = next(s for s in reversed(stages) if not sch.get_consumers(s))
    for stage in stages:
        if not sch.get(stage).same_as(sch.get(output)):
            sch.compute_inline(stage)
    return output
