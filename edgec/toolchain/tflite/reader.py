"""A .tflite flatbuffer read into plain Python: tensors (shape, dtype, constant data, quantization) and operators
(kind, inputs, outputs, options), with the weight-storage ops resolved.

MediaPipe and the TFLite converter store weights compressed: float16 constants behind a DEQUANTIZE, sparse
constants behind a DENSIFY. Both are functions of constants only, so they are evaluated here, once, and the
converter sees float32 weights; nothing at run time depends on how the weights were stored.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import EdgecError

_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8, "INT64": np.int64,
           "BOOL": np.bool_, "INT16": np.int16, "INT8": np.int8, "FLOAT64": np.float64, "UINT32": np.uint32,
           "UINT16": np.uint16}


@dataclasses.dataclass
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None  # constant value, None for activations
    scale: np.ndarray | None = None  # quantization parameters, None for float tensors
    zero_point: np.ndarray | None = None
    quantized_dimension: int = 0

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def quantized(self) -> bool:
        """Integers standing for real numbers: (q - zero_point) × scale."""
        return self.dtype.kind in "iu" and self.scale is not None and self.scale.size > 0


@dataclasses.dataclass
class Operator:
    kind: str  # BuiltinOperator name, or "CUSTOM:<code>"
    inputs: list[int]  # -1: an optional input left out
    outputs: list[int]
    options: Any = None  # the tflite package's options object for this op (Conv2DOptions, ...), or None
    custom: bytes = b""  # custom ops' raw options
    version: int = 1  # the operator code's version (custom ops change meaning between versions)


@dataclasses.dataclass
class TfliteGraph:
    """Subgraph 0 of a model, weight-storage ops resolved."""

    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]

    def histogram(self) -> dict[str, int]:
        return dict(collections.Counter(op.kind for op in self.operators).most_common())


def _enum_names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def read_tflite(path: str | Path) -> TfliteGraph:
    """Parse ``path`` (refused in one line when it is not a TFLite flatbuffer) and resolve its stored weights."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator
    from tflite.BuiltinOptions import BuiltinOptions
    from tflite.TensorType import TensorType

    raw = Path(path).read_bytes()
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise EdgecError(f"{path} is not a TFLite model (no TFL3 identifier)",
                         "pass a .tflite file written by the TFLite converter")
    model = tflite.Model.GetRootAsModel(raw, 0)
    if model.SubgraphsLength() < 1:
        raise EdgecError(f"{path} holds no subgraph", "pass a complete .tflite file")
    graph = model.Subgraphs(0)
    op_names = _enum_names(BuiltinOperator)
    type_names = _enum_names(TensorType)
    option_names = _enum_names(BuiltinOptions)

    tensors = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        tname = type_names.get(t.Type(), str(t.Type()))
        if tname not in _DTYPES:
            raise EdgecError(f"{path}: tensor '{t.Name().decode()}' has type {tname}, which edgec cannot read",
                             "convert the model with float32 or int8 tensors")
        dtype = np.dtype(_DTYPES[tname])
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if not t.ShapeIsNone() else ()
        tensor = Tensor(i, t.Name().decode(errors="replace"), shape, dtype)
        buf = model.Buffers(t.Buffer())
        data = None
        if buf is not None and buf.Offset() > 1:  # large models keep buffers after the flatbuffer
            data = np.frombuffer(raw, dtype=np.uint8, count=buf.Size(), offset=buf.Offset())
        elif buf is not None and buf.DataLength() > 0:
            data = buf.DataAsNumpy()
        if data is not None:
            values = np.frombuffer(data.tobytes(), dtype=dtype)
            sparsity = t.Sparsity()
            tensor.data = _densify(values, shape, sparsity) if sparsity is not None else values.reshape(shape)
        q = t.Quantization()
        if q is not None and q.ScaleLength() > 0:
            tensor.scale = q.ScaleAsNumpy().astype(np.float32)
            tensor.zero_point = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else \
                np.zeros_like(tensor.scale, dtype=np.int64)
            tensor.quantized_dimension = q.QuantizedDimension()
        tensors.append(tensor)

    operators = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
        custom = b""
        if kind == "CUSTOM":
            kind = "CUSTOM:" + (code.CustomCode() or b"").decode(errors="replace")
            custom = op.CustomOptionsAsNumpy().tobytes() if not op.CustomOptionsIsNone() else b""
        options = None
        table = op.BuiltinOptions()
        if table is not None and op.BuiltinOptionsType():
            cls = getattr(tflite, option_names[op.BuiltinOptionsType()], None)
            if cls is not None:
                options = cls()
                options.Init(table.Bytes, table.Pos)
        operators.append(Operator(kind, [int(x) for x in op.InputsAsNumpy()] if op.InputsLength() else [],
                                  [int(x) for x in op.OutputsAsNumpy()] if op.OutputsLength() else [],
                                  options, custom, int(code.Version())))
    result = TfliteGraph(tensors, operators, [int(x) for x in graph.InputsAsNumpy()],
                         [int(x) for x in graph.OutputsAsNumpy()])
    _resolve_stored_weights(result)
    return result


def _resolve_stored_weights(graph: TfliteGraph) -> None:
    """DEQUANTIZE and DENSIFY of constants become constants (float16 up-cast, int8 scaled, sparse made dense)."""
    kept = []
    for op in graph.operators:
        src = graph.tensors[op.inputs[0]] if op.inputs else None
        if op.kind in ("DEQUANTIZE", "DENSIFY") and src is not None and src.data is not None:
            out = graph.tensors[op.outputs[0]]
            value = src.data
            if op.kind == "DEQUANTIZE":
                value = dequantize(src) if src.scale is not None and value.dtype.kind in "iu" else value
                value = value.astype(np.float32)
            out.data = value.astype(out.dtype).reshape(out.shape)
            if op.kind == "DENSIFY":  # the densified tensor keeps the source's quantization
                out.scale, out.zero_point, out.quantized_dimension = src.scale, src.zero_point, \
                    src.quantized_dimension
            continue
        kept.append(op)
    graph.operators = kept


def dequantize(tensor: Tensor) -> np.ndarray:
    """A quantized constant's real values: (q - zero_point) × scale, per tensor or along its quantized dim."""
    shape = [1] * tensor.rank
    if tensor.scale is not None and tensor.scale.size > 1:
        shape[tensor.quantized_dimension] = -1
    scale = tensor.scale.reshape(shape) if tensor.rank else tensor.scale
    zero = tensor.zero_point.reshape(shape) if tensor.rank else tensor.zero_point
    return ((tensor.data.astype(np.float64) - zero) * scale).astype(np.float32)


def _index_vector(meta: Any, which: str) -> np.ndarray:
    import tflite
    from tflite.SparseIndexVector import SparseIndexVector

    kind = getattr(meta, f"{which}Type")()
    table = getattr(meta, which)()
    cls = getattr(tflite, _enum_names(SparseIndexVector)[kind])
    vec = cls()
    vec.Init(table.Bytes, table.Pos)
    return vec.ValuesAsNumpy().astype(np.int64)


def _densify(values: np.ndarray, shape: tuple[int, ...], sparsity: Any) -> np.ndarray:
    """TFLite's sparse tensor format (traversal order, block map, DENSE / SPARSE_CSR levels) made dense."""
    order = [int(x) for x in sparsity.TraversalOrderAsNumpy()]
    block_map = [int(x) for x in sparsity.BlockMapAsNumpy()] if sparsity.BlockMapLength() else []
    levels = []
    for level in range(sparsity.DimMetadataLength()):
        meta = sparsity.DimMetadata(level)
        if meta.Format() == 0:  # DENSE
            levels.append(("dense", meta.DenseSize(), None, None))
        else:
            levels.append(("csr", 0, _index_vector(meta, "ArraySegments"), _index_vector(meta, "ArrayIndices")))
    rank = len(shape)
    block_size = {d: levels[order.index(rank + i)][1] for i, d in enumerate(block_map)}
    # positions[k]: the index into the next level (finally into values) of every element reached so far;
    # coords[k]: the traversal-dim coordinates of the same elements
    positions = np.zeros(1, dtype=np.int64)
    coords = np.zeros((1, len(order)), dtype=np.int64)
    for level, (fmt, size, segments, indices) in enumerate(levels):
        dim = order[level]
        if fmt == "dense":
            positions = (positions[:, None] * size + np.arange(size)[None, :]).reshape(-1)
            coords = np.repeat(coords, size, axis=0)
            coords[:, dim] = np.tile(np.arange(size), len(coords) // size)
        else:
            counts = segments[positions + 1] - segments[positions]
            starts = np.repeat(segments[positions], counts)
            offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            positions = starts + offsets
            coords = np.repeat(coords, counts, axis=0)
            coords[:, dim] = indices[positions]
    dense = np.zeros(shape, dtype=values.dtype)
    index = []
    for d in range(rank):
        c = coords[:, d]
        if d in block_size:
            c = c * block_size[d] + coords[:, rank + block_map.index(d)]
        index.append(c)
    dense[tuple(index)] = values[positions]
    return dense
