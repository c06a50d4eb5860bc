"""What the kernels of edgec's own ops (binary_conv.py, adder_conv.py) share: a conv layer's static shape, the
attributes of a hand-scheduled PrimFunc, and the Relax pass that finds each op's imported float body and replaces
it by calls of the op's kernels.

Why a pass on the imported body: TVM's ONNX importer has no hook for custom ops, so ``edgec::BinaryConv`` and
``edgec::AdderConv`` reach Relax as their function bodies (edgec_ops.py inlines them); each kernel module
recognises its body by checking every constant in it, so a replacement is exact whatever graph the pattern came
from, and a target the kernel does not take keeps the float body.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

__all__ = ["ConvShape", "TilePlan", "producer", "producer_chain", "dequantized", "weight_value", "conv_shape",
           "scheduled", "op_kernel_pass"]


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One conv layer's static shape and attributes (ONNX Conv's, group 1); ``pads`` = (top, left, bottom, right)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)

    @property
    def oh(self) -> int:
        return (self.h + self.pads[0] + self.pads[2] - self.dilations[0] * (self.kh - 1) - 1) // self.strides[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pads[1] + self.pads[3] - self.dilations[1] * (self.kw - 1) - 1) // self.strides[1] + 1

    def describe(self) -> str:
        """How the build report lists the layer: ``C->O KHxKW/S HxW``."""
        return f"{self.c}->{self.o} {self.kh}x{self.kw}/{self.strides[0]} {self.h}x{self.w}"


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """What a direct conv kernel with a register tile of ``tiling.positions`` output columns × ``tiling.vectors``
    vectors of ``tiling.lanes`` output channels implies for its buffers (the adder kernels' plans extend it):
    output channels padded to whole tiles, column tiles per row, the padded input's height and width."""

    shape: ConvShape
    tiling: Any

    @property
    def block(self) -> int:
        return self.tiling.lanes * self.tiling.vectors

    @property
    def o_padded(self) -> int:
        return -(-self.shape.o // self.block) * self.block

    @property
    def ow_tiles(self) -> int:
        return -(-self.shape.ow // self.tiling.positions)

    @property
    def hp(self) -> int:
        s = self.shape
        return s.h + s.pads[0] + s.pads[2]

    @property
    def wp(self) -> int:
        """Padded width, extended so the last tile's extra columns read inside the buffer (padding values)."""
        s = self.shape
        reach = (self.ow_tiles * self.tiling.positions - 1) * s.strides[1] + (s.kw - 1) * s.dilations[1] + 1
        return max(s.w + s.pads[1] + s.pads[3], reach)


def producer(expr: Any, name: str, lookup: Any) -> Any:
    """The call of Relax op ``relax.<name>`` that ``expr`` is (bound variables followed through ``lookup``), or
    None: one step of walking an op's imported body back from its last call."""
    from tvm import relax

    while isinstance(expr, relax.Var) and lookup(expr) is not None:
        expr = lookup(expr)
    return expr if getattr(getattr(expr, "op", None), "name", None) == f"relax.{name}" else None


def producer_chain(expr: Any, names: list[str], lookup: Any) -> list[Any] | None:
    """The calls ``relax.<names[0]>(relax.<names[1]>(…), …)`` that ``expr`` is, each the producer of the previous
    one's first argument, outermost first; None where the body is not that chain: an op's imported body, walked
    back from its last call."""
    calls: list[Any] = []
    for name in names:
        call = producer(calls[-1].args[0] if calls else expr, name, lookup)
        if call is None:
            return None
        calls.append(call)
    return calls


def relu_absorbed(x: Any, shift: Any, lookup: Any) -> tuple[Any, Any]:
    """(input, shift) for a sign pack ``relu(y) + shift < 0`` read as ``y + shift' < 0``, when ``x`` is a ReLU
    (else ``x`` and ``shift`` unchanged). Exact: with shift[c] < 0, max(y, 0) < −shift[c] > 0 holds exactly when
    y < −shift[c]; with shift[c] ≥ 0 the sum is never negative, and shift'[c] = +inf keeps the bit at +1 for every
    y. Why: a BNN's ReLU before each binary layer was a kernel of its own (1.2 µs of the MNIST BNN's 76), now dead
    code where nothing else reads it."""
    import numpy as np

    relu = producer(x, "nn.relu", lookup)
    if relu is None:
        return x, shift
    shift = np.asarray(shift, np.float32)
    return relu.args[0], np.where(shift < 0, shift, np.float32(np.inf)).astype(np.float32)


def dequantized(expr: Any, lookup: Any) -> tuple[Any, float, int] | None:
    """``(q, s, z)`` where ``expr`` is the integer tensor q dequantized with a scalar scale s and zero point z —
    TVM's ``dequantize`` or its elementwise form ``(float(q) − z)·s`` (qdq_lower.elementwise_qdq) — q uint8 or
    int8; else None. How a kernel of a quantized op finds the integers under its float body's input."""
    from edgec.targets.relax_rewrite import constant_value

    def scalar(e: Any) -> float | None:
        value = constant_value(e, lookup)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    dq = producer(expr, "dequantize", lookup)
    if dq is not None:
        q, scale, zero = dq.args[0], scalar(dq.args[1]), scalar(dq.args[2])
    else:
        mul = producer(expr, "multiply", lookup)
        if mul is None:
            return None
        scale, inner, zero = scalar(mul.args[1]), mul.args[0], 0.0
        sub = producer(inner, "subtract", lookup)
        if sub is not None:
            zero, inner = scalar(sub.args[1]), sub.args[0]
        cast = producer(inner, "astype", lookup)
        if cast is None:
            return None
        q = cast.args[0]
    dtype = str(getattr(getattr(q, "ty", None), "dtype", ""))
    if scale is None or zero is None or scale <= 0 or dtype not in ("uint8", "int8") or zero != round(zero):
        return None
    return q, scale, int(zero)


def weight_value(expr: Any, lookup: Any) -> Any:
    """The float32 value of a weight expression: a constant (see ``relax_rewrite.constant_value``), or a
    constant integer tensor dequantized (:func:`dequantized`) and maybe reshaped, computed as TVM computes it
    — ``(float32(q) − z)·s`` — so a quantized op's weights are read before FoldConstant has run; else None."""
    import numpy as np

    from edgec.targets.relax_rewrite import constant_value

    value = constant_value(expr, lookup)
    if value is not None:
        return value
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    inner = producer(expr, "reshape", lookup)
    source = dequantized(inner.args[0] if inner is not None else expr, lookup)
    q = constant_value(source[0], lookup) if source is not None else None
    if q is None or shape is None:
        return None
    _, scale, zero = source
    value = (q.astype(np.float32) - np.float32(zero)) * np.float32(scale)
    return value.reshape([int(d) for d in shape])


def conv_shape(conv: Any, x: Any, o: int, c: int, kh: int, kw: int, cls: type = ConvShape) -> Any:
    """The static :class:`ConvShape` (or ``cls``) of the body's ``relax.nn.conv2d`` over ``x``, or None where the
    kernels do not apply: grouped or non-NCHW/OIHW, not float32, a symbolic dimension, ``x`` without ``c``
    channels, an empty output."""
    import tvm

    a = conv.attrs
    dims = getattr(getattr(x, "ty", None), "shape", None)
    if (int(a.groups) != 1 or a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW"
            or str(conv.ty.dtype) != "float32" or dims is None or len(dims) != 4
            or not all(isinstance(d, tvm.tirx.IntImm) for d in dims)):
        return None  # a symbolic dimension: the kernels are built for one static shape
    n, channels, h, w = (int(d) for d in dims)
    shape = cls(n=n, c=c, h=h, w=w, o=o, kh=kh, kw=kw, strides=tuple(int(v) for v in a.strides),
                pads=tuple(int(v) for v in a.padding), dilations=tuple(int(v) for v in a.dilation))
    return shape if channels == c and shape.oh > 0 and shape.ow > 0 else None


def scheduled(func: Any, symbol: str) -> Any:
    """A hand-written PrimFunc as the build must take it: exported as ``symbol``, already scheduled (no schedule
    rule touches it, and tuning offers it no task), its buffers not aliased, and opaque to fusion (op_pattern 8,
    TVM's kOpaque): its loops are not the compute blocks FuseTIR knows how to merge with a neighbour's."""
    return func.with_attr({"global_symbol": symbol, "tirx.is_scheduled": True, "tirx.noalias": True,
                           "op_pattern": 8})


def op_kernel_pass(name: str, takes: Callable[[], bool], rewrite: Callable[[Any, Any, Any, int], Any],
                   stats: dict[str, Any] | None = None):
    """A Relax module pass: every ``relax.add`` call (where both op bodies end: the bias) is offered to
    ``rewrite(builder, call, lookup_binding, index)``, which returns the replacing expression (having added its
    kernels to the builder as ``<symbol>_<index>``) and the layer's :class:`ConvShape`, or None to keep the call.
    ``stats`` (owned by the build) gets ``{"layers": n, "shapes": [...]}``; a target ``takes()`` refuses is left
    as it is. The float body left behind is removed as dead code."""
    import tvm
    from tvm import relax

    from edgec.targets.relax_rewrite import rewrite_with_builder

    counts = stats if stats is not None else {}

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != "relax.add":
                return call
            done = rewrite(self.builder_, call, self.lookup_binding, counts.get("layers", 0))
            if done is None:
                return call
            expr, shape = done
            counts["layers"] = counts.get("layers", 0) + 1
            counts.setdefault("shapes", []).append(shape.describe())
            return expr

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        counts.clear()
        if not takes():
            return mod
        mod = rewrite_with_builder(mod, _Rewrite)  # the kernels it adds land in the builder's module
        return relax.transform.DeadCodeElimination()(mod) if counts.get("layers") else mod

    return _pass


def pack_then_kernel(builder: Any, index: int, plan: Any, pack: tuple[Callable[[Any, str], Any], str],
                     kernel: tuple[Callable[[Any, str], Any], str], x: Any, shift: Any, packed_shape: tuple,
                     constants: list[Any], out_shape: tuple, packed_dtype: str = "uint32") -> Any:
    """The binary layers' two calls, on every target (the CPU and the CUDA kernels): ``pack`` (a PrimFunc factory
    ``(plan, symbol)`` and its symbol) turns ``x`` + ``shift`` into sign words of ``packed_shape``; ``kernel`` reads
    them with the (numpy) ``constants`` and returns ``out_shape`` float32. Symbols get the layer's ``index``; the
    words are ``packed_dtype``."""
    from tvm import relax

    (pack_func, pack_symbol), (kernel_func, kernel_symbol) = pack, kernel
    pack_gv = builder.add_func(pack_func(plan, f"{pack_symbol}_{index}"), f"{pack_symbol}_{index}")
    kernel_gv = builder.add_func(kernel_func(plan, f"{kernel_symbol}_{index}"), f"{kernel_symbol}_{index}")
    packed = builder.emit(relax.call_tir(pack_gv, [x, relax.const(shift)],
                                         out_ty=relax.TensorType(packed_shape, packed_dtype)), "binary_packed")
    return relax.call_tir(kernel_gv, [packed, *(relax.const(c) for c in constants)],
                          out_ty=relax.TensorType(out_shape, "float32"))
