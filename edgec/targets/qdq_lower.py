"""QDQ → integer arithmetic: Relax rewrites that turn TVM's import of a QDQ model into int8 kernels.

TVM's ONNX importer keeps a QDQ model's float semantics: ``dequantize(xq) → conv2d ← dequantize(wq)``, the bias
dequantized and added in float, then ``quantize``. Compiled as is, every layer runs in float on dequantized
copies of its inputs. These rewrites replace each such layer by integer arithmetic:

    acc   = conv2d(xq, wq, out_dtype=int32)           uint8/int8 × int8 → int32 (also matmul for Gemm/MatMul)
    acc  += b_int − zx · Σw                           one per-channel int32 constant (bias and input zero point)
    yq    = clip(round(float(acc) · M) + zy, lo, 255) M = sx·sw[c]/sy per channel, float32; lo = zy with ReLU

The input zero point is folded as the constant ``zx · Σw`` (so the conv reads raw uint8, which is what VNNI's
u8 × s8 dot product takes); a padded conv with ``zx ≠ 0`` first pads ``xq`` with ``zx`` explicitly, because a
zero-padded border would otherwise contribute ``−zx · w`` there. ReLU before the output ``quantize`` is a clamp
at ``zy`` (``quantize(relu(y)) = max(quantize(y), zy)`` exactly, since rounding is monotone and round(0) = 0);
ReLU6's ``min(·, c)`` after it (the canonicalize_clip form) is a clamp at ``quantize(c)`` for the same reason.

Requantization is a float32 multiply + round-half-to-even (TVM's ``round`` is ``nearbyint``), not a fixed-point
multiplier + shift: it is what onnxruntime's QLinearConv/MLAS requantization does (so the artifact matches the
reference to the bit in most elements), and on x86/NEON a float multiply + convert per output is as cheap as
the 64-bit-intermediate multiply a fixed-point scheme needs. ``float(acc)`` is exact for |acc| < 2^24.

A layer whose output is not quantized (a Gemm producing the graph's float logits) keeps the integer product
and dequantizes its accumulator: ``float(acc − zx · Σw) · sx · sw[c]``, the float bias add after it unchanged.
Anything else (residual adds, pooling, Q/DQ between them) stays float, as in the source model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["lower_qdq", "count_integer_layers"]

_QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}


def _const(expr) -> np.ndarray | None:
    import tvm

    if isinstance(expr, tvm.ir.expr.Constant):  # relax.const(...) builds a GenericConst, a subclass
        return expr.value.numpy()
    return None


class _Rewriter:
    def __init__(self, func) -> None:
        from tvm import relax

        self.var2val = relax.analysis.get_var2val(func)
        self.uses: dict[Any, int] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                for v in relax.analysis.free_vars(binding.value):
                    self.uses[v] = self.uses.get(v, 0) + 1
        for v in relax.analysis.free_vars(func.body.body):
            self.uses[v] = self.uses.get(v, 0) + 1
        self.rewritten = 0

    # ---------------------------------------------------------------------------------------------- helpers

    def val(self, expr):
        from tvm import relax

        while isinstance(expr, relax.Var) and expr in self.var2val:
            expr = self.var2val[expr]
        return expr

    def single_use(self, expr) -> bool:
        from tvm import relax

        return not isinstance(expr, relax.Var) or self.uses.get(expr, 0) <= 1

    @staticmethod
    def op_name(expr) -> str | None:
        import tvm
        from tvm import relax

        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            return expr.op.name
        return None

    def activation_dq(self, expr):
        """dequantize(xq, scalar scale, scalar zp) of a uint8/int8 tensor → (xq, sx, zx) or None."""
        e = self.val(expr)
        if self.op_name(e) != "relax.dequantize":
            return None
        xq = e.args[0]
        dtype = str(xq.ty.dtype)
        scale, zp = _const(e.args[1]), _const(e.args[2])
        if dtype not in _QRANGE or scale is None or zp is None or scale.size != 1 or zp.size != 1:
            return None
        return xq, float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])

    def weight_dq(self, expr, out_axis: int):
        """dequantize(const int8 w, const scale, zp 0) → (w int8 array, per-output-channel scale) or None."""
        e = self.val(expr)
        if self.op_name(e) != "relax.dequantize":
            return None
        w, scale, zp = _const(e.args[0]), _const(e.args[1]), _const(e.args[2])
        if w is None or scale is None or zp is None or w.dtype != np.int8 or np.any(zp != 0):
            return None
        n_out = w.shape[out_axis]
        scale = scale.astype(np.float64).reshape(-1)
        if scale.size == 1:
            scale = np.full(n_out, scale[0])
        elif scale.size != n_out or int(e.attrs.axis) % w.ndim != out_axis:
            return None
        return w, scale

    def core(self, expr):
        """A conv2d / matmul whose inputs are dequantized: its integer ingredients, or None."""
        e = self.val(expr)
        name = self.op_name(e)
        if name == "relax.nn.conv2d":
            a = e.attrs
            if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW":
                return None
            x = self.activation_dq(e.args[0])
            w = self.weight_dq(e.args[1], 0)
            if x is None or w is None:
                return None
            return {"kind": "conv2d", "call": e, "x": x, "w": w[0], "sw": w[1], "axis": 1}
        if name == "relax.matmul":
            x = self.activation_dq(e.args[0])
            rhs = self.val(e.args[1])
            transposed = False
            if self.op_name(rhs) == "relax.permute_dims":
                axes = rhs.attrs.axes
                if axes is None or [int(v) for v in axes] == [1, 0]:
                    transposed, rhs = True, rhs.args[0]
                else:
                    return None
            w = self.weight_dq(rhs, 0 if transposed else 1)
            if x is None or w is None or w[0].ndim != 2:
                return None
            wk = np.ascontiguousarray(w[0].T) if transposed else w[0]  # [K, N]
            return {"kind": "matmul", "call": e, "x": x, "w": wk, "sw": w[1], "axis": -1}
        return None

    def bias(self, expr, n_out: int):
        """A bias operand (dequantize of a constant, maybe reshaped to broadcast): (values, scale or None)."""
        e = self.val(expr)
        if self.op_name(e) == "relax.reshape":
            e = self.val(e.args[0])
        if self.op_name(e) == "relax.dequantize":
            q, scale, zp = _const(e.args[0]), _const(e.args[1]), _const(e.args[2])
            if q is None or scale is None or zp is None or q.size != n_out or np.any(zp != 0):
                return None
            scale = scale.astype(np.float64).reshape(-1)
            return q.reshape(-1).astype(np.float64), (np.full(n_out, scale[0]) if scale.size == 1 else scale)
        c = _const(e)
        if c is not None and c.size == n_out and c.dtype.kind == "f":
            return c.reshape(-1).astype(np.float64), None
        return None

    # ---------------------------------------------------------------------------------------------- integer ops

    def integer_product(self, core):
        """int32 accumulator of the layer with the input zero point folded in: (acc expr, Σw int64 per channel)."""
        from tvm import relax

        xq, _, zx = core["x"]
        w = core["w"]
        if core["kind"] == "conv2d":
            a = core["call"].attrs
            padding = [int(p) for p in a.padding]  # top, left, bottom, right
            data = xq
            if zx != 0 and any(padding):
                top, left, bottom, right = padding
                data = relax.op.nn.pad(xq, [0, 0, 0, 0, top, bottom, left, right], "constant", float(zx))
                padding = [0, 0, 0, 0]
            acc = relax.op.nn.conv2d(data, relax.const(w, "int8"), strides=a.strides, padding=padding,
                                     dilation=a.dilation, groups=a.groups, data_layout="NCHW",
                                     kernel_layout="OIHW", out_layout="NCHW", out_dtype="int32")
            wsum = w.astype(np.int64).reshape(w.shape[0], -1).sum(axis=1)
        else:
            acc = relax.op.matmul(xq, relax.const(w, "int8"), out_dtype="int32")
            wsum = w.astype(np.int64).sum(axis=0)
        return acc, wsum

    @staticmethod
    def per_channel(values: np.ndarray, core, dtype: str):
        from tvm import relax

        arr = values.astype(dtype)
        if core["kind"] == "conv2d":
            arr = arr.reshape(1, -1, 1, 1)
        return relax.const(arr, dtype)

    def requantize(self, expr):
        """quantize([relu]([add](core, bias))) → integer layer, or None when the chain is not that."""
        from tvm import relax

        q = expr
        yscale, yzp = _const(q.args[1]), _const(q.args[2])
        out_dtype = str(q.attrs.out_dtype)
        if yscale is None or yzp is None or yscale.size != 1 or yzp.size != 1 or out_dtype not in _QRANGE:
            return None
        sy, zy = float(yscale.reshape(-1)[0]), int(yzp.reshape(-1)[0])
        e, relu, cap = q.args[0], False, None
        if self.op_name(self.val(e)) == "relax.minimum" and self.single_use(e):  # ReLU6: minimum(relu(y), c)
            mn = self.val(e)
            for arg, other in ((mn.args[0], mn.args[1]), (mn.args[1], mn.args[0])):
                c = _const(other)
                if c is not None and c.size == 1 and c.dtype.kind == "f":
                    e, cap = arg, np.float32(c.reshape(-1)[0])
                    break
            if cap is None:
                return None
        if self.op_name(self.val(e)) == "relax.nn.relu":
            if not self.single_use(e):
                return None
            e, relu = self.val(e).args[0], True
        bias_term = None
        core = self.core(e) if self.single_use(e) else None
        if core is None and self.op_name(self.val(e)) == "relax.add" and self.single_use(e):
            add = self.val(e)
            for lhs, rhs in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
                c = self.core(lhs) if self.single_use(lhs) else None
                if c is None:
                    continue
                b = self.bias(rhs, c["w"].shape[0] if c["kind"] == "conv2d" else c["w"].shape[1])
                if b is not None:
                    core, bias_term = c, b
                    break
        if core is None:
            return None
        if core["kind"] == "conv2d" and len(core["call"].ty.shape) != 4:
            return None
        _, sx, zx = core["x"]
        acc_scale = sx * core["sw"]  # float64, per output channel
        b_int = np.zeros(acc_scale.size, np.int64)
        if bias_term is not None:
            values, scale = bias_term
            if scale is not None and np.allclose(scale, acc_scale.astype(np.float32), rtol=1e-6, atol=0):
                b_int = values.astype(np.int64)  # the int32 bias is already in the accumulator's scale
            else:
                b_int = np.round(values * (scale if scale is not None else 1.0) / acc_scale).astype(np.int64)
        acc, wsum = self.integer_product(core)
        corr = b_int - zx * wsum
        if np.any(np.abs(corr) >= 2 ** 31):
            return None
        if np.any(corr != 0):
            acc = relax.op.add(acc, self.per_channel(corr, core, "int32"))
        mult = (acc_scale / sy).astype(np.float32)
        lo, hi = _QRANGE[out_dtype]
        if relu:
            lo = max(lo, zy)
        if cap is not None:  # quantize(min(v, c)) = min(quantize(v), quantize(c)): rounding is monotone
            hi = min(hi, int(np.clip(np.round(cap / np.float32(sy)) + zy, *_QRANGE[out_dtype])))
            if hi < lo:
                return None
        y = relax.op.multiply(relax.op.astype(acc, "float32"), self.per_channel(mult, core, "float32"))
        y = relax.op.round(y)
        if zy:
            y = relax.op.add(y, relax.const(np.float32(zy)))
        y = relax.op.clip(y, float(lo), float(hi))
        self.rewritten += 1
        return relax.op.astype(y, out_dtype)

    def dequantized_core(self, expr):
        """A dequantized-input conv2d/matmul with a float output: integer product, accumulator dequantized."""
        from tvm import relax

        core = self.core(expr)
        if core is None or (core["kind"] == "conv2d" and len(core["call"].ty.shape) != 4):
            return None
        _, sx, zx = core["x"]
        acc, wsum = self.integer_product(core)
        if zx:
            acc = relax.op.subtract(acc, self.per_channel(zx * wsum, core, "int32"))
        scale = (sx * core["sw"]).astype(np.float32)
        self.rewritten += 1
        return relax.op.multiply(relax.op.astype(acc, "float32"), self.per_channel(scale, core, "float32"))


def _or(new, old):
    return old if new is None else new


def _rewrite_function(func) -> tuple[Any, int]:
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    if not isinstance(func.body, relax.SeqExpr):
        return func, 0
    total = 0
    rw = _Rewriter(func)
    pattern = is_op("relax.quantize")(wildcard(), wildcard(), wildcard())
    func = rewrite_call(pattern, lambda expr, _m: _or(rw.requantize(expr), expr), func)
    total += rw.rewritten
    rw = _Rewriter(func)
    for op in ("relax.nn.conv2d", "relax.matmul"):
        pattern = is_op(op)(wildcard(), wildcard())
        func = rewrite_call(pattern, lambda expr, _m: _or(rw.dequantized_core(expr), expr), func)
    total += rw.rewritten
    return func, total


LAST_COUNT: dict[str, int] = {"integer_layers": 0}


def lower_qdq(mod):
    """Rewrite every Q/DQ-wrapped conv2d / matmul of ``mod`` into integer arithmetic (see the module doc)."""
    from tvm import relax

    total = 0
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            new, n = _rewrite_function(func)
            if n:
                mod[gv] = relax.analysis.remove_all_unused(new)
                total += n
    LAST_COUNT["integer_layers"] = total
    return mod


def count_integer_layers(mod) -> int:
    """conv2d / matmul calls in ``mod`` that accumulate in int32 (what the rewrite produced)."""
    from tvm import relax

    found = 0

    def visit(expr) -> None:
        nonlocal found
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) in ("relax.nn.conv2d", "relax.matmul"):
            if str(expr.attrs.out_dtype) == "int32":
                found += 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found
