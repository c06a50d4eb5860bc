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
Anything else (residual adds, pooling) stays float, as in the source model; the per-tensor Q/DQ between them
become elementwise arithmetic (:func:`elementwise_qdq`) that layout conversion and fusion see through.
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
        """dequantize(xq, scalar scale, scalar zp) of a uint8/int8 tensor → (xq, sx, zx) or None. A reshape after
        the dequantize (TVM's Gemm import flattens its input: a TFLite FullyConnected's) moves before it —
        per-tensor dequantization commutes with it — so the FC layer is an integer matmul too."""
        from tvm import relax

        e = self.val(expr)
        if self.op_name(e) == "relax.reshape" and self.op_name(self.val(e.args[0])) == "relax.dequantize":
            inner = self.activation_dq(e.args[0])
            return None if inner is None else (relax.op.reshape(inner[0], e.args[1]), *inner[1:])
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
            if x is None:
                return None
            if w is None:
                g = self.grouped_weight(e.args[1])
                if g is None or int(a.groups) != 1 or len(e.ty.shape) != 4:
                    return None
                return {"kind": "conv2d", "call": e, "x": x, "w": g[0], "scale_full": g[1], "in_axis": 1,
                        "grouped": True}
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
            if x is not None and w is None:
                g = self.grouped_weight(rhs)
                if g is None or g[0].ndim != 2 or len(x[0].ty.shape) != 2:
                    return None
                wk, sk = (g[0].T, g[1].T) if transposed else g  # [K, N]
                return {"kind": "matmul", "call": e, "x": x, "w": np.ascontiguousarray(wk),
                        "scale_full": np.ascontiguousarray(sk), "in_axis": 0, "grouped": True}
            if x is None or w is None or w[0].ndim != 2:
                return None
            wk = np.ascontiguousarray(w[0].T) if transposed else w[0]  # [K, N]
            return {"kind": "matmul", "call": e, "x": x, "w": wk, "sw": w[1], "axis": -1}
        return None

    def grouped_weight(self, expr):
        """multiply(dequantize(const int8 w, 1, 0), const S) with S of w's shape (a group-wise weight, as
        ``widen_low_bit`` writes blocked DequantizeLinear) → (w, S float64) or None."""
        e = self.val(expr)
        if self.op_name(e) != "relax.multiply":
            return None
        for lhs, rhs in ((e.args[0], e.args[1]), (e.args[1], e.args[0])):
            full = _const(rhs)
            dq = self.val(lhs)
            if full is None or self.op_name(dq) != "relax.dequantize":
                continue
            w, unit, zp = _const(dq.args[0]), _const(dq.args[1]), _const(dq.args[2])
            if w is None or unit is None or zp is None or w.dtype != np.int8 or np.any(zp != 0) \
                    or unit.size != 1 or float(unit.reshape(-1)[0]) != 1.0 or full.shape != w.shape:
                continue
            return w, full.astype(np.float64)
        return None

    @staticmethod
    def _block_size(full: np.ndarray, axis: int) -> int:
        """The block length along ``axis``: every scale change falls on a multiple of it (gcd of the changes)."""
        moved = np.moveaxis(full, axis, 0).reshape(full.shape[axis], -1)
        changes = [p for p in range(1, moved.shape[0]) if np.any(moved[p] != moved[p - 1])]
        return int(np.gcd.reduce(changes)) if changes else int(moved.shape[0])

    def grouped_core(self, core):
        """Group-wise weights: integer partial sums per block, scaled and summed in float.

        With a scale per block of B input channels (and, for a conv, per kernel position), the int32
        accumulator of a whole output cannot be rescaled by one factor per output channel. Each partial sum
        over one block still is an integer dot product, so the layer becomes a batched integer matmul
        ``acc[t, m, o] = Σ_b (xq[m, t, b] − zx) · wq[t, b, o]`` (t = block × kernel position, int32, uint8 × int8,
        the zero point folded as the constant −zx·Σ_b w) followed by ``y[m, o] = Σ_t float(acc[t, m, o]) ·
        sx·s[t, o]`` in float32: B integer MACs per float multiply-add. Rescaling every block to one
        per-channel scale would be exact only when the block scales happen to be integer multiples of it, so
        it is not done. The float result goes on through the (float) bias, ReLU and output quantize as imported.
        A conv gathers its input windows first (one strided slice per kernel position, padded with zx)."""
        from tvm import relax

        xq, sx, zx = core["x"]
        w, full = core["w"], core["scale_full"]
        in_axis = core["in_axis"]
        block = self._block_size(full, in_axis)
        k_in = w.shape[in_axis]
        groups = -(-k_in // block)
        k_pad = groups * block - k_in
        if core["kind"] == "conv2d":
            call = core["call"]
            a = call.attrs
            n, o, oh, ow = (int(d) for d in call.ty.shape)
            _, c, kh, kw = w.shape
            top, left, bottom, right = (int(p) for p in a.padding)
            (sh, sw), (dh, dw) = (int(v) for v in a.strides), (int(v) for v in a.dilation)
            data = xq
            if top or left or bottom or right:
                data = relax.op.nn.pad(xq, [0, 0, 0, 0, top, bottom, left, right], "constant", float(zx))
            windows = []
            for i in range(kh):
                for j in range(kw):
                    if kh == kw == 1 and sh == sw == 1:
                        win = data
                    else:
                        win = relax.op.strided_slice(data, axes=[2, 3], begin=[i * dh, j * dw],
                                                     end=[i * dh + sh * (oh - 1) + 1, j * dw + sw * (ow - 1) + 1],
                                                     strides=[sh, sw])
                    if k_pad:
                        win = relax.op.nn.pad(win, [0, 0, 0, k_pad, 0, 0, 0, 0], "constant", float(zx))
                    windows.append(relax.op.expand_dims(win, 0))
            t = kh * kw * groups
            # concat, not stack: TVM 0.27's ConvertLayout fails on relax.stack ("Index -1 out of bounds")
            x_all = relax.op.concat(windows, axis=0) if len(windows) > 1 else windows[0]
            x_all = relax.op.reshape(x_all, [kh * kw, n, groups, block, oh, ow])
            x_all = relax.op.permute_dims(x_all, [0, 2, 1, 4, 5, 3])  # [kpos, group, n, oh, ow, b]
            lhs = relax.op.reshape(x_all, [t, n * oh * ow, block])
            wp = np.pad(w, ((0, 0), (0, k_pad), (0, 0), (0, 0)))                       # [o, G·B, kh, kw]
            wt = wp.reshape(o, groups, block, kh, kw).transpose(3, 4, 1, 2, 0).reshape(t, block, o)
            st = full[:, ::block, :, :].transpose(2, 3, 1, 0).reshape(t, o)           # scale per block, [t, o]
        else:
            m = int(xq.ty.shape[0])
            k, o = w.shape
            lhs = xq
            if k_pad:
                lhs = relax.op.nn.pad(xq, [0, 0, 0, k_pad], "constant", float(zx))
            lhs = relax.op.permute_dims(relax.op.reshape(lhs, [m, groups, block]), [1, 0, 2])  # [G, m, B]
            t = groups
            wt = np.pad(w, ((0, k_pad), (0, 0))).reshape(groups, block, o)
            st = full[::block, :]
        acc = relax.op.matmul(lhs, relax.const(np.ascontiguousarray(wt), "int8"), out_dtype="int32")
        if zx:
            corr = -zx * wt.astype(np.int64).sum(axis=1)                              # [t, o]
            acc = relax.op.add(acc, relax.const(corr.reshape(t, 1, o).astype(np.int32), "int32"))
        scale = (np.float64(sx) * st).astype(np.float32).reshape(t, 1, o)
        y = relax.op.sum(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32")), axis=[0])
        if core["kind"] == "conv2d":
            y = relax.op.permute_dims(relax.op.reshape(y, [n, oh, ow, o]), [0, 3, 1, 2])
        self.rewritten += 1
        return y

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
        if core is None or core.get("grouped"):
            return None  # group-wise weights: the second pass (dequantized_core) lowers the product itself
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
        y = _clamp(y, lo, hi)
        self.rewritten += 1
        return _to_integer(y, out_dtype)

    def dequantized_core(self, expr):
        """A dequantized-input conv2d/matmul with a float output: integer product, accumulator dequantized."""
        from tvm import relax

        core = self.core(expr)
        if core is None or (core["kind"] == "conv2d" and len(core["call"].ty.shape) != 4):
            return None
        if core.get("grouped"):
            return self.grouped_core(core)
        _, sx, zx = core["x"]
        acc, wsum = self.integer_product(core)
        if zx:
            acc = relax.op.subtract(acc, self.per_channel(zx * wsum, core, "int32"))
        scale = (sx * core["sw"]).astype(np.float32)
        self.rewritten += 1
        return relax.op.multiply(relax.op.astype(acc, "float32"), self.per_channel(scale, core, "float32"))


def _or(new, old):
    return old if new is None else new


def _clamp(y, lo: float, hi: float):
    """clip(y, lo, hi) as maximum/minimum: TVM's ConvertLayout has no layout rule for relax.clip (nor for
    quantize/dequantize), so a clip left the int8 layer's output in NCHW, with a layout transform to NCHW and
    back around it after every conv (ResNet-18 int8: 1.1 of 7.1 ms)."""
    from tvm import relax

    return relax.op.minimum(relax.op.maximum(y, relax.const(np.float32(lo))), relax.const(np.float32(hi)))


def _to_integer(y, out_dtype: str):
    """A clamped float32 tensor (whole numbers within the dtype's range) to ``out_dtype`` through int32: float32 →
    uint8/int8 in one step left TVM's vectorizer a cast it scalarized, with the whole requantizing epilogue around
    it (448 scalar multiply/min/max/convert per 16-output tile in a ResNet-18 conv); float32 → int32 → int8 are two
    vector conversions."""
    from tvm import relax

    return relax.op.astype(relax.op.astype(y, "int32"), out_dtype)


def _scalar(expr) -> float | None:
    value = _const(expr)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def elementwise_qdq(func):
    """The per-tensor quantize/dequantize left between layers (residual adds, pooling, the model's input and
    output) as elementwise arithmetic with ONNX's semantics — ``dequantize(x) = (float(x) − z) · s``,
    ``quantize(x) = saturate(round(x / s) + z)``, round half to even — so that layout conversion passes through
    them and fusion puts them in the neighbouring kernels' epilogues. Per-channel ones stay as they are.

    ``quantize(dequantize(x, s, z), s, z)`` of an integer ``x`` of the output's type is ``x`` itself, exactly:
    ``(x − z) · s / s`` is within a few float32 ulps of the integer ``x − z`` (|x − z| ≤ 255), which rounds back
    to it. A TFLite quantized ADD reads its inputs' integers that way; left as arithmetic, each input was
    re-quantized (float convert, multiply, divide, round, clamp) in the residual conv's epilogue."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    def dequantize(expr, _matches):
        scale, zero = _scalar(expr.args[1]), _scalar(expr.args[2])
        if scale is None or zero is None or str(expr.attrs.out_dtype) != "float32":
            return expr
        x = relax.op.astype(expr.args[0], "float32")
        if zero:
            x = relax.op.subtract(x, relax.const(np.float32(zero)))
        return relax.op.multiply(x, relax.const(np.float32(scale)))

    def quantize(expr, _matches):
        scale, zero = _scalar(expr.args[1]), _scalar(expr.args[2])
        out_dtype = str(expr.attrs.out_dtype)
        if scale is None or zero is None or out_dtype not in _QRANGE or str(expr.args[0].ty.dtype) != "float32":
            return expr
        y = relax.op.round(relax.op.divide(expr.args[0], relax.const(np.float32(scale))))
        if zero:
            y = relax.op.add(y, relax.const(np.float32(zero)))
        return _to_integer(_clamp(y, *_QRANGE[out_dtype]), out_dtype)

    def round_trip(expr, matches):
        inner = matches[dq]
        same = [_scalar(a) for a in (expr.args[1], inner.args[1], expr.args[2], inner.args[2])]
        if None in same or same[0] != same[1] or same[2] != same[3] \
                or str(inner.args[0].ty.dtype) != str(expr.attrs.out_dtype):
            return expr
        return inner.args[0]

    any3 = (wildcard(), wildcard(), wildcard())
    dq = is_op("relax.dequantize")(*any3)
    func = rewrite_call(is_op("relax.quantize")(dq, wildcard(), wildcard()), round_trip, func)
    func = rewrite_call(is_op("relax.dequantize")(*any3), dequantize, func)
    return rewrite_call(is_op("relax.quantize")(*any3), quantize, func)


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


def lower_qdq(mod):
    """Rewrite every Q/DQ-wrapped conv2d / matmul of ``mod`` into integer arithmetic (see the module doc)."""
    from tvm import relax

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            new, n = _rewrite_function(func)
            if n:
                mod[gv] = relax.analysis.remove_all_unused(elementwise_qdq(new))
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
