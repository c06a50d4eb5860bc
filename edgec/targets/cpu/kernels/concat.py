"""A concatenation of many tensors as one contiguous copy per input, not one select chain per output element.

Why: TVM legalizes ``relax.concat`` as a single compute whose every output element picks its input through a chain
of ``if_then_else`` on the index, and FuseOps then inlines the inputs' producers into that chain. Vectorized,
every lane of every output vector evaluates every branch: openWakeWord's BiLSTM head (tf2onnx, unrolled by
edgec) joins its 32 step outputs with one Concat, and the last steps' gate math (sigmoid, tanh) fused into it
made that one kernel 30 µs of the model's 83 (Intel Xeon, bench/profile_cpu.py). Here each input is copied
into its slice of the output by its own loop nest (contiguous runs in both, vectorized), and the kernel is opaque
to fusion, so the producers stay kernels of their own.

Taken for concats of at least :data:`MIN_INPUTS` tensors of static shape; fewer inputs keep TVM's legalization
(a two-input channel concat of blocked layouts fuses usefully with its neighbours).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.kernels.op_kernel import scheduled
from edgec.targets.relax_rewrite import static_shape

MIN_INPUTS = 4
SYMBOL = "edgec_concat"


def concat_func(shapes: list[tuple[int, ...]], axis: int, dtype: str, lanes: int) -> Any:
    """PrimFunc(x_0, ..., x_{n-1}, y) copying each ``x_i`` into its slice of ``y`` along ``axis``: per input, a
    loop over the dimensions before ``axis`` (parallel where there are several) around a vectorized copy of the
    contiguous run the input's slice is in both buffers."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    out_shape = list(shapes[0])
    out_shape[axis] = sum(s[axis] for s in shapes)
    outer = int(np.prod(out_shape[:axis], dtype=np.int64))
    inner = int(np.prod(out_shape[axis + 1:], dtype=np.int64))
    row = out_shape[axis] * inner  # one outer index's run in the output
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(SYMBOL)
            inputs = [T.arg(f"x{i}", T.buffer(shape, dtype)) for i, shape in enumerate(shapes)]
            y = T.arg("y", T.buffer(out_shape, dtype))
            y_flat = T.decl_buffer((outer * row,), dtype, data=y.data)
            offset = 0
            for x, shape in zip(inputs, shapes):
                run = shape[axis] * inner
                x_flat = T.decl_buffer((outer * run,), dtype, data=x.data)
                whole, tail = divmod(run, lanes)
                loop = T.parallel if outer > 1 else T.serial
                with loop(0, outer) as o:
                    if whole:
                        with T.serial(0, whole) as v:
                            with T.vectorized(0, lanes) as lane:
                                T.buffer_store(y_flat, x_flat[o * run + v * lanes + lane],
                                               [o * row + offset + v * lanes + lane])
                    if tail:
                        with T.serial(0, tail) as t:
                            T.buffer_store(y_flat, x_flat[o * run + whole * lanes + t],
                                           [o * row + offset + whole * lanes + t])
                offset += run
    return scheduled(ib.get(), SYMBOL)


def legalize_concat(bb: Any, call: Any, isa: Isa) -> Any:
    """``relax.concat`` of ≥ :data:`MIN_INPUTS` static-shape tensors → ``call_tir`` of :func:`concat_func`;
    anything else → TVM's own legalization."""
    import tvm
    from tvm import relax

    tup = call.args[0]
    fields = list(tup.fields) if isinstance(tup, relax.Tuple) else None
    shapes = None if fields is None else [static_shape(f) for f in fields]
    out = static_shape(call)
    if (fields is None or len(fields) < MIN_INPUTS or out is None or any(s is None for s in shapes)
            or call.attrs.axis is None):
        return tvm.ir.Op.get("relax.concat").get_attr("FLegalize")(bb, call)
    axis = int(call.attrs.axis) % len(out)
    dtype = str(call.ty.dtype)
    bits = tvm.runtime.DataType(dtype).bits
    lanes = max(1, isa.lanes * 32 // bits)  # a vector register's elements
    func = concat_func(shapes, axis, dtype, lanes)
    gv = bb.add_func(func, SYMBOL)
    return relax.call_tir(gv, fields, out_ty=relax.TensorType(out, dtype))


def legalize_concat_for(target: Any):
    """The concat legalization for ``target``."""
    isa = isa_of(target)
    return lambda bb, call: legalize_concat(bb, call, isa)
