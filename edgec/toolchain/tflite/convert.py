"""A .tflite file → one ONNX ModelProto (opset 17) with the .tflite's interface: input/output names, NHWC shapes
and dtypes as the TFLite interpreter has them; NCHW inside (layout.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from edgec.errors import EdgecError
from edgec.toolchain.tflite.layout import NCHW, PLAIN, Builder
from edgec.toolchain.tflite.ops import CONVERTERS
from edgec.toolchain.tflite.reader import TfliteGraph, read_tflite

OPSET = 17


def tflite_to_onnx(path: str | Path) -> onnx.ModelProto:
    """Read ``path`` and convert subgraph 0; an operator without a converter is refused before any work, in one
    line naming it and the model's operator histogram."""
    graph = read_tflite(path)
    missing = sorted({op.kind for op in graph.operators if op.kind not in CONVERTERS})
    if missing:
        histogram = ", ".join(f"{k} ×{n}" for k, n in graph.histogram().items())
        raise EdgecError(f"{Path(path).name} uses TFLite operator(s) edgec cannot read: {', '.join(missing)} "
                         f"(the model's operators: {histogram})",
                         "re-export the model without them, or convert it to ONNX another way")
    quantized = [t.name for t in graph.tensors
                 if t.data is None and t.dtype.kind in "iu" and t.scale is not None and t.scale.size]
    if quantized:
        raise EdgecError(f"{Path(path).name} is a quantized (integer activations) TFLite model, which edgec does not "
                         f"read yet (first quantized tensor: '{quantized[0]}')",
                         "pass the float model, and quantize it with edgec quantize / compile --quantize")
    return convert_graph(graph, Path(path).stem)


def _interface_name(graph: TfliteGraph, index: int, taken: set[str]) -> str:
    name = graph.tensors[index].name or f"tensor{index}"
    while name in taken:
        name = f"{name}_{index}"
    taken.add(name)
    return name


def convert_graph(graph: TfliteGraph, model_name: str = "tflite") -> onnx.ModelProto:
    b = Builder(graph)
    taken: set[str] = set()
    inputs = []
    for index in graph.inputs:
        t = graph.tensors[index]
        name = _interface_name(graph, index, taken)
        inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(t.dtype), list(t.shape)))
        b.define(index, name, PLAIN)
        if t.rank == 4 and t.dtype.kind == "f":  # once, at the entry: everything after it runs NCHW
            b.define(index, b.value(index, NCHW), NCHW)
    for op in graph.operators:
        try:
            CONVERTERS[op.kind](b, op)
        except EdgecError:
            raise
        except Exception as exc:
            raise EdgecError(f"cannot convert TFLite {op.kind} (output '{graph.tensors[op.outputs[0]].name}'): "
                             f"{type(exc).__name__}: {exc}", "this is an edgec bug: please report it with the "
                             "model") from None
    outputs = []
    for index in graph.outputs:
        t = graph.tensors[index]
        name = _interface_name(graph, index, taken)
        b.nodes.append(helper.make_node("Identity", [b.value(index, PLAIN)], [name], name=f"output_{name}"))
        outputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(t.dtype), list(t.shape)))
    onnx_graph = helper.make_graph(b.nodes, model_name, inputs, outputs, b.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgec tflite reader")
    model.ir_version = 8
    return model
