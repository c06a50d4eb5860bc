"""Dense and batched matmuls (ONNX Gemm/MatMul with constant weights): a register tile over (rows, columns),
or a weight-streaming GEMV for one input row."""

from __future__ import annotations

import numpy as np
from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import prefetch, sched
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.relax_rewrite import constant_value, function_rewrite


TASK_VECTORS = 8  # a GEMV task's independent accumulator vectors: 2 FMA pipes × 4 cycles of FMA latency


class Matmul(sched.KernelRule):
    """Dense / batched matmul ``C[..., m, n] = sum_k A[..., m, k] · B[..., k, n]`` with B's n contiguous (ONNX
    Gemm/MatMul with constant weights arrive this way: the transpose of a constant weight folds away).
    A tile of ``mt`` rows × ``nt`` columns stays in registers across k; the epilogue is fused in the write-back."""

    def schedule(self, sch: s_tir.Schedule, target: Target):
        block = sched.find_block(sch, "matmul") or sched.find_block(sch, "T_matmul_NN")
        if block is None:
            return None
        loops = sch.get_loops(block)
        kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
        if len(loops) < 3 or len(kinds) != len(loops) or kinds[-1] != 2 or any(k != 0 for k in kinds[:-1]):
            return None  # iter_type 0: spatial, 2: reduction
        weight = sch.get(block).reads[1].source
        b_shape = [int(d) for d in weight.shape]
        *batch, m, n, k = loops
        if b_shape[-1] != sched.extent(sch, n) or b_shape[-2] != sched.extent(sch, k):
            return None
        isa = isa_of(target)
        lanes = isa.lanes
        n_size, m_size = sched.extent(sch, n), sched.extent(sch, m)
        if self.options.gemv and m_size == 1 and all(sched.extent(sch, b) == 1 for b in batch):
            return self._gemv(sch, block, [*batch, m], n, k, lanes)
        # whole tiles of 1, 2 or 4 vectors (LLVM splits a 3-vector type badly: 10× slower), or under one vector
        candidates = [d for d in range(1, min(n_size, 4 * lanes) + 1)
                      if n_size % d == 0 and (d < lanes or d in (lanes, 2 * lanes, 4 * lanes))]
        nt = max(candidates, key=lambda d: (d % lanes == 0 or d >= lanes, d))
        vectors = -(-nt // lanes)
        mt = sched.divisor_at_most(m_size, row_tile(isa, vectors))
        m_o, m_i = sch.split(m, [None, mt])
        n_o, n_i = sch.split(n, [None, nt])
        # The larger operand is read once: with m ≥ n the row tiles are outer (each row block of A read once, the
        # weights' column panels again per row block); with n > m a column panel of B (k × nt) is loaded once
        # and every row tile passes over it while it sits in L2 (a 512 × 8210 head: 16 MB of weights re-read per
        # row pair from DRAM took 15 ms, 5.6× onnxruntime).
        panels_outer = n_size > m_size
        first, second = (n_o, m_o) if panels_outer else (m_o, n_o)
        sch.reorder(*batch, first, second, k, m_i, n_i)
        tiles_per_panel = sched.extent(sch, first) * sched.extent(sch, second)
        # Column panels (pad_columns_pass: the weight [panels, k, nt] indexed by the one batch loop): the next
        # panel's rows are asked for while this one is computed (prefetch.plan_next_panel).
        panelled = (panels_outer and len(batch) == 1 and len(b_shape) == 3
                    and b_shape[0] == sched.extent(sch, batch[0]))
        outer = sch.fuse(*batch, first, second)
        sch.parallel(outer)
        sched.write_back_tile(sch, block, outer, lanes)
        sched.finish_reduction(sch, block, k, n_i, [m_i], init_unroll=0)
        if not panelled:
            return sch
        return prefetch.insert(sch, prefetch.plan_next_panel(sch, weight, outer, k, tiles_per_panel, vectors, lanes,
                                                             self.options), self.options)

    @staticmethod
    def _gemv(sch: s_tir.Schedule, block, unit_loops: list, n, k, lanes: int):
        """One input row (a classifier at batch 1): memory-bound on the weights, so they are read in storage
        order — k outer, four rows at a time, each row's n contiguous — into an accumulator row that stays in
        L1. Column tiles held in registers across k (the batched path) read the weights as short strided runs,
        which the prefetchers follow poorly: in a whole model the weights come from L3 or DRAM.

        Each parallel task keeps at least :data:`TASK_VECTORS` column vectors: the four row steps of a vector
        are one chain of dependent FMAs, so a task needs that many independent vectors to fill both FMA pipes.
        openWakeWord's 1536 → 64 layer as four one-vector tasks took 7.2 µs on 1 thread (the tasks' latency-bound
        chains one after another), 2.7 µs as one task; its 1536 → 128 layer 7.2 → 5.1 µs (Intel Xeon,
        bench/profile_cpu.py); the whole model 1.16× → 0.71× onnxruntime (bench/zoo.py --models oww_jarvis)."""
        n_size = sched.extent(sch, n)
        vec = lanes
        while n_size % vec:
            vec //= 2  # whole vectors of a power-of-two width (an odd width compiles to scalar code)
        n_chunks = n_size // vec
        # a few column ranges, parallel over cores (each still streams rows), each of at least TASK_VECTORS vectors
        n_p = sched.divisor_at_most(max(1, n_chunks // TASK_VECTORS), 4)
        k_unroll = sched.divisor_at_most(sched.extent(sch, k), 4)
        n_p, n_o, n_i = sch.split(n, [n_p, None, vec])
        k_o, k_i = sch.split(k, [None, k_unroll])
        sch.reorder(n_p, k_o, n_o, k_i, n_i)
        outer = sch.fuse(*unit_loops, n_p)
        sch.parallel(outer)
        cache = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(cache, outer)
        leftover = sched.inline_epilogue(sch, cache)
        wb = sch.get_loops(cache)[-1]
        sched.vectorize_innermost(sch, wb, lanes, max_whole=lanes)
        for other in leftover:
            sched.schedule_leftover(sch, other, lanes)
        sch.vectorize(n_i)
        sch.unroll(k_i)
        init = sch.decompose_reduction(block, k_o)
        sched.vectorize_innermost(sch, sch.get_loops(init)[-1], lanes, max_whole=lanes)
        return sch


def good_column_tile(n: int, lanes: int) -> bool:
    """Whether ``n`` columns split into register tiles of whole vectors (a divisor of n that is a multiple of the
    lanes, up to 4 vectors): else the rule's tile is a few columns wide, or a vector with lanes left idle."""
    return any(n % d == 0 for d in range(lanes, 4 * lanes + 1, lanes))


PANEL_MIN_BYTES = 256 * 1024  # smaller weights stay in cache however they are read


def row_tile(isa: Isa, vectors: int = 4) -> int:
    """Rows of the register tile next to ``vectors`` column vectors: accumulators + the weight vectors of one k
    step + a broadcast fit the registers (the rule's own choice for a row count it divides)."""
    return max(1, min(8, (isa.vector_registers - 4) // vectors))


def pad_columns_pass(isa: Isa):
    """Relax pass: float matmuls with a constant 2-D weight ``W[k, n]`` get their weight laid out for the rule.

    - A large weight (≥ ``PANEL_MIN_BYTES``, more than two panels) is stored as column panels ``[n/nt, k, nt]``
      (nt up to 4 vectors) and computed as a batched matmul over the panels, then put back to ``[m, n]`` (a copy that
      fuses with the bias add). Read in place, a column tile walks k with a stride of n floats: one page per k
      step, which the prefetchers do not follow (ddddocr's 512 × 8210 CTC head ran at 5.6× onnxruntime); a panel
      is contiguous and stays in L2 while every row tile passes over it.
    - Columns with no whole-vector tile (8210 = 2·5·821: the rule's best tile was 10 columns, one vector with 6
      lanes idle) are padded with zero columns to a multiple of the tile, and sliced off after.
    The padding and packing are of a constant: folded at compile time."""
    from tvm import relax

    def panel_width(n: int) -> int:
        """The widest panel of 4, 2 or 1 vectors whose padding adds at most an eighth to the columns (257 mel
        bins: 32, not 64, which would store a quarter more weight). Not 3: LLVM splits a 48-float vector type
        badly (the same STFT matmul ran 10× slower in 48-wide panels than in 64-wide ones)."""
        return next(w * isa.lanes for w in (4, 2, 1) if (-n % (w * isa.lanes)) * 8 <= n or w == 1)

    @relax.expr_functor.mutator
    class _Pad(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != "relax.matmul" or len(call.args[1].ty.shape) != 2:
                return call
            if "float" not in str(call.args[1].ty.dtype) or len(call.args[0].ty.shape) < 2:
                return call
            k, n = (int(d) for d in call.args[1].ty.shape)
            panel = panel_width(n)
            packed = k * n * 4 >= PANEL_MIN_BYTES and n > 2 * panel
            if not packed and (n <= 4 * isa.lanes or good_column_tile(n, isa.lanes)):
                return call
            weight = constant_value(call.args[1], self.lookup_binding)
            if weight is None:
                return call
            width = panel if packed else isa.lanes
            extra = -n % width
            padded = np.concatenate([weight, np.zeros((k, extra), weight.dtype)], axis=1)
            x, dtype = call.args[0], call.attrs.out_dtype
            if not packed:
                out = relax.op.matmul(x, relax.const(padded), out_dtype=dtype)
            else:
                lead = [int(d) for d in list(x.ty.shape)[:-1]]
                rows = int(np.prod(lead))
                panels = padded.reshape(k, -1, panel).transpose(1, 0, 2).copy()  # [n/nt, k, nt], contiguous
                # rows padded to a whole number of register tiles: 38 rows took 2-row tiles (8 FMAs per 6 loads)
                tile_rows = row_tile(isa, panel // isa.lanes)
                extra_rows = -rows % tile_rows if rows > tile_rows else 0
                x3 = relax.op.reshape(x, [1, rows, k])
                if extra_rows:
                    x3 = relax.op.nn.pad(x3, [0, 0, 0, extra_rows, 0, 0])
                y = relax.op.matmul(x3, relax.const(panels), out_dtype=dtype)  # [n/nt, rows, nt]
                y = relax.op.permute_dims(y, [1, 0, 2])
                y = relax.op.reshape(y, [rows + extra_rows, n + extra])
                if extra or extra_rows:
                    y = relax.op.strided_slice(y, axes=[0, 1], begin=[0, 0], end=[rows, n])
                return relax.op.reshape(y, [*lead, n])
            if not extra:
                return out
            return relax.op.strided_slice(out, axes=[len(call.ty.shape) - 1], begin=[0], end=[n])

    return function_rewrite("EdgecMatmulWeightPanels", _Pad)
