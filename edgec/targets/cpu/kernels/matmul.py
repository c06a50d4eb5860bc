"""Dense and batched matmuls (ONNX Gemm/MatMul with constant weights): a register tile over (rows, columns),
or a weight-streaming GEMV for one input row."""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.isa import isa_of


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
        b_shape = [int(d) for d in sch.get(block).reads[1].source.shape]
        *batch, m, n, k = loops
        if b_shape[-1] != sched.extent(sch, n) or b_shape[-2] != sched.extent(sch, k):
            return None
        isa = isa_of(target)
        lanes = isa.lanes
        n_size, m_size = sched.extent(sch, n), sched.extent(sch, m)
        if self.options.gemv and m_size == 1 and all(sched.extent(sch, b) == 1 for b in batch):
            return self._gemv(sch, block, [*batch, m], n, k, lanes)
        candidates = [d for d in range(1, min(n_size, 4 * lanes) + 1) if n_size % d == 0]
        nt = max(candidates, key=lambda d: (d % lanes == 0 or d >= lanes, d))
        vectors = -(-nt // lanes)
        mt = sched.divisor_at_most(m_size, max(1, min(8, (isa.vector_registers - 4) // vectors)))
        m_o, m_i = sch.split(m, [None, mt])
        n_o, n_i = sch.split(n, [None, nt])
        sch.reorder(*batch, m_o, n_o, k, m_i, n_i)
        outer = sch.fuse(*batch, m_o, n_o)
        sch.parallel(outer)
        sched.write_back_tile(sch, block, outer, lanes)
        sched.finish_reduction(sch, block, k, n_i, [m_i], init_unroll=0)
        return sch

    @staticmethod
    def _gemv(sch: s_tir.Schedule, block, unit_loops: list, n, k, lanes: int):
        """One input row (a classifier at batch 1): memory-bound on the weights, so they are read in storage
        order — k outer, four rows at a time, each row's n contiguous — into an accumulator row that stays in
        L1. Column tiles held in registers across k (the batched path) read the weights as short strided runs,
        which the prefetchers follow poorly: in a whole model the weights come from L3 or DRAM."""
        n_size = sched.extent(sch, n)
        vec = lanes
        while n_size % vec:
            vec //= 2  # whole vectors of a power-of-two width (an odd width compiles to scalar code)
        n_chunks = n_size // vec
        n_p = sched.divisor_at_most(n_chunks, 4)  # a few column ranges, parallel over cores (each still streams rows)
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
            sched.schedule_elementwise_root(sch, other, lanes)
        sch.vectorize(n_i)
        sch.unroll(k_i)
        init = sch.decompose_reduction(block, k_o)
        sched.vectorize_innermost(sch, sch.get_loops(init)[-1], lanes, max_whole=lanes)
        return sch
