"""Shared by the ``substitute_binary`` and ``substitute_adder`` passes: which layers convert, which are skipped,
and how an edgec-op node replaces a standard one in an onnx_ir graph.

A layer is a Conv (2-D, group 1, explicit padding, constant weight) and, for binary, a Gemm or 2-D MatMul with a
constant weight. ``skip`` names layers to keep in float: ``first`` and ``last`` (the first and last convertible
layer in graph order, where BNN and AdderNet practice keeps full precision) or node names; a name that is not a
convertible layer is an error, as is a model with nothing left to convert.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.ops.functions import CONV_ATTRS, DOMAIN, DOMAIN_VERSION, FUNCTIONS, MIN_OPSET


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A convertible node and its float weight in the edgec op's layout ([O, C, kh, kw] or [O, K])."""

    node: ir.Node
    weight: np.ndarray
    bias: np.ndarray | None


def parse_skip(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"first,last"`` or a list of names → a tuple of names (empty entries dropped)."""
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(s.strip() for s in items if s.strip())


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def conv_layer(node: ir.Node) -> Layer | None:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return None
    w = _const(node.inputs[1])
    bias = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if (w is None or w.ndim != 4 or w.dtype != np.float32 or _attr(node, "group", 1) != 1
            or _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")
            or (len(node.inputs) > 2 and node.inputs[2] is not None and bias is None)):
        return None
    return Layer(node, w, bias)


def dense_layer(node: ir.Node) -> Layer | None:
    """Gemm (transA 0, alpha = beta = 1) or MatMul of a rank-2 input by a constant [K, O] weight."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gemm", "MatMul"):
        return None
    w = _const(node.inputs[1])
    x_shape = node.inputs[0].shape
    if w is None or w.ndim != 2 or w.dtype != np.float32 or x_shape is None or len(x_shape) != 2:
        return None
    if node.op_type == "MatMul":
        return Layer(node, np.ascontiguousarray(w.T), None)
    if (_attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0):
        return None
    bias = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if len(node.inputs) > 2 and node.inputs[2] is not None and (bias is None or bias.size != w.shape[
            0 if _attr(node, "transB", 0) else 1]):
        return None
    weight = w if _attr(node, "transB", 0) else np.ascontiguousarray(w.T)
    return Layer(node, weight, None if bias is None else bias.reshape(-1))


def select_layers(model: ir.Model, layers: list[Layer], skip: tuple[str, ...], kind: str) -> list[Layer]:
    """``layers`` less the skipped ones; EdgecError for unknown skip names or nothing to convert."""
    if not layers:
        raise EdgecError(f"the model has no layer that converts to {kind} (a 2-D Conv with group 1 and a constant "
                         "float weight" + (", or a Gemm/MatMul with one" if kind == "binary" else "") + ")",
                         "substitute a model with such layers")
    names = [layer.node.name for layer in layers]
    unknown = [s for s in skip if s not in ("first", "last") and s not in names]
    if unknown:
        raise EdgecError(f"--skip names {', '.join(repr(u) for u in unknown)}, which is not a convertible layer",
                         f"use first, last or one of: {', '.join(names)}")
    dropped = set()
    if "first" in skip:
        dropped.add(0)
    if "last" in skip:
        dropped.add(len(layers) - 1)
    dropped |= {i for i, n in enumerate(names) if n in skip}
    kept = [layer for i, layer in enumerate(layers) if i not in dropped]
    if not kept:
        raise EdgecError(f"--skip {','.join(skip)} leaves no layer to convert to {kind}",
                         "skip fewer layers")
    return kept


def require_opset(model: ir.Model) -> None:
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if version < MIN_OPSET:
        raise EdgecError(f"the model uses ONNX opset {version}; edgec's binary/adder functions need ≥ {MIN_OPSET}",
                         "re-export the model with opset_version=17 (or upgrade it with onnx.version_converter)")


def constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer named after ``name`` (made unique)."""
    taken = set(graph.initializers)
    unique, i = name, 1
    while unique in taken:
        unique, i = f"{name}_{i}", i + 1
    value = ir.Value(name=unique, const_value=ir.tensor(np.ascontiguousarray(array), name=unique),
                     shape=ir.Shape(list(array.shape)), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


def replace_with(model: ir.Model, layer: Layer, op_type: str, inputs: list[ir.Value],
                 conv_attrs: bool) -> ir.Node:
    """Put an ``edgec::op_type`` node where ``layer.node`` was; the model gets the op's function and opset."""
    from edgec.passes.base import replace_value  # here: edgec.passes imports this module

    old = layer.node
    attrs = [ir.AttrInt64s(a, list(old.attributes[a].value)) for a in CONV_ATTRS
             if conv_attrs and a in old.attributes]
    new = ir.Node(DOMAIN, op_type, [old.inputs[0], *inputs], attrs, name=old.name, num_outputs=1)
    out = new.outputs[0]
    out.shape, out.type = old.outputs[0].shape, old.outputs[0].type
    graph = model.graph
    graph.insert_before(old, new)
    replace_value(graph, old.outputs[0], out)
    if out.name is None:
        out.name = old.outputs[0].name
        old.outputs[0].name = None
    graph.remove(old, safe=True)
    add_function(model, op_type)
    return new


def add_function(model: ir.Model, op_type: str) -> None:
    model.opset_imports.setdefault(DOMAIN, DOMAIN_VERSION)
    if (DOMAIN, op_type, "") not in model.functions:
        version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
        model.functions[(DOMAIN, op_type, "")] = ir.serde.deserialize_function(FUNCTIONS[op_type](version))


def drop_unused_initializers(model: ir.Model) -> None:
    for name, value in list(model.graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del model.graph.initializers[name]
