"""1-D convolutions (audio front ends, 1-D encoders), rewritten in Relax into forms the CPU kernels schedule.

TVM 0.27 legalizes ``relax.nn.conv1d`` to a plain loop nest that no edgec rule schedules: openWakeWord's STFT (two
257-channel convs with a 512-tap kernel, stride 160) ran 1.6 ms each, 25× onnxruntime. So, before the layout pass:

- a long kernel (≥ ``LONG_KERNEL`` taps, one group) becomes im2col + matmul: the windows are gathered with one
  ``take`` (frames × taps, small next to the kernel) and multiplied by the weight as a matrix, which the matmul
  rule (and its weight panels) runs at full vector width;
- any other 1-D conv becomes a 2-D conv over a unit height axis, so the blocked conv kernels (direct, depthwise,
  Winograd where it pays) and their layout choice take it like any image conv.
Both are exact rewrites; the weights' reshapes are of constants and fold at compile time."""

from __future__ import annotations

import numpy as np

from edgec.targets.cpu.isa import Isa
from edgec.targets.relax_rewrite import constant_value, function_rewrite

LONG_KERNEL = 16


def conv1d_pass(isa: Isa):
    """Relax pass: every float NCW conv1d → im2col + matmul (long kernels) or a conv2d with a unit height."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != "relax.nn.conv1d":
                return call
            a = call.attrs
            if a.data_layout != "NCW" or a.kernel_layout != "OIW" or "float" not in str(call.args[0].ty.dtype):
                return call
            taps = int(call.args[1].ty.shape[2])
            weight = constant_value(call.args[1], self.lookup_binding)
            if taps >= LONG_KERNEL and int(a.groups) == 1 and weight is not None:
                return _im2col_matmul(call, weight)
            return _as_conv2d(call)

    return function_rewrite("EdgecConv1d", _Rewrite)


def _im2col_matmul(call, weight: np.ndarray):
    from tvm import relax

    a = call.attrs
    x = call.args[0]
    n, c, length = (int(d) for d in x.ty.shape)
    cout, _, taps = weight.shape
    (pad_l, pad_r), stride, dilation = [int(p) for p in a.padding], int(a.strides[0]), int(a.dilation[0])
    if pad_l or pad_r:
        x = relax.op.nn.pad(x, [0, 0, 0, 0, pad_l, pad_r])
    frames = (length + pad_l + pad_r - dilation * (taps - 1) - 1) // stride + 1
    index = (np.arange(frames)[:, None] * stride + np.arange(taps)[None, :] * dilation).astype(np.int32)
    cols = relax.op.take(x, relax.const(index), axis=2)                       # [n, c, frames, taps]
    cols = relax.op.reshape(relax.op.permute_dims(cols, [0, 2, 1, 3]), [n, frames, c * taps])
    matrix = np.ascontiguousarray(weight.reshape(cout, c * taps).T)          # [c·taps, cout]
    out = relax.op.matmul(cols, relax.const(matrix), out_dtype=a.out_dtype)  # [n, frames, cout]
    return relax.op.permute_dims(out, [0, 2, 1])


def _as_conv2d(call):
    from tvm import relax

    a = call.attrs
    x = relax.op.expand_dims(call.args[0], [2])                               # [n, c, 1, length]
    w = relax.op.expand_dims(call.args[1], [2])                               # [o, i, 1, taps]
    pad_l, pad_r = (int(p) for p in a.padding)
    out = relax.op.nn.conv2d(x, w, strides=[1, int(a.strides[0])], padding=[0, pad_l, 0, pad_r],
                             dilation=[1, int(a.dilation[0])], groups=int(a.groups), data_layout="NCHW",
                             kernel_layout="OIHW", out_dtype=a.out_dtype)
    return relax.op.squeeze(out, [2])
