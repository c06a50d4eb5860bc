"""Per-layer weight bytes and MACs of the model before the passes and after each pass that changed it.

Why: the HTML report (``edgec report``) shows where each pass, pruning and quantization moved a model's size and
arithmetic, layer by layer; the pass log only counts nodes. The figures follow ``edgec inspect``'s conventions
(:mod:`edgec.toolchain.inspect`), with one difference: a node that only transforms weights (a DequantizeLinear of a
constant, a Transpose of one) is not a layer; its bytes are charged to the layer that reads its output, so a
quantized Conv shows its int8 weight bytes next to its float ones.

The record is written into the artifact as ``layers.json`` (listed and hashed in the manifest like every file).
Recording never fails a compile: a model whose shapes cannot be inferred gets an ``error`` entry instead of rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.toolchain.inspect import inspect_model

__all__ = ["LayerRecorder", "layer_rows", "SCHEMA"]

SCHEMA = "edgec.layers/1"
# Initializers larger than this are serialized without their data for shape inference (their dims and type are
# all inspect needs): copying a model's weights once per pass would cost more than the passes.
_STRIP_BYTES = 1024


def _light_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto whose large initializers keep dims and type but no data."""
    graph = model.graph
    proto = onnx.ModelProto()
    proto.ir_version = model.ir_version
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(domain=domain, version=version)
    g = proto.graph
    g.name = graph.name or "graph"
    for value in graph.inputs:
        if not value.is_initializer():
            g.input.append(ir.serde.serialize_value(value))
    for value in graph.outputs:
        g.output.append(ir.serde.serialize_value(value))
    for name, value in graph.initializers.items():
        tensor = value.const_value
        if tensor is None:
            continue
        if tensor.nbytes > _STRIP_BYTES:
            t = g.initializer.add(name=name, data_type=int(tensor.dtype))
            t.dims.extend(int(d) for d in tensor.shape)
        else:
            g.initializer.append(ir.serde.serialize_tensor(tensor))
            g.initializer[-1].name = name
    for node in graph:
        g.node.append(ir.serde.serialize_node(node))
    return proto


def layer_rows(model: ir.Model) -> list[list[Any]]:
    """``[name, op, weight_bytes, macs]`` of every layer that holds weights or does multiply-accumulates."""
    proto = _light_proto(model)
    stats = inspect_model(proto)
    weights = {t.name for t in proto.graph.initializer}
    weights |= {n.output[0] for n in proto.graph.node
                if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output}
    # weight-only nodes (every input a weight): their outputs are weights, their bytes go to their reader
    carry: dict[str, int] = {}
    rows: list[list[Any]] = []
    nodes = [n for n in proto.graph.node if not (n.op_type == "Constant" and n.domain in ("", "ai.onnx"))]
    for node, stat in zip(nodes, stats.layers, strict=True):  # inspect's rows: every node but Constants
        inputs = [x for x in node.input if x]
        moved = sum(carry.pop(x, 0) for x in inputs)
        if inputs and all(x in weights for x in inputs) and stat.macs == 0:
            weights.update(o for o in node.output if o)
            if node.output:
                carry[node.output[0]] = carry.get(node.output[0], 0) + stat.weight_bytes + moved
            continue
        nbytes = stat.weight_bytes + moved
        if nbytes or stat.macs:
            row = [stat.name, stat.op_type, nbytes, stat.macs]
            rows.append(row)
    return rows


@dataclasses.dataclass
class LayerRecorder:
    """Collects one stage per recorded point: ``source`` first, then each pass that changed the rows."""

    stages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: str | None = None

    def add(self, label: str, model: ir.Model) -> None:
        """Record the rows after ``label`` (a stage name like ``pipeline: fold_batchnorm``), if they changed."""
        if self.error is not None:
            return
        try:
            rows = layer_rows(model)
        except EdgecError as e:  # dynamic shapes: the report says why instead of failing the compile
            self.error = f"after {label}: {e.message}"
            return
        if self.stages and self.stages[-1]["layers"] == rows:
            return
        self.stages.append({"after": label, "weight_bytes": sum(r[2] for r in rows),
                            "macs": sum(r[3] for r in rows), "layers": rows})

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA,
                "columns": ["layer", "op", "weight_bytes", "macs"],
                "conventions": "edgec inspect's: MACs of Conv/ConvTranspose/Gemm/MatMul only; weights charged to "
                               "the first layer that reads them (through DequantizeLinear/Transpose of constants)",
                "stages": self.stages,
                **({"error": self.error} if self.error else {})}
