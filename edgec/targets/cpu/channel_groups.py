"""Which 4-D tensors of a Relax module must share one channel block, and the largest block each can take.

Why: the layout pass picks a channel block per convolution (layout.choose_layouts), by the largest power of two
≤ the lanes dividing the conv's own channel count. Between two convs that is consistent, because the producer's
output and the consumer's input have the same count. A channel Concat breaks it: two 24-channel convs get 8-channel
blocks (NCHW8c), their concat has 48 channels and the conv reading it asks for NCHW16c. TVM 0.27's ConvertLayout
cannot convert between two blocked layouts of different factors (``Invalid layout axis 16b``, ddddocr's YOLOX
detector), and its concat takes its first input's layout for all of them (a 24-channel part cannot be NCHW16c).

So tensors are grouped: a channel concat joins its inputs and output, and an op whose output keeps the channel
count of a tensor argument (elementwise ops, pooling, resize, depthwise conv) joins that argument and its output;
a group's granularity is the gcd of its members' channel counts. A block that divides it divides every member's
channels and is the same on both sides of every concat. Without a concat a group has one channel count, so its
block is what it was before.
"""

from __future__ import annotations

import math
from typing import Any

CONCAT = "relax.concat"
CONV2D = "relax.nn.conv2d"


class ChannelGroups:
    """Granularity of the channel axis of every 4-D tensor var of a module: see the module docstring.

    ``of_var(var)`` is the granularity of a var (its own channel count when it is in no group, None when it is
    not a static 4-D tensor); ``of_call(call)`` that of the var a call is bound to (None for an unknown call).
    """

    def __init__(self, mod: Any) -> None:
        from tvm import relax

        self._parent: dict[Any, Any] = {}
        self._channels: dict[Any, int] = {}
        self._bound: dict[Any, Any] = {}  # call → the var it is bound to (Relax objects hash by handle)
        self._tuples: dict[Any, Any] = {}
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func.body, self._visit)
        self._gcd: dict[Any, int] = {}
        for var, channels in self._channels.items():
            root = self._find(var)
            self._gcd[root] = math.gcd(self._gcd.get(root, 0), channels)

    def of_var(self, var: Any) -> int | None:
        if var not in self._channels:
            return channels_of(var)
        return self._gcd[self._find(var)]

    def of_call(self, call: Any) -> int | None:
        var = self._bound.get(call)
        return None if var is None else self.of_var(var)

    # ------------------------------------------------------------------ building

    def _visit(self, node: Any) -> None:
        from tvm import relax

        if isinstance(node, relax.SeqExpr):  # a function body or an If branch
            for block in node.blocks:
                for binding in block.bindings:
                    if isinstance(binding, relax.VarBinding):
                        self._bind(binding.var, binding.value)

    def _bind(self, var: Any, value: Any) -> None:
        from tvm import relax

        if isinstance(value, relax.Tuple):
            self._tuples[var] = value
            return
        if not isinstance(value, relax.Call):
            return
        self._bound[value] = var
        out = channels_of(var)
        if out is None:
            return
        self._add(var, out)
        op = getattr(value.op, "name", None)
        if op == CONCAT:
            if int(value.attrs.axis) not in (1, -3):
                return
            for part in self._fields(value.args[0]):
                if channels_of(part) is not None:
                    self._add(part, channels_of(part))
                    self._union(part, var)
            return
        if op == CONV2D and not is_depthwise(value):
            return  # input and output blocks are chosen independently
        for arg in value.args:
            if isinstance(arg, relax.Var) and channels_of(arg) == out:
                self._add(arg, out)
                self._union(arg, var)

    def _fields(self, expr: Any) -> list:
        from tvm import relax

        if isinstance(expr, relax.Var) and expr in self._tuples:
            expr = self._tuples[expr]
        if isinstance(expr, relax.Tuple):
            return [f for f in expr.fields if isinstance(f, relax.Var)]
        return []

    def _add(self, var: Any, channels: int) -> None:
        if var not in self._channels:
            self._channels[var] = channels
            self._parent[var] = var

    def _find(self, var: Any) -> Any:
        while not self._parent[var].same_as(var):  # path halving
            self._parent[var] = self._parent[self._parent[var]]
            var = self._parent[var]
        return var

    def _union(self, a: Any, b: Any) -> None:
        ra, rb = self._find(a), self._find(b)
        if not ra.same_as(rb):
            self._parent[ra] = rb


def channels_of(expr: Any) -> int | None:
    """The channel count (dim 1) of a static 4-D tensor expression, else None."""
    from tvm import relax

    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.ndim != 4 or ty.shape is None:
        return None
    try:
        return int(ty.shape[1])
    except (TypeError, AttributeError, IndexError):
        return None


def is_depthwise(call: Any) -> bool:
    """A conv2d with one input channel per group and as many groups as channels (input and output share a
    layout in layout.choose_layouts)."""
    weight = channels_of(call.args[1])
    groups = int(call.attrs.groups)
    return groups > 1 and weight == 1 and channels_of(call.args[0]) == groups
