"""Per-layer ops, parameters, MACs and bytes of an ONNX model: the numbers behind ``edgec inspect``.

Conventions (kept deliberately plain so the figures can be checked by hand):

* **Params / weight bytes** are the elements / stored bytes of every initializer (sparse ones: dense size /
  stored values+indices) and every ``Constant``-node tensor. Each tensor is charged once, to the first node (in graph order) that reads it, so a weight shared by
  two layers is not counted twice and the layer rows sum to the totals. Tensors nothing reads are not counted.
  ``Constant`` nodes are treated as weights, not layers, so they get no row of their own.
* **MACs** count the multiply-accumulates of Conv/Gemm/MatMul-like ops only (Conv, ConvTranspose, Gemm, MatMul
  and their integer/quantized forms ConvInteger, QLinearConv, MatMulInteger, QLinearMatMul); every other op is
  0 MACs. Bias additions are not counted. This is the usual convention of FLOP/MAC counters, and those ops
  carry almost all the arithmetic of the models edgec targets.
* Only the main graph's nodes are rows; weights read from inside a subgraph (If/Loop/Scan bodies) are charged
  to the node owning the subgraph, whose MACs are not counted.
* **Peak activation bytes** is the largest total size of non-constant tensors alive at once when the nodes run
  in graph order and each tensor is freed after its last reader (graph inputs/outputs live throughout); a
  rough upper bound for the activation arena, since compilers reuse and fuse buffers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import onnx
from onnx import TensorProto

from edgec.errors import EdgecError

__all__ = ["LayerStats", "ModelStats", "inspect_model", "format_table"]

Shape = tuple[int | str, ...]
"""A tensor shape; a dimension that is not a known integer is its symbolic name, or ``"?"``."""

_DEFAULT_DOMAINS = ("", "ai.onnx")
# Sub-byte element types are stored packed, so their bytes are numel * bits / 8 rounded up.
_SUB_BYTE_BITS = {
    TensorProto.INT4: 4,
    TensorProto.UINT4: 4,
    TensorProto.FLOAT4E2M1: 4,
    getattr(TensorProto, "INT2", -1): 2,
    getattr(TensorProto, "UINT2", -1): 2,
    getattr(TensorProto, "FLOAT6E2M3", -1): 6,
    getattr(TensorProto, "FLOAT6E3M2", -1): 6,
}


@dataclass
class LayerStats:
    """One node of the main graph: its first output's shape, the weights charged to it and its MACs."""

    name: str
    op_type: str
    output_shape: Shape | None  # None when not even the rank could be inferred (e.g. custom ops)
    params: int
    macs: int
    weight_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the shape becomes a list, or null)."""
        d = asdict(self)
        d["output_shape"] = None if self.output_shape is None else list(self.output_shape)
        return d


@dataclass
class ModelStats:
    """Whole-model figures; the totals are the sums of the layer rows."""

    layers: list[LayerStats]
    op_counts: dict[str, int]
    total_params: int
    total_macs: int
    total_weight_bytes: int
    peak_activation_bytes: int | None = None  # None when some activation's size is unknown

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, layers included."""
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "op_counts": dict(self.op_counts),
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "total_weight_bytes": self.total_weight_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
        }


# --------------------------------------------------------------------------------------------- helpers


def _elem_bits(elem_type: int) -> int:
    """Bits per element; 0 for types with no fixed size (strings), which then count as 0 bytes."""
    if elem_type in _SUB_BYTE_BITS:
        return _SUB_BYTE_BITS[elem_type]
    if elem_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return 0
    try:
        return 8 * onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except Exception:  # an element type newer than this onnx's numpy mapping
        return 0


def _nbytes(numel: int, elem_type: int) -> int:
    return math.ceil(numel * _elem_bits(elem_type) / 8)


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[Shape | None, int]:
    """Shape and element type recorded in a value_info; shape None when the rank is unknown."""
    t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape"):
        return None, (t.elem_type if t is not None else 0)
    dims: list[int | str] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param or "?")
    return tuple(dims), t.elem_type


def _is_static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _numel(shape: Shape) -> int:
    return math.prod(int(d) for d in shape)


def _constant_tensor(node: onnx.NodeProto) -> tuple[int, int, Shape] | None:
    """(numel, elem_type, shape) of a Constant node's value, whatever attribute holds it."""
    for a in node.attribute:
        if a.name == "value":
            return math.prod(a.t.dims), a.t.data_type, tuple(a.t.dims)
        if a.name == "sparse_value":  # dense size, like sparse initializers
            dims = tuple(a.sparse_tensor.dims)
            return math.prod(dims), a.sparse_tensor.values.data_type, dims
        if a.name == "value_float":
            return 1, TensorProto.FLOAT, ()
        if a.name == "value_int":
            return 1, TensorProto.INT64, ()
        if a.name == "value_floats":
            return len(a.floats), TensorProto.FLOAT, (len(a.floats),)
        if a.name == "value_ints":
            return len(a.ints), TensorProto.INT64, (len(a.ints),)
        if a.name in ("value_string", "value_strings"):
            n = 1 if a.name == "value_string" else len(a.strings)
            return n, TensorProto.STRING, (() if a.name == "value_string" else (n,))
    return None


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _names_read(node: onnx.NodeProto) -> Iterator[str]:
    """Every tensor name a node reads, including outer-scope names read inside its subgraphs."""
    yield from (n for n in node.input if n)
    for g in _subgraphs(node):
        for sub in g.node:
            yield from _names_read(sub)


def _subgraph_weights(node: onnx.NodeProto) -> tuple[int, int]:
    """(params, bytes) of initializers and Constant values defined inside a node's subgraphs."""
    params = nbytes = 0
    for g in _subgraphs(node):
        for init in g.initializer:
            n = math.prod(init.dims)
            params, nbytes = params + n, nbytes + _nbytes(n, init.data_type)
        for sub in g.node:
            if sub.op_type == "Constant" and sub.domain in _DEFAULT_DOMAINS:
                c = _constant_tensor(sub)
                if c is not None:
                    params, nbytes = params + c[0], nbytes + _nbytes(c[0], c[1])
            p, b = _subgraph_weights(sub)
            params, nbytes = params + p, nbytes + b
    return params, nbytes


# ----------------------------------------------------------------------------------------------- MACs

# op_type -> (index of the data input, index of the weight input); Conv-likes only.
_CONV_LIKE = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
# op_type -> (index of A, index of B) for numpy-style matrix products.
_MATMUL_LIKE = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
_MAC_OPS = {*_CONV_LIKE, *_MATMUL_LIKE, "Gemm", "ConvTranspose"}


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


_EDGEC_MAC_OPS = ("BinaryConv", "AdderConv", "BinaryGemm")


def _edgec_macs(node: onnx.NodeProto, shape: dict[str, Shape | None]) -> int:
    """An edgec op's multiply-accumulates (binary: bit operations; adder: |x − w| terms), as the conv or dense
    layer it replaces counts them: output elements × input channels × kernel area (the packed binary weights
    have C/8 channel bytes, so C comes from the input). 0 where a shape is not static."""
    x, w, y = (shape.get(n) for n in (node.input[0], node.input[1], node.output[0]))
    if not (_is_static(x) and _is_static(w) and _is_static(y)):
        return 0
    if node.op_type == "BinaryGemm":
        return _numel(y) * int(x[-1])  # type: ignore[index]
    return _numel(y) * int(x[1]) * _numel(w[2:])  # type: ignore[index]


def _macs(node: onnx.NodeProto, shape: dict[str, Shape | None], label: str) -> int:
    """Multiply-accumulates of one node from its static input/output shapes (0 for non-MAC ops)."""
    if node.domain == "edgec" and node.op_type in _EDGEC_MAC_OPS:
        return _edgec_macs(node, shape)
    if node.domain not in _DEFAULT_DOMAINS or node.op_type not in _MAC_OPS:
        return 0

    def need(name: str) -> tuple[int, ...]:
        s = shape.get(name)
        if not _is_static(s):
            got = "unknown" if s is None else "[" + ", ".join(map(str, s)) + "]"
            raise EdgecError(
                f"cannot count MACs of node '{label}' ({node.op_type}): the shape of '{name}' is {got} after "
                "ONNX shape inference",
                "give every model input a static shape with --input-shape NAME:1,3,224,224; dims computed "
                "from runtime data, e.g. a Reshape whose target shape is a model input, cannot be inferred",
            )
        return tuple(int(d) for d in s)  # type: ignore[union-attr]

    op = node.op_type
    if op in _CONV_LIKE:
        # Each output element is a dot product over (Cin/groups) * prod(kernel): exactly W.shape[1:].
        need(node.input[_CONV_LIKE[op][0]])  # checked first so an error names the data input
        w = need(node.input[_CONV_LIKE[op][1]])
        return _numel(need(node.output[0])) * _numel(w[1:])
    if op == "ConvTranspose":
        # Every input element is scattered through (Cout/groups) * prod(kernel) weights: W.shape[1:].
        x, w = need(node.input[0]), need(node.input[1])
        return _numel(x) * _numel(w[1:])
    if op == "Gemm":
        a, b = need(node.input[0]), need(node.input[1])
        m, k = (a[1], a[0]) if _attr_int(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr_int(node, "transB", 0) else b[1]
        return m * n * k
    # MatMul-like: every output element (batch dims already broadcast) is a K-long dot product; this also
    # covers 1-D operands, whose M or N dimension numpy semantics drop from the output.
    ia, _ = _MATMUL_LIKE[op]
    a = need(node.input[ia])
    return _numel(need(node.output[0])) * a[-1]


# ------------------------------------------------------------------------------------------ inspect_model


def _edgec_output_shape(node: onnx.NodeProto, x: Shape | None, w: Shape | None) -> list[int] | None:
    """The output shape of an edgec op (BinaryConv, AdderConv: Conv's; BinaryGemm: [N, O]) from its input's
    and weight's static shapes, or None."""
    if not (_is_static(x) and _is_static(w)):
        return None
    if node.op_type == "BinaryGemm":
        return [int(x[0]), int(w[0])]  # type: ignore[index]
    attrs = {a.name: list(a.ints) for a in node.attribute}
    kernel = [int(d) for d in w[2:]]  # type: ignore[index]
    strides = attrs.get("strides") or [1] * len(kernel)
    pads = attrs.get("pads") or [0] * (2 * len(kernel))
    dilations = attrs.get("dilations") or [1] * len(kernel)
    spatial = [(int(x[2 + i]) + pads[i] + pads[i + len(kernel)] - dilations[i] * (k - 1) - 1) // strides[i] + 1
               for i, k in enumerate(kernel)]  # type: ignore[index]
    return [int(x[0]), int(w[0]), *spatial]  # type: ignore[index]


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, with the outputs of edgec's ops (model-local functions, where ONNX's inference stops)
    given their shapes and inference run again past them, until nothing more is learned."""
    def infer(m: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False, data_prop=True)

    calls = [n for n in model.graph.node if n.domain == "edgec" and n.op_type in _EDGEC_MAC_OPS]
    inferred = infer(model)
    if not calls:
        return inferred
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for _ in range(len(calls)):
        known = {vi.name: _shape_of(vi) for vi in [*inferred.graph.input, *inferred.graph.value_info,
                                                    *inferred.graph.output]}
        known.update({t.name: (tuple(t.dims), t.data_type) for t in inferred.graph.initializer})
        added = False
        for node in calls:
            if _is_static(known.get(node.output[0], (None, 0))[0]):
                continue
            x, w = (known.get(n, (None, 0)) for n in node.input[:2])
            out = _edgec_output_shape(node, x[0], w[0])
            if out is not None:
                work.graph.value_info.append(onnx.helper.make_tensor_value_info(node.output[0], x[1], out))
                added = True
        if not added:
            break
        inferred = infer(work)
    return inferred


def inspect_model(model: onnx.ModelProto) -> ModelStats:
    """Shapes, weights and MACs per layer of ``model`` (whose input shapes must already be static).

    Runs ONNX shape inference with data propagation (so Shape->Gather->Reshape chains resolve), then walks the
    main graph once. Raises :class:`EdgecError` naming the node when a MAC-counting op's shapes are not static.
    """
    try:
        inferred = _infer_shapes(model)
    except Exception as e:  # malformed model / unsupported opset: a user-fixable input problem
        raise EdgecError(
            f"ONNX shape inference failed: {e}",
            "check the model with onnx.checker and give static input shapes with --input-shape",
        ) from e
    graph = inferred.graph

    shape: dict[str, Shape | None] = {}
    dtype: dict[str, int] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        shape[vi.name], dtype[vi.name] = _shape_of(vi)

    # Constant tensors: name -> (numel, bytes). Initializers win over a same-named graph input (IR < 4).
    weights: dict[str, tuple[int, int]] = {}
    for init in graph.initializer:
        n = math.prod(init.dims)
        weights[init.name] = (n, _nbytes(n, init.data_type))
        shape[init.name], dtype[init.name] = tuple(init.dims), init.data_type
    for sp in graph.sparse_initializer:  # params = dense size; bytes = what is stored (values + indices)
        stored = _nbytes(math.prod(sp.values.dims), sp.values.data_type)
        stored += _nbytes(math.prod(sp.indices.dims), sp.indices.data_type)
        weights[sp.values.name] = (math.prod(sp.dims), stored)
        shape[sp.values.name], dtype[sp.values.name] = tuple(sp.dims), sp.values.data_type
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
            c = _constant_tensor(node)
            if c is not None:
                weights[node.output[0]] = (c[0], _nbytes(c[0], c[1]))
                shape[node.output[0]], dtype[node.output[0]] = c[2], c[1]

    layers: list[LayerStats] = []
    op_counts: Counter[str] = Counter()
    charged: set[str] = set()
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            continue
        op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
        label = node.name or f"{node.op_type}_{i}"
        params, nbytes = _subgraph_weights(node)
        for name in _names_read(node):
            if name in weights and name not in charged:
                charged.add(name)
                params, nbytes = params + weights[name][0], nbytes + weights[name][1]
        out = node.output[0] if node.output else ""
        layers.append(LayerStats(label, op, shape.get(out), params, _macs(node, shape, label), nbytes))
        op_counts[op] += 1

    return ModelStats(
        layers=layers,
        op_counts=dict(sorted(op_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        total_params=sum(layer.params for layer in layers),
        total_macs=sum(layer.macs for layer in layers),
        total_weight_bytes=sum(layer.weight_bytes for layer in layers),
        peak_activation_bytes=_peak_activation_bytes(graph, weights, shape, dtype),
    )


def _peak_activation_bytes(
    graph: onnx.GraphProto, weights: dict[str, Any], shape: dict[str, Shape | None], dtype: dict[str, int]
) -> int | None:
    """Peak bytes of live non-constant tensors under graph order (see module docstring); None if unknown."""
    last_use: dict[str, int] = {}
    end = len(graph.node)
    for i, node in enumerate(graph.node):
        for name in _names_read(node):
            last_use[name] = i
    for o in graph.output:
        last_use[o.name] = end

    def size(name: str) -> int | None:
        s = shape.get(name)
        return _nbytes(_numel(s), dtype.get(name, 0)) if _is_static(s) else None  # type: ignore[arg-type]

    live: dict[str, int] = {}
    for vi in graph.input:
        if vi.name not in weights:
            b = size(vi.name)
            if b is None:
                return None
            live[vi.name] = b
    peak = sum(live.values())
    for i, node in enumerate(graph.node):
        for o in node.output:
            if o and o not in weights:
                b = size(o)
                if b is None:
                    return None
                live[o] = b
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, -1) <= i]:
            del live[name]
    return peak


# --------------------------------------------------------------------------------------------- formatting


def _human_macs(n: int) -> str:
    """MACs in M or G for the totals line: '0.22 MMACs', '1.82 GMACs'."""
    return f"{n / 1e9:.2f} GMACs" if n >= 1e9 else f"{n / 1e6:.2f} MMACs"


def _human_bytes(n: int) -> str:
    """Bytes in binary units, matching the KiB column."""
    for div, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def _fmt_shape(s: Shape | None) -> str:
    return "?" if s is None else "[" + ", ".join(map(str, s)) + "]"


def format_table(stats: ModelStats) -> str:
    """Aligned text table of the layers, followed by a totals line and an op-count line."""
    header = ("layer", "op", "output shape", "params", "MACs", "KiB")
    rows = [
        (
            layer.name,
            layer.op_type,
            _fmt_shape(layer.output_shape),
            f"{layer.params:,}",
            f"{layer.macs:,}",
            f"{layer.weight_bytes / 1024:,.1f}",
        )
        for layer in stats.layers
    ]
    total = ("TOTAL", "", "", f"{stats.total_params:,}", f"{stats.total_macs:,}",
             f"{stats.total_weight_bytes / 1024:,.1f}")
    widths = [max(len(r[c]) for r in [header, *rows, total]) for c in range(len(header))]
    right = {3, 4, 5}  # numbers are right-aligned

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule, *map(line, rows), rule, line(total), ""]
    summary = (
        f"{len(stats.layers)} layers, {stats.total_params:,} params "
        f"({_human_bytes(stats.total_weight_bytes)}), {stats.total_macs:,} MACs ({_human_macs(stats.total_macs)})"
    )
    if stats.peak_activation_bytes is not None:
        summary += f", peak activations {_human_bytes(stats.peak_activation_bytes)}"
    out.append(summary)
    out.append("ops: " + ", ".join(f"{op} x{n}" for op, n in stats.op_counts.items()))
    out.append("MACs count multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul (and quantized forms) only.")
    return "\n".join(out)
