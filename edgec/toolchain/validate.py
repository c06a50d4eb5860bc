"""Check an ONNX model right after it is read, before any pass or TVM sees it, with one-line errors.

Why: a damaged or hand-edited graph (a cycle, a name produced twice, an input nobody provides, opset 99, an
initializer that declares 10¹⁰ values and holds 16 bytes, external data outside the model's folder) otherwise
surfaces as a traceback deep in onnx_ir, onnxscript or after a full TVM build — or as gigabytes allocated for a
tensor that does not exist. edgec's own checks come first because their messages name the node and the fix;
``onnx.checker`` (full check: strict shape inference) runs after them for everything else the spec requires.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto

from edgec.errors import EdgecError
from edgec.limits import Limits

DEFAULT_DOMAINS = ("", "ai.onnx")
REEXPORT = "re-export the model; the file may be damaged or hand-edited"

# Bits per value of the element types whose size numpy's dtype does not give.
_SUB_BYTE_BITS = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4,
                  TensorProto.INT2: 2, TensorProto.UINT2: 2}
# Typed field holding a tensor's values when it has no raw_data, and how many values one entry holds
# (complex numbers take two entries; 4-bit values are packed two to an int32, 2-bit ones four).
_FIELD = {TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 0.5),
          TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 0.5),
          TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
          TensorProto.UINT64: ("uint64_data", 1), TensorProto.INT4: ("int32_data", 2),
          TensorProto.UINT4: ("int32_data", 2), TensorProto.INT2: ("int32_data", 4),
          TensorProto.UINT2: ("int32_data", 4)}
for _t in (TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT8, TensorProto.UINT16,
           TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN,
           TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ):
    _FIELD[_t] = ("int32_data", 1)


def element_bits(elem_type: int) -> int | None:
    """Bits one value of an ONNX element type takes, None for strings and unknown types."""
    if elem_type in _SUB_BYTE_BITS:
        return _SUB_BYTE_BITS[elem_type]
    if elem_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        return 8 * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def all_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, TensorProto]]:
    """Every tensor stored in a graph: initializers and Constant-like attributes, in subgraphs too, with a label
    a message can name."""
    for t in graph.initializer:
        yield f"initializer '{t.name}'", t
    for node in graph.node:
        for attr in node.attribute:
            label = f"attribute '{attr.name}' of node '{node.name or node.op_type}' ({node.op_type})"
            if attr.type == onnx.AttributeProto.TENSOR:
                yield label, attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from ((label, t) for t in attr.tensors)
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_tensors(g)


def _external_info(tensor: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Every external-data file lies inside the model's folder, exists and is long enough.

    Why edgec checks this itself: onnx refuses an escaping path only in its checker, with a traceback, and a missing
    file surfaces as a bare FileNotFoundError. edgec reads nothing outside the folder the model is in.
    """
    root = folder.resolve()
    for label, tensor in all_tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = _external_info(tensor)
        location = info.get("location", "")
        if not location:
            raise EdgecError(f"{label} is stored as external data without a file name", REEXPORT)
        target = (root / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(root):
            raise EdgecError(f"external data of {label} points outside the model's folder ({location})",
                             "keep the .data files in the .onnx file's folder; edgec reads nothing outside it")
        if not target.is_file():
            raise EdgecError(f"external data file {location} of {label} is missing",
                             "keep the .data files next to the .onnx file they belong to")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise EdgecError(f"external data of {label} has an unreadable offset or length", REEXPORT) from None
        size = target.stat().st_size
        if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
            raise EdgecError(f"external data file {location} is shorter than {label} says "
                             f"({size} bytes, it reads from offset {offset}" +
                             (f", {length} bytes)" if length is not None else ")"),
                             "copy the complete .data file next to the model")


def _declared_shape(label: str, tensor: TensorProto) -> list[int]:
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise EdgecError(f"{label} has a negative dimension {tuple(dims)}", REEXPORT)
    return dims


def check_tensor_data(model: onnx.ModelProto, limits: Limits) -> None:
    """Each stored tensor holds as much data as its dims declare, and fits the size bound.

    Why: a tensor that declares 10¹⁰ values but holds 16 bytes is reported as 37 GiB of parameters and would be
    allocated as such by anything that materialises it.
    """
    known_types = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
    for label, tensor in all_tensors(model.graph):
        if tensor.data_type not in known_types:
            raise EdgecError(f"{label} has an unknown element type ({tensor.data_type})", REEXPORT)
        dims = _declared_shape(label, tensor)
        numel = 1
        for d in dims:
            numel *= d
        bits = element_bits(tensor.data_type)
        if bits is None:
            continue
        if tensor.data_location == TensorProto.EXTERNAL:
            length = _external_info(tensor).get("length")
            held = int(length) if length is not None and length.isdigit() else None
            unit = "bytes"
            expected = -(-numel * bits // 8)
        elif tensor.HasField("raw_data") or tensor.raw_data:
            held, unit, expected = len(tensor.raw_data), "bytes", -(-numel * bits // 8)
        elif tensor.data_type in _FIELD:
            field, per_entry = _FIELD[tensor.data_type]
            held, unit = len(getattr(tensor, field)), "values"
            expected = int(-(-numel // per_entry)) if per_entry >= 1 else numel * 2
        else:
            held, unit, expected = None, "", 0
        if held is not None and held != expected and not (held == 0 and numel == 0):
            raise EdgecError(f"{label} declares shape ({', '.join(map(str, dims))}) = {numel} values, "
                             f"which need {expected} {unit}, but holds {held}", REEXPORT)
        limits.check(label, dims, bits / 8)


def check_opsets(model: onnx.ModelProto) -> None:
    """The default-domain opset is one this onnx knows; every default-domain op exists in it."""
    newest = onnx.defs.onnx_opset_version()
    version = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if version is None:
        if any(n.domain in DEFAULT_DOMAINS for n in model.graph.node):
            raise EdgecError("the model imports no ONNX opset but uses ONNX ops", REEXPORT)
        return
    if version > newest or version < 1:
        raise EdgecError(f"the model needs ONNX opset {version}; edgec reads opsets 1 to {newest}",
                         "re-export it with an older opset, e.g. torch.onnx.export(..., opset_version=17)")
    for node in _nodes_everywhere(model.graph):
        if node.domain in DEFAULT_DOMAINS and not onnx.defs.has(node.op_type, version, ""):
            what = "defines no op" if not onnx.defs.has(node.op_type, "") else "has no op"
            raise EdgecError(f"node '{node.name or node.op_type}' uses op '{node.op_type}', but ONNX opset "
                             f"{version} {what} '{node.op_type}'",
                             "re-export the model; a custom op needs its own domain and is not supported")


def _nodes_everywhere(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes_everywhere(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes_everywhere(g)


def _node_label(node: onnx.NodeProto) -> str:
    return f"node '{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"


def check_graph_structure(model: onnx.ModelProto) -> None:
    """Names are produced once, every input is provided, the graph is acyclic; nodes are put in topological
    order when they are not (the format requires it, exporters sometimes forget).

    Only the main graph: a subgraph may read names of the graph around it, which the onnx checker handles.
    """
    graph = model.graph
    provided: dict[str, str] = {}
    for value in graph.input:
        if value.name in provided:
            raise EdgecError(f"graph input '{value.name}' is listed twice", REEXPORT)
        provided[value.name] = "a graph input"
    for tensor in graph.initializer:
        if tensor.name in provided and provided[tensor.name] != "a graph input":
            raise EdgecError(f"initializer '{tensor.name}' is stored twice", REEXPORT)
        provided[tensor.name] = "an initializer"
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue
            if name in provided or name in producer:
                first = provided.get(name) or _node_label(graph.node[producer[name]])
                raise EdgecError(f"'{name}' is produced twice: by {first} and by {_node_label(node)}", REEXPORT)
            producer[name] = i
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in provided and name not in producer:
                raise EdgecError(f"{_node_label(node)} reads '{name}', which no node, input or initializer "
                                 f"provides", REEXPORT)
    seen_outputs: set[str] = set()
    for value in graph.output:
        if value.name in seen_outputs:
            raise EdgecError(f"graph output '{value.name}' is listed twice", REEXPORT)
        seen_outputs.add(value.name)
        if value.name not in provided and value.name not in producer:
            raise EdgecError(f"graph output '{value.name}' is produced by no node", REEXPORT)
    order = _topological_order(graph, producer)
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        copies = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(copies, nodes):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)


def _topological_order(graph: onnx.GraphProto, producer: dict[str, int]) -> list[int]:
    """Kahn's algorithm, stable (keeps the file's order where it is valid); a cycle is an error naming a node
    on it."""
    deps = [{producer[n] for n in node.input if n in producer} for node in graph.node]
    users: dict[int, list[int]] = collections.defaultdict(list)
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    remaining = [len(d) for d in deps]
    ready = collections.deque(i for i, r in enumerate(remaining) if r == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    if len(order) != len(graph.node):
        stuck = next(i for i, r in enumerate(remaining) if r > 0)
        raise EdgecError(f"the graph has a cycle through {_node_label(graph.node[stuck])}",
                         "an ONNX graph must be acyclic; " + REEXPORT)
    return order


def _lacks_shape(value: onnx.ValueInfoProto) -> bool:
    return value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape")


def _with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs/outputs carry the shapes inference finds, without unshaped annotations.

    Why: onnx's checker requires a shape on every graph input and output, onnxruntime does not, and exporters
    and hand-built graphs often leave outputs unshaped; a model onnxruntime runs is not refused for that.
    """
    graph = model.graph
    if not any(_lacks_shape(v) for v in (*graph.input, *graph.output, *graph.value_info)):
        return model
    try:
        copy = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # inference trips over what the checker reports precisely below
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
    kept = [v for v in copy.graph.value_info if not _lacks_shape(v)]
    del copy.graph.value_info[:]
    copy.graph.value_info.extend(kept)
    return copy


def _negative_dims_unknown(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose ``dim_value: -1`` dims (paddle2onnx's way of saying dynamic, which edgec reads as dynamic
    everywhere) are unknown dims, or the model itself when it has none: strict inference would otherwise compare
    an inferred 1 with -1 and refuse the model (a pruned PP-OCR classifier)."""
    values = lambda g: (*g.input, *g.output, *g.value_info)  # noqa: E731
    if not any(d.HasField("dim_value") and d.dim_value < 0 for v in values(model.graph)
               for d in v.type.tensor_type.shape.dim):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for v in values(copy.graph):
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.ClearField("dim_value")
    return copy


def run_checker(model: onnx.ModelProto, path: Path | None = None) -> None:
    """onnx's checker with strict shape inference, as one line naming what it found.

    A model over protobuf's 2 GB is checked from its file (onnx reads external data itself then)."""
    try:
        if model.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:
            onnx.checker.check_model(_with_inferred_shapes(_negative_dims_unknown(model)), full_check=True)
        elif path is not None:
            onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        line = _one_line(str(exc))
        if "Field 'shape' of 'type' is required but missing" in line:
            return  # an unshaped dynamic output inference could not fill: onnxruntime runs it
        raise EdgecError(f"the model is not valid ONNX: {line}", REEXPORT) from None


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[0] if lines else "(no detail)"
    # onnx's checker appends the whole offending NodeProto on later lines; its first line names the node.
    if "==>" in line:
        line = line.split("==>", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def validate_model(model: onnx.ModelProto, limits: Limits, path: Path | None = None) -> None:
    """All of the above, in the order whose messages are most precise. Sorts the nodes in place if needed."""
    check_opsets(model)
    check_tensor_data(model, limits)
    check_graph_structure(model)
    run_checker(model, path)


def check_conv_channels(model: ir.Model) -> None:
    """Each Conv's input has the channels its weights expect (C = W.shape[1] × group; ConvTranspose: W.shape[0]).

    Why: ONNX's shape inference does not compare them, so a wrong ``--input-shape`` or a damaged model would
    pass every check above and fail only inside TVM's importer."""
    for node in model.graph.all_nodes():
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in ("Conv", "ConvTranspose") or len(
                node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            continue
        x, w = node.inputs[0].shape, node.inputs[1].shape
        if x is None or w is None or len(x) < 2 or len(w) < 2:
            continue
        if not isinstance(x[1], int) or not all(isinstance(d, int) for d in w):
            continue
        group = node.attributes["group"].as_int() if "group" in node.attributes else 1
        expected = int(w[1]) * group if node.op_type == "Conv" else int(w[0])
        if x[1] != expected:
            raise EdgecError(f"{node.op_type} node '{node.name}' gets {x[1]} input channels, its weights "
                             f"{tuple(w)} (group {group}) expect {expected}",
                             "check --input-shape against the model's input; else " + REEXPORT)
