"""Output channels of float convs padded to whole vector blocks, so no conv falls off the blocked kernels.

Why: a conv's output channels are blocked by the largest power of two ≤ the lanes that divides them; a count
such as 42 (PP-PicoDet's heads: 10 classes + 4·8 box bins) gives blocks of 2, and such a conv was left in NCHW with
TVM's generic schedule: 1 GFLOP/s, 64 ms for one 1×1 head conv at 100×76, a quarter of the layout detector.
Zero output channels appended to the weight (a constant: folded) make it 48 = three 16-channel blocks, and the
extra outputs are sliced off right after. Counts below the lanes go to the row-vectorized kernel (kernels/spatial)
where it takes them, and are padded to one vector where it does not: BlazeFace's 96 → 6 classifier head on an 8×8
map (narrower than that kernel's rows) ran as TVM's generic conv at 2 GFLOP/s, 40 µs of the 1.3 ms detector.

A depthwise conv with such a count (BlazeFace's 42-channel stride-2 depthwise, after its channel-padding blocks)
fell to TVM's generic grouped conv the same way: 59 µs for 42 × 16² outputs, 5 % of the face detector. Its input
channels are padded with zeros as well (one small copy), so it runs as a blocked depthwise of 48 channels.

8-bit convs too (ungrouped): the VNNI/AMX/AVX2 int8 kernels take whole blocks only, and PP-OCRv4's text detector
quantized had two such 1×1 convs (192 → 42 at 20×20, 96 → 18 at 40×40) left in NCHW on TVM's generic int8 conv
at 3 GFLOP/s: 4.6 ms of its 18.6 ms of kernels (1 thread, Intel Xeon)."""

from __future__ import annotations

from edgec.targets.cpu.blocked import block
from edgec.targets.cpu.isa import Isa
from edgec.targets.cpu.kernels import spatial
from edgec.targets.cpu.options import CpuOptions
from edgec.targets.relax_rewrite import function_rewrite

MIN_BLOCK = 4  # layout.choose_layouts blocks a conv's output only from this block size up


def is_depthwise(call) -> bool:
    """One input channel per output channel and group (a conv2d call)."""
    groups, cout = int(call.attrs.groups), int(call.args[1].ty.shape[0])
    return groups > 1 and groups == cout == int(call.args[0].ty.shape[1]) and int(call.args[1].ty.shape[1]) == 1


def needs_padding(call, isa: Isa, options: CpuOptions) -> bool:
    """A float NCHW conv2d, ungrouped or depthwise, whose output channels block into fewer than ``MIN_BLOCK`` per
    vector: at least ``lanes`` of them, or fewer that the row-vectorized kernel does not take; an ungrouped 8-bit
    conv with any such count."""
    if getattr(call.op, "name", None) != "relax.nn.conv2d":
        return False
    a = call.attrs
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or (int(a.groups) != 1 and not is_depthwise(call)):
        return False
    cout = int(call.args[1].ty.shape[0])
    if block(cout, isa.lanes) >= MIN_BLOCK:
        return False
    if is_integer(call):  # the int8 kernels take whole blocks only; no row-vectorized int8 kernel
        return int(a.groups) == 1
    if "float" not in str(call.args[0].ty.dtype) or "float" not in str(call.args[1].ty.dtype):
        return False
    return cout >= isa.lanes or (int(a.groups) == 1 and not spatial.applies(call, isa, options))


def is_integer(call) -> bool:
    """An 8-bit conv (u8/i8 activations × i8 weights, as QDQ lowering leaves it)."""
    return str(call.args[0].ty.dtype) in ("uint8", "int8") and str(call.args[1].ty.dtype) == "int8"


def pad_output_channels_pass(isa: Isa, options: CpuOptions):
    """Relax pass (before the layout pass): see the module docstring."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Pad(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not needs_padding(call, isa, options):
                return call
            cout = int(call.args[1].ty.shape[0])
            extra = -cout % isa.lanes
            weight = relax.op.nn.pad(call.args[1], [0, extra, 0, 0, 0, 0, 0, 0])  # a constant: folded
            a = call.attrs
            data, groups = call.args[0], int(a.groups)
            if is_depthwise(call):  # zero input channels for the zero filters: a depthwise of cout + extra
                data = relax.op.nn.pad(data, [0, 0, 0, extra, 0, 0, 0, 0])
                groups = cout + extra
            out = relax.op.nn.conv2d(data, weight, strides=a.strides, padding=a.padding,
                                     dilation=a.dilation, groups=groups, data_layout=a.data_layout,
                                     kernel_layout=a.kernel_layout, out_layout=a.out_layout,
                                     out_dtype=a.out_dtype)
            return relax.op.strided_slice(out, axes=[1], begin=[0], end=[cout])

    return function_rewrite("EdgecPadOutputChannels", _Pad)
