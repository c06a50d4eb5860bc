"""Output channels of float convs padded to whole vector blocks, so no conv falls off the blocked kernels.

Why: a conv's output channels are blocked by the largest power of two ≤ the lanes that divides them; a count
such as 42 (PP-PicoDet's heads: 10 classes + 4·8 box bins) gives blocks of 2, and such a conv was left in NCHW with
TVM's generic schedule: 1 GFLOP/s, 64 ms for one 1×1 head conv at 100×76, a quarter of the layout detector.
Zero output channels appended to the weight (a constant: folded) make it 48 = three 16-channel blocks, and the
extra outputs are sliced off right after. Counts below the lanes are left to the row-vectorized kernel
(kernels/spatial)."""

from __future__ import annotations

from edgec.targets.cpu.blocked import block
from edgec.targets.cpu.isa import Isa
from edgec.targets.relax_rewrite import function_rewrite

MIN_BLOCK = 4  # layout.choose_layouts blocks a conv's output only from this block size up


def needs_padding(call, isa: Isa) -> bool:
    """A float, ungrouped NCHW conv2d with at least ``lanes`` output channels that block into fewer than
    ``MIN_BLOCK`` per vector."""
    if getattr(call.op, "name", None) != "relax.nn.conv2d":
        return False
    a = call.attrs
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or int(a.groups) != 1:
        return False
    if "float" not in str(call.args[0].ty.dtype) or "float" not in str(call.args[1].ty.dtype):
        return False
    cout = int(call.args[1].ty.shape[0])
    return cout >= isa.lanes and block(cout, isa.lanes) < MIN_BLOCK


def pad_output_channels_pass(isa: Isa):
    """Relax pass (before the layout pass): see the module docstring."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Pad(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not needs_padding(call, isa):
                return call
            cout = int(call.args[1].ty.shape[0])
            extra = -cout % isa.lanes
            weight = relax.op.nn.pad(call.args[1], [0, extra, 0, 0, 0, 0, 0, 0])  # a constant: folded
            a = call.attrs
            out = relax.op.nn.conv2d(call.args[0], weight, strides=a.strides, padding=a.padding,
                                     dilation=a.dilation, groups=a.groups, data_layout=a.data_layout,
                                     kernel_layout=a.kernel_layout, out_layout=a.out_layout,
                                     out_dtype=a.out_dtype)
            return relax.op.strided_slice(out, axes=[1], begin=[0], end=[cout])

    return function_rewrite("EdgecPadOutputChannels", _Pad)
