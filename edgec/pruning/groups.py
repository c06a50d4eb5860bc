"""Channel dependency analysis: which channels of which weights must be pruned together.

Removing output channel ``k`` of a Conv is only valid if every tensor that carries that channel drops it too: the
BatchNormalization after it, the next Conv's input axis, the other branch of a residual ``Add`` (and so the whole
residual stage, as UCP prunes it), the squeeze-and-excitation ``Mul`` that rescales it, the Gemm behind
``GlobalAveragePool → Flatten``, and the slice of a ``Concat`` / ``Split`` it lands in. This module finds those
couplings once, on the ONNX graph, so that pruning is a plain index selection on every member afterwards.

Model: every activation tensor gets a *layout*: the channel axis, described as a list of segments, each a slice of
one *channel space* (a set of channels created by one Conv/Gemm, or a graph input). Ops that do not mix channels
(BN, activations, pooling) pass the layout through; elementwise ops with two activation operands *unify* their
spaces (union-find); Concat concatenates segment lists; Split cuts them. A :class:`ChannelGroup` is one union-find
class: its :class:`Member` list says which initializer axis (at which offset) indexes its channels. Anything the
analysis does not understand (an unknown op reading the tensor, a graph output, a shared weight used by two groups,
a grouped Conv reading a Concat) makes the groups involved unprunable, with the reason kept for the report: a
wrong "prunable" would silently change the model, a wrong "unprunable" only prunes less.

Grouped Conv (``group`` = G, 1 < G, not depthwise; ResNeXt): its input channels are G blocks of Cin/G, block b
read only by output block b through the *same* Cin/G weight columns (W is Cout×(Cin/G)×kh×kw), and its outputs
are G blocks of Cout/G. To keep the conv grouped with equal blocks and a dense weight, channel ``j`` of every
block is pruned together: the channel space is *folded* by G, and the group's prunable unit ``u`` is the G
channels ``u, u + C/G, u + 2C/G, ...`` (each unit removes one weight column, or one filter per output block; the
``group`` attribute stays G). A space read or written by grouped convs with different G is folded by their least
common multiple (which divides C, every G does). So a group of ``fold`` > 1 has ``size`` = C/fold units;
everything keyed by the group (kept indices, scores, ``size``) counts units, its :class:`Member` entries say
where each unit's ``blocks`` copies lie (``stride`` apart), its ``values`` and the MAC layers' layouts list one
(offset, C/fold) slice per block. A grouped Conv reading a Concat (blocks would couple channels of different
producers) blocks its input channels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

__all__ = ["Member", "ChannelGroup", "MacLayer", "Fixup", "Analysis", "analyze"]

# Ops that apply the same function to every channel (one input carrying channels, output has the same layout).
_CHANNELWISE_UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Identity", "Dropout", "Elu",
    "Selu", "Softplus", "Softsign", "Gelu", "Abs", "Neg", "Exp", "Sqrt", "Erf", "Mish", "Celu", "ThresholdedRelu",
    "Relu6", "Floor", "Ceil", "Round", "Reciprocal", "Log", "Sin", "Cos",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "Resize", "Upsample",
}
_ELEMENTWISE_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean"}
_RESHAPES = {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}


@dataclasses.dataclass(frozen=True)
class Member:
    """One initializer axis that indexes a group's channels: channel ``c`` is entries
    ``offset + c*inner ... offset + c*inner + inner - 1`` of ``axis`` (``inner`` > 1 behind a Flatten of C×H×W),
    and, in a folded group (behind a grouped Conv), also the same entries shifted by ``b*stride`` for every block
    ``b < blocks`` (see the module docstring).

    ``role``: ``out`` (a Conv/Gemm filter), ``dw`` (a depthwise filter), ``in`` (a consumer's input axis),
    ``bn_scale`` / ``bn_bias`` / ``bn_stat`` (BatchNormalization gamma, beta, mean and variance),
    ``param`` (bias, PRelu slope, elementwise constant).
    """

    value: str
    axis: int
    offset: int
    inner: int
    role: str
    node: str
    blocks: int = 1
    stride: int = 0

    def entries(self, units: np.ndarray | list[int]) -> np.ndarray:
        """Indices along ``axis`` of the given channels (units) of the group, every block and inner entry."""
        units = np.asarray(units, dtype=np.int64).reshape(-1)
        starts = (self.offset + np.arange(self.blocks)[:, None] * self.stride + units[None, :] * self.inner)
        return np.sort((starts[..., None] + np.arange(self.inner)).reshape(-1))


@dataclasses.dataclass(frozen=True)
class Segment:
    space: int
    length: int


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a tensor's channels come from: its channel ``axis`` is the concatenation of ``segments`` (each
    channel repeated ``inner`` times along the axis, > 1 only after flattening spatial dims into channels)."""

    segments: tuple[Segment, ...]
    axis: int = 1
    inner: int = 1

    @property
    def channels(self) -> int:
        return sum(s.length for s in self.segments)


@dataclasses.dataclass
class ChannelGroup:
    """Channels that must keep the same indices in every member (one union-find class of channel spaces)."""

    id: int
    name: str                    # first producer node (what a user names in a per-layer ratio file)
    size: int
    members: list[Member]
    values: list[tuple[str, int, int]]   # activations carrying the group: (tensor name, offset on axis 1, inner)
    producers: list[str]         # Conv/Gemm nodes whose output channels are this group
    prunable: bool
    reasons: list[str]
    fold: int = 1                # > 1 behind a grouped Conv: unit u = channels u + b*size, b < fold

    @property
    def channels(self) -> int:
        return self.size * self.fold

    def channel_indices(self, units: np.ndarray | list[int]) -> np.ndarray:
        """Channel indices (ascending, on the tensors carrying the group) of the given units."""
        units = np.asarray(units, dtype=np.int64).reshape(-1)
        return np.sort((units[None, :] + self.size * np.arange(self.fold)[:, None]).reshape(-1))

    def members_with(self, *roles: str) -> list[Member]:
        return [m for m in self.members if m.role in roles]


@dataclasses.dataclass
class MacLayer:
    """A Conv/Gemm/MatMul, for MAC estimates while choosing channels: MACs scale with the kept fraction of its
    output channels (``out``) and, unless depthwise, of its input channels (``inp``)."""

    node: str
    op: str
    macs: int
    out: tuple[tuple[int, int], ...]    # (group id, channels * inner) of the output layout
    inp: tuple[tuple[int, int], ...]    # same for the input; empty for depthwise (its MACs/output do not grow)


@dataclasses.dataclass
class Fixup:
    """A node attribute or shape constant that has to follow the new channel counts (not an initializer slice)."""

    kind: str          # "group" (depthwise Conv), "split" (sizes), "reshape" (target shape), "pad" (channels),
                       # "resize" (its output sizes)
    node: str
    layouts: tuple[tuple[tuple[int, int], ...], ...]   # per output (or the one input): (group id, length*inner);
    axis: int = 1                                      # for "pad": the channels padded before, after


@dataclasses.dataclass
class Analysis:
    groups: list[ChannelGroup]
    mac_layers: list[MacLayer]
    fixups: list[Fixup]
    shapes: dict[str, tuple[int, ...]]

    def group(self, gid: int) -> ChannelGroup:
        return self.groups[gid]

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]


# ------------------------------------------------------------------------------------------------- analysis

class _Builder:
    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {name: v for name, v in self.graph.initializers.items() if v.const_value is not None}
        self.shapes = _infer_shapes(model)
        self.parent: list[int] = []
        self.size: list[int] = []
        self.members: list[list[tuple[Member, int]]] = []   # (member, d): it covers 1/d of the space's channels
        self.fold: list[int] = []
        self.reasons: list[list[str]] = []
        self.producers: list[list[str]] = []
        self.layout: dict[str, Layout] = {}
        self.mac_raw: list[tuple[str, str, int, Layout | None, Layout | None]] = []
        self.fix_raw: list[tuple[str, str, tuple[Layout, ...]]] = []
        self.pieces: dict[int, list[Segment]] = {}   # spaces replaced by their pieces (split_space)
        self.zero_spaces: dict[int, str] = {}          # channels a Pad adds: prunable only joined to a producer

    # union-find over channel spaces
    def new_space(self, size: int, reason: str | None = None, producer: str | None = None) -> int:
        sid = len(self.parent)
        self.parent.append(sid)
        self.size.append(size)
        self.fold.append(1)
        self.members.append([])
        self.reasons.append([reason] if reason else [])
        self.producers.append([producer] if producer else [])
        return sid

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:  # cannot happen in a valid graph; refuse rather than guess
            self.block_space(ra, f"{where}: channel counts {self.size[ra]} and {self.size[rb]} do not match")
            self.block_space(rb, f"{where}: channel counts do not match")
            return
        self.parent[rb] = ra
        self.fold[ra] = math.lcm(self.fold[ra], self.fold[rb])

    def fold_space(self, s: int, blocks: int) -> None:
        """Channels ``j`` of the ``blocks`` equal blocks of space ``s`` must be pruned together (grouped Conv)."""
        r = self.find(s)
        self.fold[r] = math.lcm(self.fold[r], blocks)

    def block_space(self, s: int, reason: str) -> None:
        self.reasons[s].append(reason)

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            for seg in layout.segments:
                self.block_space(seg.space, reason)

    # layouts
    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.shapes.get(name)

    def get(self, value: ir.Value | None, node: ir.Node) -> Layout | None:
        """Layout of an activation; a fresh unprunable space for tensors we could not follow."""
        if value is None or value.name in self.inits:
            return None
        if value.name in self.layout:
            return self.layout[value.name]
        shape = self.shape(value.name)
        if shape is None or len(shape) < 2:
            return None
        producer = value.producer()
        why = f"'{value.name}' comes from {producer.op_type} '{producer.name}'" if producer else f"'{value.name}'"
        lay = Layout((Segment(self.new_space(shape[1], f"{why}, which the analysis does not follow"), shape[1]),))
        self.layout[value.name] = lay
        return lay

    def add_members(self, layout: Layout, value: str, axis: int, role: str, node: str,
                    inner: int | None = None, share: int = 1) -> None:
        """Members for every segment of ``layout``; ``share`` = d: the axis holds 1/d of each segment's channels
        (a grouped Conv's weight columns: one block of the input channels)."""
        inner = layout.inner if inner is None else inner
        offset = 0
        for seg in layout.segments:
            self.members[seg.space].append((Member(value, axis, offset, inner, role, node), share))
            offset += seg.length // share * inner

    def split_space(self, s: int, lengths: list[int]) -> bool:
        """Replace space ``s`` by consecutive pieces of ``lengths`` everywhere (its members, every layout), so
        that the pieces can join different groups: a Conv whose outputs are added to a channel-padded tensor
        (BlazeFace's residuals: ``Add(Pad(x, channels C → C'), conv)``) couples its first C channels with x and
        the rest with the zeros. Only a space nothing has joined yet (its own root, no other space under it,
        not folded, every member one copy per channel); returns whether it was split."""
        if self.find(s) != s or self.fold[s] != 1 or any(
                t != s and self.parent[t] == s for t in range(len(self.parent))) or any(
                share != 1 for _, share in self.members[s]):
            return False
        pieces, start = [], 0
        for length in lengths:
            piece = self.new_space(length)
            self.reasons[piece] = list(self.reasons[s])
            self.producers[piece] = list(self.producers[s])
            self.members[piece] = [(dataclasses.replace(m, offset=m.offset + start * m.inner), 1)
                                   for m, _ in self.members[s]]
            pieces.append(Segment(piece, length))
            start += length
        self.members[s], self.reasons[s], self.producers[s] = [], [], []
        self.pieces[s] = pieces
        self.layout = {name: self.expand(lay) for name, lay in self.layout.items()}
        self.mac_raw = [(n, op, macs, self.expand(o), self.expand(i)) for n, op, macs, o, i in self.mac_raw]
        self.fix_raw = [(kind, n, tuple(self.expand(lay) for lay in lays)) for kind, n, lays in self.fix_raw]
        return True

    def expand(self, lay: Layout | None) -> Layout | None:
        """``lay`` with every split space replaced by its pieces."""
        if lay is None or all(seg.space not in self.pieces for seg in lay.segments):
            return lay
        segs: list[Segment] = []
        todo = list(reversed(lay.segments))
        while todo:
            seg = todo.pop()
            if seg.space in self.pieces:
                todo.extend(reversed(self.pieces[seg.space]))
            else:
                segs.append(seg)
        return dataclasses.replace(lay, segments=tuple(segs))

    def cut(self, lay: Layout, positions: list[int]) -> Layout:
        """``lay`` with its segments cut at the channel ``positions``, where the spaces cut can be split
        (:meth:`split_space`); left as it is where one cannot."""
        start = 0
        for seg in lay.segments:
            inside = sorted({c - start for c in positions if start < c < start + seg.length})
            if inside:
                edges = [0, *inside, seg.length]
                self.split_space(seg.space, [hi - lo for lo, hi in zip(edges, edges[1:])])
            start += seg.length
        return self.expand(lay)

    def refine(self, a: Layout, b: Layout) -> tuple[Layout, Layout]:
        """``a`` and ``b`` (same channel count) cut at each other's segment boundaries (:meth:`cut`)."""
        cuts = sorted(set(np.cumsum([seg.length for seg in a.segments]).tolist())
                      | set(np.cumsum([seg.length for seg in b.segments]).tolist()))
        self.cut(a, cuts)
        self.cut(b, cuts)  # (may split a space ``a`` holds too)
        return self.expand(a), self.expand(b)

    def unify(self, a: Layout, b: Layout, where: str) -> Layout:
        if [s.length for s in a.segments] != [s.length for s in b.segments] and a.inner == b.inner == 1 \
                and a.axis == b.axis and a.channels == b.channels:
            a, b = self.refine(a, b)
        if [s.length for s in a.segments] == [s.length for s in b.segments] and a.inner == b.inner \
                and a.axis == b.axis:
            for sa, sb in zip(a.segments, b.segments):
                self.union(sa.space, sb.space, where)
            return a
        self.block(a, f"{where}: operands split their channels differently")
        self.block(b, f"{where}: operands split their channels differently")
        return a

    # ---------------------------------------------------------------------------------------------- walk
    def run(self) -> Analysis:
        for value in self.graph.inputs:
            shape = self.shape(value.name)
            if shape is not None and len(shape) >= 2:
                self.layout[value.name] = Layout((Segment(self.new_space(shape[1], f"graph input '{value.name}'"),
                                                          shape[1]),))
        for node in self.graph:
            self.visit(node)
        for value in self.graph.outputs:
            if value.name in self.layout:
                self.block(self.layout[value.name], f"'{value.name}' is a graph output")
        return self.finish()

    def visit(self, node: ir.Node) -> None:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        label = node.name or op
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            if op in _CHANNELWISE_UNARY:
                handler = self.op_unary
            elif op in _ELEMENTWISE_BINARY:
                handler = self.op_elementwise
            elif op in _RESHAPES:
                handler = self.op_reshape
        if handler is not None and handler(node, label) is not False:
            return
        for value in node.inputs:  # not understood: nothing it reads or writes may change channel count
            self.block(self.get(value, node), f"read by {op} '{label}', which the analysis does not follow")
        for out in node.outputs:
            self.get(out, node)

    def _weight(self, node: ir.Node, index: int) -> np.ndarray | None:
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None
        value = self.inits.get(node.inputs[index].name)
        return None if value is None else value.const_value.numpy()

    def op_Conv(self, node: ir.Node, label: str) -> bool:
        x = self.get(node.inputs[0], node)
        w = self._weight(node, 1)
        if x is None or w is None or x.axis != 1 or x.inner != 1:
            return False
        groups = node.attributes.get_int("group", 1)
        cout, cin = w.shape[0], w.shape[1] * groups
        wname = node.inputs[1].name
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        out_shape = self.shape(node.outputs[0].name)
        macs = math.prod(out_shape) * math.prod(w.shape[1:]) if out_shape else 0
        if groups == 1:
            self.add_members(x, wname, 1, "in", label)
            sid = self.new_space(cout, producer=label)
            out = Layout((Segment(sid, cout),))
            self.members[sid].append((Member(wname, 0, 0, 1, "out", label), 1))
            if has_bias:
                self.members[sid].append((Member(node.inputs[2].name, 0, 0, 1, "param", label), 1))
            self.mac_raw.append((label, "Conv", macs, out, x))
        elif groups == cin == cout and w.shape[1] == 1:  # depthwise: output channel k reads input channel k
            out = x
            self.add_members(x, wname, 0, "dw", label)
            if has_bias:
                self.add_members(x, node.inputs[2].name, 0, "param", label)
            self.fix_raw.append(("group", label, (x,)))
            self.mac_raw.append((label, "Conv", macs, out, None))
        elif cout % groups == 0 and x.channels == cin and len(x.segments) == 1:
            # grouped: channel j of every block is one unit (module docstring); W's columns are one block
            sid_in = x.segments[0].space
            self.fold_space(sid_in, groups)
            self.add_members(x, wname, 1, "in", label, share=groups)
            sid = self.new_space(cout, producer=label)
            self.fold_space(sid, groups)
            out = Layout((Segment(sid, cout),))
            self.members[sid].append((Member(wname, 0, 0, 1, "out", label), 1))
            if has_bias:
                self.members[sid].append((Member(node.inputs[2].name, 0, 0, 1, "param", label), 1))
            self.mac_raw.append((label, "Conv", macs, out, x))
        else:
            why = ("reads a concatenation (its blocks would couple channels of different producers)"
                   if len(x.segments) > 1 else "has channel counts that do not split into its groups")
            self.block(x, f"grouped Conv '{label}' (group={groups}) {why}")
            out = Layout((Segment(self.new_space(cout, f"output of grouped Conv '{label}' (group={groups})",
                                                 label), cout),))
            self.mac_raw.append((label, "Conv", macs, None, None))
        self.layout[node.outputs[0].name] = out
        return True

    def op_ConvTranspose(self, node: ir.Node, label: str) -> bool:
        """An upsampling conv (DBNet's and selfie segmentation's decoders): its weight is Cin × Cout × kh × kw,
        so the input channels index axis 0 and its output channels, a new space, axis 1. Grouped ones are left
        to block what they read."""
        x = self.get(node.inputs[0], node)
        w = self._weight(node, 1)
        if x is None or w is None or x.axis != 1 or x.inner != 1 or node.attributes.get_int("group", 1) != 1:
            return False
        wname, cout = node.inputs[1].name, int(w.shape[1])
        in_shape = self.shape(node.inputs[0].name)
        macs = math.prod(in_shape) * math.prod(w.shape[1:]) if in_shape else 0
        self.add_members(x, wname, 0, "in", label)
        sid = self.new_space(cout, producer=label)
        self.members[sid].append((Member(wname, 1, 0, 1, "out", label), 1))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            self.members[sid].append((Member(node.inputs[2].name, 0, 0, 1, "param", label), 1))
        out = Layout((Segment(sid, cout),))
        self.mac_raw.append((label, "ConvTranspose", macs, out, x))
        self.layout[node.outputs[0].name] = out
        return True

    def op_BatchNormalization(self, node: ir.Node, label: str) -> bool:
        x = self.get(node.inputs[0], node)
        if x is None or x.axis != 1 or x.inner != 1 or len(node.outputs) > 1 and any(
                o.uses() for o in node.outputs[1:]):
            return False
        for i, role in zip(range(1, 5), ("bn_scale", "bn_bias", "bn_stat", "bn_stat")):
            if node.inputs[i] is None or node.inputs[i].name not in self.inits:
                return False
            self.add_members(x, node.inputs[i].name, 0, role, label)
        self.layout[node.outputs[0].name] = x
        return True

    def op_unary(self, node: ir.Node, label: str) -> bool:
        x = self.get(node.inputs[0], node)
        if x is None:
            return False
        for extra in node.inputs[1:]:  # Clip's min/max, Resize's scales: must not carry channels
            if extra is not None and extra.name not in self.inits and self.get(extra, node) is not None:
                return False
        if node.op_type == "Resize" and len(node.inputs) > 2:
            scales = self._weight(node, 2)
            if scales is not None and scales.size and scales.reshape(-1)[x.axis] != 1:
                return False
            if len(node.inputs) > 3 and node.inputs[3] is not None:  # output sizes: the channel count among them
                sizes = self._weight(node, 3)
                if sizes is None or sizes.size <= x.axis or x.inner != 1 or "axes" in node.attributes:
                    return False
                self.fix_raw.append(("resize", label, (x,)))
        self.layout[node.outputs[0].name] = x
        return True

    def op_PRelu(self, node: ir.Node, label: str) -> bool:
        x = self.get(node.inputs[0], node)
        slope = self._weight(node, 1)
        if x is None or slope is None:
            return False
        self.layout[node.outputs[0].name] = x
        return self._broadcast_const(node, label, x, node.inputs[1].name, slope, self.shape(node.outputs[0].name))

    def _broadcast_const(self, node: ir.Node, label: str, out: Layout, name: str, const: np.ndarray,
                         out_shape: tuple[int, ...] | None) -> bool:
        """A constant operand of an elementwise op: a member if it has a channel axis, else nothing to do."""
        if out_shape is None:
            return False
        axis = out.axis - (len(out_shape) - const.ndim)  # numpy broadcasting aligns trailing dims
        if axis < 0 or const.shape[axis] == 1:
            return True
        if const.shape[axis] != out.channels * out.inner:
            return False
        self.add_members(out, name, axis, "param", label)
        return True

    def op_elementwise(self, node: ir.Node, label: str) -> bool:
        out_shape = self.shape(node.outputs[0].name)
        if out_shape is None or len(out_shape) < 2:
            return False
        acts = [v for v in node.inputs if v is not None and v.name not in self.inits]
        layouts = []
        for v in acts:
            shape = self.shape(v.name)
            if shape is None:
                return False
            if len(shape) != len(out_shape):
                if math.prod(shape) == 1:
                    continue  # a scalar computed at run time
                return False
            if shape[1] == 1 and out_shape[1] != 1:
                continue  # broadcast along channels: does not couple them
            lay = self.get(v, node)
            if lay is None:
                return False
            layouts.append(lay)
        if not layouts:
            return False
        out = layouts[0]
        for lay in layouts[1:]:
            out = self.unify(out, lay, f"{node.op_type} '{label}'")
        for v in node.inputs:
            if v is not None and v.name in self.inits:
                if not self._broadcast_const(node, label, out, v.name, self.inits[v.name].const_value.numpy(),
                                             out_shape):
                    return False
        self.layout[node.outputs[0].name] = out
        return True

    def op_Concat(self, node: ir.Node, label: str) -> bool:
        out_shape = self.shape(node.outputs[0].name)
        if out_shape is None:
            return False
        axis = node.attributes.get_int("axis", 0) % len(out_shape)
        lays = [self.get(v, node) for v in node.inputs]
        if any(lay is None for lay in lays):
            return False
        if axis == lays[0].axis:
            if any(lay.inner != 1 or lay.axis != axis for lay in lays):
                return False
            self.layout[node.outputs[0].name] = Layout(tuple(s for lay in lays for s in lay.segments), axis)
            return True
        out = lays[0]
        for lay in lays[1:]:
            out = self.unify(out, lay, f"Concat '{label}'")
        self.layout[node.outputs[0].name] = out
        return True

    def op_Split(self, node: ir.Node, label: str) -> bool:
        x = self.get(node.inputs[0], node)
        shape = self.shape(node.inputs[0].name)
        if x is None or shape is None:
            return False
        axis = node.attributes.get_int("axis", 0) % len(shape)
        if axis != x.axis:
            for out in node.outputs:
                self.layout[out.name] = x
            return True
        if x.inner != 1:
            return False
        sizes = [self.shape(o.name)[axis] if self.shape(o.name) else None for o in node.outputs]
        if None in sizes:
            return False
        x = self.cut(x, np.cumsum(sizes)[:-1].tolist())  # a Split inside a conv's channels: split its space
        outs, start = [], 0
        bounds = np.cumsum([0] + [s.length for s in x.segments]).tolist()
        for size in sizes:
            end = start + size
            if start not in bounds or end not in bounds:
                self.block(x, f"Split '{label}' cuts a channel group in two")
                return False
            i, j = bounds.index(start), bounds.index(end)
            outs.append(Layout(x.segments[i:j], axis))
            start = end
        for out, lay in zip(node.outputs, outs):
            self.layout[out.name] = lay
        self.fix_raw.append(("split", label, tuple(outs)))
        return True

    def op_reshape(self, node: ir.Node, label: str) -> bool:
        x = self.get(node.inputs[0], node)
        si, so = self.shape(node.inputs[0].name), self.shape(node.outputs[0].name)
        if x is None or si is None or so is None or x.axis != 1 or len(so) < 2 or si[0] != so[0]:
            return False
        if so[1] == si[1] and math.prod(si[2:]) == math.prod(so[2:]) and (
                len(so) == 2 or math.prod(so[2:]) == 1 or so[2:] == si[2:]):
            out = x
        elif len(so) == 2 and so[1] == si[1] * math.prod(si[2:]):
            out = Layout(x.segments, 1, x.inner * math.prod(si[2:]))
        else:
            return False
        if node.op_type == "Reshape":
            target = self._weight(node, 1)
            if target is None:
                return False
            self.fix_raw.append(("reshape", label, (out,)))
        self.layout[node.outputs[0].name] = out
        return True

    def op_ReduceMean(self, node: ir.Node, label: str) -> bool:
        x = self.get(node.inputs[0], node)
        shape = self.shape(node.inputs[0].name)
        if x is None or shape is None:
            return False
        axes = node.attributes.get_ints("axes", None)
        if axes is None and len(node.inputs) > 1:
            w = self._weight(node, 1)
            axes = None if w is None else w.reshape(-1).tolist()
        if axes is None:
            return False
        axes = [a % len(shape) for a in axes]
        keep = node.attributes.get_int("keepdims", 1)
        if x.axis in axes or (not keep and any(a < x.axis for a in axes)):
            return False
        self.layout[node.outputs[0].name] = x
        return True

    op_ReduceMax = op_ReduceMin = op_ReduceSum = op_ReduceMean

    def op_Pad(self, node: ir.Node, label: str) -> bool:
        """Spatial padding passes the layout through. Zero padding of the channel axis (BlazeFace widens its
        residual stages so: ``Add(Pad(x, C → C'), conv)``) adds a space of zero channels on each padded side;
        they join whatever they are added to or read by, and the pad amounts follow the pruning (a "pad"
        fixup)."""
        x = self.get(node.inputs[0], node)
        pads = self._weight(node, 1) if len(node.inputs) > 1 else None
        if x is None or pads is None:
            return False
        pads = pads.reshape(-1)
        rank = pads.size // 2
        before, after = int(pads[x.axis]), int(pads[rank + x.axis])
        if before == 0 == after:
            self.layout[node.outputs[0].name] = x
            return True
        value = self._weight(node, 2) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(1)
        axes = node.inputs[3] if len(node.inputs) > 3 else None
        if node.attributes.get_string("mode", "constant") != "constant" or value is None or np.any(value != 0) \
                or axes is not None or x.inner != 1 or before < 0 or after < 0:
            return False
        zeros = f"zero channels Pad '{label}' adds"
        head = (Segment(self.new_space(before), before),) if before else ()
        tail = (Segment(self.new_space(after), after),) if after else ()
        for seg in head + tail:
            self.zero_spaces[seg.space] = zeros
        self.layout[node.outputs[0].name] = Layout(head + x.segments + tail, x.axis)
        self.fix_raw.append(("pad", label, (Layout(head, x.axis), Layout(tail, x.axis))))
        return True

    def op_Gemm(self, node: ir.Node, label: str) -> bool:
        a = self.get(node.inputs[0], node)
        b = self._weight(node, 1)
        if a is None or b is None or node.attributes.get_int("transA", 0) or a.axis != 1:
            return False
        trans_b = node.attributes.get_int("transB", 0)
        bname = node.inputs[1].name
        self.add_members(a, bname, 1 if trans_b else 0, "in", label)
        n_out = b.shape[0] if trans_b else b.shape[1]
        sid = self.new_space(n_out, producer=label)
        self.members[sid].append((Member(bname, 0 if trans_b else 1, 0, 1, "out", label), 1))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = self._weight(node, 2)
            if c is None:
                return False
            if c.shape and c.shape[-1] == n_out and n_out > 1:
                self.members[sid].append((Member(node.inputs[2].name, c.ndim - 1, 0, 1, "param", label), 1))
        out = Layout((Segment(sid, n_out),))
        sa = self.shape(node.inputs[0].name)
        self.mac_raw.append((label, "Gemm", (sa[0] if sa else 1) * n_out * b.size // n_out, out, a))
        self.layout[node.outputs[0].name] = out
        return True

    def op_MatMul(self, node: ir.Node, label: str) -> bool:
        a = self.get(node.inputs[0], node)
        b = self._weight(node, 1)
        sa = self.shape(node.inputs[0].name)
        if a is None or b is None or b.ndim != 2 or sa is None or len(sa) != 2 or a.axis != 1:
            return False
        self.add_members(a, node.inputs[1].name, 0, "in", label)
        sid = self.new_space(b.shape[1], producer=label)
        self.members[sid].append((Member(node.inputs[1].name, 1, 0, 1, "out", label), 1))
        out = Layout((Segment(sid, b.shape[1]),))
        self.mac_raw.append((label, "MatMul", sa[0] * b.size, out, a))
        self.layout[node.outputs[0].name] = out
        return True

    # ---------------------------------------------------------------------------------------------- finish
    def finish(self) -> Analysis:
        first: dict[int, int] = {}
        for s in range(len(self.parent)):  # groups numbered in graph order (by their first space)
            if s not in self.pieces:       # a split space lives on as its pieces
                first.setdefault(self.find(s), s)
        roots = sorted(first, key=first.get)
        gid_of = {r: i for i, r in enumerate(roots)}
        fold = {r: self.fold[r] for r in roots}
        units = {r: self.size[r] // fold[r] for r in roots}   # the group's size: channels, or units when folded
        members: dict[int, list[Member]] = {r: [] for r in roots}
        reasons: dict[int, list[str]] = {r: [] for r in roots}
        producers: dict[int, list[str]] = {r: [] for r in roots}
        for s in range(len(self.parent)):
            if s in self.pieces:
                continue
            r = self.find(s)
            for m, share in self.members[s]:
                blocks = fold[r] // share           # the member's copies of each unit, one per block it holds
                members[r].append(m if blocks == 1 else dataclasses.replace(
                    m, blocks=blocks, stride=units[r] * m.inner))
            reasons[r].extend(self.reasons[s])
            producers[r].extend(self.producers[s])
        for s, why in self.zero_spaces.items():
            r = self.find(s)
            if not producers[r]:
                reasons[r].append(f"{why}, joined to no Conv/Gemm output")
        for r in roots:
            if fold[r] > 1 and units[r] == 1 and self.size[r] > 1:
                reasons[r].append(f"one channel per group of a grouped Conv (folded by {fold[r]}): pruning it "
                                  "would remove whole conv groups")
        # Two groups indexing overlapping entries of one initializer axis (a weight shared by layers that are
        # not coupled) cannot both be honoured: leave both alone. Disjoint slices (a Concat's consumer) are fine.
        # (A folded member's blocks tile one contiguous range.)
        spans: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        for r in roots:
            for m in dict.fromkeys(members[r]):
                spans.setdefault((m.value, m.axis), []).append(
                    (m.offset, m.offset + units[r] * m.blocks * m.inner, r))
        for (value, axis), items in spans.items():
            for i, (lo, hi, r) in enumerate(items):
                for lo2, hi2, r2 in items[i + 1:]:
                    if r2 != r and lo < hi2 and lo2 < hi:
                        for blocked in (r, r2):
                            reasons[blocked].append(f"weight '{value}' axis {axis} is shared with another "
                                                    "channel group")
        values: dict[int, list[tuple[str, int, int]]] = {r: [] for r in roots}
        for name, lay in self.layout.items():
            if lay.axis != 1:
                continue
            offset = 0
            for seg in lay.segments:
                r = self.find(seg.space)
                for b in range(fold[r]):   # one slice per block: entry c of each slice is unit c
                    values[r].append((name, offset + b * units[r] * lay.inner, lay.inner))
                offset += seg.length * lay.inner
        groups = []
        for r in roots:
            uniq = list(dict.fromkeys(members[r]))
            name = producers[r][0] if producers[r] else f"group{gid_of[r]}"
            groups.append(ChannelGroup(gid_of[r], name, units[r], uniq, values[r], producers[r],
                                       prunable=not reasons[r] and units[r] > 1, reasons=list(
                                           dict.fromkeys(reasons[r])), fold=fold[r]))

        def ids(lay: Layout | None) -> tuple[tuple[int, int], ...]:
            if lay is None:
                return ()
            out = []
            for s in lay.segments:
                r = self.find(s.space)
                out += [(gid_of[r], units[r] * lay.inner)] * fold[r]
            return tuple(out)

        macs = [MacLayer(n, op, m, ids(o), ids(i)) for n, op, m, o, i in self.mac_raw]
        fixups = [Fixup(kind, n, tuple(ids(lay) for lay in lays), lays[0].axis if lays and lays[0] else 1)
                  for kind, n, lays in self.fix_raw]
        return Analysis(groups, macs, fixups, self.shapes)


def _infer_shapes(model: ir.Model) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor (ONNX shape inference on a serialized copy); unknown dims are left out."""
    proto = ir.serde.serialize_model(model)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:
        pass
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    for init in proto.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def analyze(model: ir.Model) -> Analysis:
    """Find the channel groups of ``model`` (not modified). See the module docstring for the rules."""
    return _Builder(model).run()


def describe(analysis: Analysis) -> list[dict[str, Any]]:
    """JSON-able summary of the groups (for reports and debugging)."""
    return [{"group": g.id, "name": g.name, "channels": g.size, "prunable": g.prunable, "producers": g.producers,
             "members": len(g.members), **({"why_not": g.reasons} if g.reasons else {})} for g in analysis.groups]
