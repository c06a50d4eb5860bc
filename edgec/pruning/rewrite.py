"""Apply a channel selection: slice every member initializer of every pruned group, fix dependent attributes.

All slicing goes through one boolean mask per (initializer, axis), so a weight that is a member of a group twice
(a consumer reading a Concat of the same group, say) is cut once, consistently. In a group folded by a grouped
Conv (see :mod:`edgec.pruning.groups`) a dropped unit clears its entry in every block of every member: a grouped
Conv's weight (Cout×(Cin/G)×kh×kw) loses the same columns for all its groups and the same number of filters in
each output group, so its ``group`` attribute stays G and nothing else changes (a depthwise Conv's ``group``
follows its channel count). Activation shapes recorded in the graph are stale afterwards, so they are dropped
(graph inputs and outputs keep theirs: their channel counts never change, the analysis makes such groups
unprunable) and re-inferred.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.pruning.groups import Analysis

__all__ = ["apply_selection"]


def apply_selection(model: ir.Model, analysis: Analysis, keep: dict[int, np.ndarray]) -> int:
    """Cut ``model`` in place to the kept channels (``keep[group id]``: ascending indices); returns the number of
    initializers rewritten."""
    inits = model.graph.initializers
    masks: dict[tuple[str, int], np.ndarray] = {}
    for gid, idx in keep.items():
        group = analysis.groups[gid]
        drop = np.setdiff1d(np.arange(group.size), idx)
        for m in group.members:
            dim = inits[m.value].const_value.shape[m.axis]
            mask = masks.setdefault((m.value, m.axis), np.ones(dim, dtype=bool))
            mask[m.entries(drop)] = False   # every block's copy of a dropped unit (folded groups), every entry
    by_value: dict[str, list[tuple[int, np.ndarray]]] = {}
    for (name, axis), mask in masks.items():
        by_value.setdefault(name, []).append((axis, mask))
    for name, cuts in by_value.items():
        value = inits[name]
        array = value.const_value.numpy()
        for axis, mask in cuts:
            array = np.compress(mask, array, axis=axis)
        _set_initializer(value, array)

    size = {g.id: g.size for g in analysis.groups}
    kept = {gid: len(idx) for gid, idx in keep.items()}

    def channels(layout: tuple[tuple[int, int], ...]) -> int:  # entries: (group, length*inner) of whole groups
        return sum(n // size[g] * kept.get(g, size[g]) for g, n in layout)

    nodes = {node.name: node for node in model.graph}
    for fix in analysis.fixups:
        node = nodes[fix.node]
        if fix.kind == "group":
            node.attributes["group"] = ir.AttrInt64("group", channels(fix.layouts[0]))
        elif fix.kind == "split":
            sizes = np.array([channels(lay) for lay in fix.layouts], dtype=np.int64)
            _set_split(model, node, sizes)
        elif fix.kind == "pad":  # zero channels padded on: as many as are kept of the groups they joined
            pads = node.inputs[1].const_value.numpy().copy()
            rank, axis = pads.size // 2, int(fix.axis)
            pads[axis], pads[rank + axis] = channels(fix.layouts[0]), channels(fix.layouts[1])
            _replace_constant(model, node, 1, pads)
        elif fix.kind == "resize":  # a Resize given its output sizes: the channels among them
            sizes = node.inputs[3].const_value.numpy().copy()
            sizes[int(fix.axis)] = channels(fix.layouts[0])
            _replace_constant(model, node, 3, sizes)
        elif fix.kind == "reshape":
            target = node.inputs[1].const_value.numpy().copy()
            if target[1] != -1:
                target[1] = channels(fix.layouts[0])
                _replace_constant(model, node, 1, target)
    _refresh_shapes(model)
    return len(by_value)


def _replace_constant(model: ir.Model, node: ir.Node, index: int, array: np.ndarray) -> None:
    """Input ``index`` of ``node`` (an int64 constant, perhaps shared with other nodes) replaced by ``array``."""
    fresh = ir.Value(name=f"{node.inputs[index].name}_pruned_{node.name}", const_value=ir.tensor(array))
    fresh.shape, fresh.dtype = ir.Shape(array.shape), ir.DataType.INT64
    model.graph.register_initializer(fresh)
    node.replace_input_with(index, fresh)


def _set_initializer(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=value.name)
    value.shape = ir.Shape(array.shape)


def _set_split(model: ir.Model, node: ir.Node, sizes: np.ndarray) -> None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:  # (split sizes shared by several Splits: one each)
        _replace_constant(model, node, 1, sizes)
    elif model.opset_imports.get("", 17) >= 13:
        if "num_outputs" in node.attributes:
            del node.attributes["num_outputs"]
        name = f"{node.name or 'split'}_sizes_pruned"
        fresh = ir.Value(name=name, const_value=ir.tensor(sizes))
        fresh.shape, fresh.dtype = ir.Shape(sizes.shape), ir.DataType.INT64
        model.graph.register_initializer(fresh)
        if len(node.inputs) < 2:
            node.resize_inputs(2)
        node.replace_input_with(1, fresh)
    else:
        node.attributes["split"] = ir.AttrInt64s("split", sizes.tolist())


def _refresh_shapes(model: ir.Model) -> None:
    outputs = {v.name for v in model.graph.outputs}
    for node in model.graph:
        for value in node.outputs:
            if value.name not in outputs:
                value.shape = None
    try:
        from onnx_ir.passes.common import ShapeInferencePass

        ShapeInferencePass()(model)
    except Exception:  # shapes are an optimisation hint for later passes; the graph is valid without them
        pass
