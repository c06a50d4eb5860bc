"""A .tflite file → one ONNX ModelProto (opset 17) with the .tflite's interface: input/output names, NHWC shapes
and dtypes as the TFLite interpreter has them; NCHW inside (layout.py). A quantized model (int8/uint8 per-tensor
activations) becomes QDQ ONNX; its integer inputs and outputs stay integer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgec.errors import EdgecError
from edgec.toolchain.tflite.layout import NCHW, PLAIN, TO_NCHW, Builder
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
    unreadable = [t for t in graph.tensors if t.data is None and t.quantized
                  and (t.dtype not in (np.int8, np.uint8) or t.scale.size > 1)]
    if unreadable:
        t = unreadable[0]
        kind = f"{t.dtype.name} activations" if t.dtype not in (np.int8, np.uint8) else "per-channel activations"
        raise EdgecError(f"{Path(path).name} is a quantized TFLite model with {kind}, which edgec does not read "
                         f"(first such tensor: '{t.name}'); it reads int8/uint8 per-tensor activations",
                         "pass the float model, and quantize it with edgec quantize / compile --quantize")
    return convert_graph(graph, Path(path).stem)


def is_quantized(graph: TfliteGraph) -> bool:
    """Integer activations with quantization parameters: converted to QDQ (layout.py)."""
    return any(t.data is None and t.quantized for t in graph.tensors)


def output_step(path: str | Path) -> float | None:
    """One quantization step of a quantized model's outputs, the tolerance its artifact is verified within: 1 for
    an integer output, the scale of the integers a float output is dequantized from (plus float32's rounding of
    that difference, 1e-5 of it); the largest over the outputs. None for a float model, or an output computed
    in float (the float rule applies)."""
    graph = read_tflite(path)
    if not is_quantized(graph):
        return None
    producer = {index: op for op in graph.operators for index in op.outputs}
    steps = []
    for index in graph.outputs:
        t, op = graph.tensors[index], producer.get(index)
        if t.quantized:
            steps.append(1.0)
        elif op is not None and op.kind == "DEQUANTIZE" and graph.tensors[op.inputs[0]].quantized:
            steps.append(float(np.max(graph.tensors[op.inputs[0]].scale)) * (1 + 1e-5))
        else:
            return None
    return max(steps, default=None)


def _interface_name(graph: TfliteGraph, index: int, taken: set[str]) -> str:
    name = graph.tensors[index].name or f"tensor{index}"
    while name in taken:
        name = f"{name}_{index}"
    taken.add(name)
    return name


def convert_graph(graph: TfliteGraph, model_name: str = "tflite") -> onnx.ModelProto:
    b = Builder(graph, qdq=is_quantized(graph))
    taken: set[str] = set()
    inputs = []
    for index in graph.inputs:
        t = graph.tensors[index]
        name = _interface_name(graph, index, taken)
        inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(t.dtype), list(t.shape)))
        quantized = b.qdq and t.quantized  # an integer input: its real values, DequantizeLinear after the entry
        b.define(index, b.dequantize(index, name) if quantized else name, PLAIN, requantize=False)
        if t.rank == 4 and (t.dtype.kind == "f" or quantized):  # once, at the entry: everything after runs NCHW
            nchw = b.node("Transpose", [name], perm=list(TO_NCHW))[0]
            b.define(index, b.dequantize(index, nchw) if quantized else nchw, NCHW, requantize=False)
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
        if b.qdq and t.quantized:  # an integer output: the interpreter's integers (QuantizeLinear at the exit)
            b.nodes.append(helper.make_node("QuantizeLinear", [b.value(index, PLAIN), *b.qparams(index)], [name],
                                            name=f"output_{name}"))
        else:
            b.nodes.append(helper.make_node("Identity", [b.value(index, PLAIN)], [name], name=f"output_{name}"))
        outputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(t.dtype), list(t.shape)))
    onnx_graph = helper.make_graph(b.nodes, model_name, inputs, outputs, b.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgec tflite reader")
    model.ir_version = 8
    return model
