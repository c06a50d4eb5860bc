"""Inputs fixed to a value at compile time (``edgec compile --input-value sr=16000``).

Why: some models branch on an input's value, not its shape. Silero VAD v5 takes the sample rate as an input and
holds two whole networks (16 kHz and 8 kHz) in an ``If`` on ``sr == 16000``; TVM has no If, and computing both
networks to select one afterwards doubles the cost of every call, for a value a deployment never changes. Fixed to
a value, the input becomes a constant: fold_constants decides the If (onnxscript's folder inlines the branch
taken), the nested shape-dependent Ifs and the LSTM inside become ordinary nodes, and the artifact is exactly the
source model at that value. The manifest records the value under ``fixed_inputs``; running the artifact with that
input at the same value is accepted (the value is dropped), any other value is refused in one line.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.passes.base import replace_value


def parse_input_values(specs: Sequence[str] | None) -> dict[str, list[float]]:
    """``["sr=16000", "mask=1,0,1"]`` → {name: values}; the dtype and shape come from the model's input."""
    values: dict[str, list[float]] = {}
    for spec in specs or ():
        name, sep, text = spec.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise EdgecError(f"--input-value '{spec}' is not NAME=VALUE", "write it as e.g. --input-value sr=16000")
        try:
            values[name.strip()] = [float(v) for v in text.split(",")]
        except ValueError:
            raise EdgecError(f"--input-value '{spec}': '{text}' is not a number or a comma-separated list of them",
                             "write it as e.g. --input-value sr=16000") from None
    return values


def fix_input_values(model: ir.Model, values: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Replace each named graph input by a constant of its dtype and (static) shape holding ``values[name]``;
    return the manifest's ``fixed_inputs`` record ({name: {dtype, shape, value}})."""
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    fixed: dict[str, dict[str, Any]] = {}
    for name, raw in values.items():
        value = inputs.get(name)
        if value is None:
            raise EdgecError(f"--input-value names '{name}', which is not an input of the model",
                             f"its inputs are: {', '.join(inputs)}")
        if value.dtype is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
            raise EdgecError(f"--input-value {name}: the input's dtype or shape is not static",
                             f"fix its shape with --input-shape {name}:...")
        dtype = value.dtype.numpy()
        shape = tuple(int(d) for d in value.shape)
        array = np.asarray(raw, dtype=np.float64)
        if array.size not in (1, int(np.prod(shape, dtype=np.int64))):
            raise EdgecError(f"--input-value {name}: {array.size} values for an input of shape {shape}",
                             "give one value (repeated) or one per element")
        wanted = np.broadcast_to(array.reshape(()) if array.size == 1 else array.reshape(shape), shape)
        converted = wanted.astype(dtype)
        if not np.array_equal(converted.astype(np.float64), wanted):
            raise EdgecError(f"--input-value {name}: {text_of(raw)} is not exact as {dtype.name}",
                             f"give values the input's dtype ({dtype.name}) holds")
        const = ir.Value(name=f"{name}_fixed", shape=ir.Shape(shape), type=ir.TensorType(value.dtype),
                         const_value=ir.tensor(converted, name=f"{name}_fixed"))
        graph.register_initializer(const)
        replace_value(graph, value, const)
        graph.inputs.remove(value)
        fixed[name] = {"dtype": dtype.name, "shape": list(shape), "value": converted.reshape(-1).tolist()}
    return fixed


def accept_fixed_inputs(fixed: dict[str, dict[str, Any]] | None, inputs: dict) -> dict:
    """``inputs`` without the artifact's fixed inputs, each checked to hold its compiled value."""
    if not fixed:
        return inputs
    rest = dict(inputs)
    for name, spec in fixed.items():
        if name not in rest:
            continue
        given = np.asarray(rest.pop(name))
        want = np.asarray(spec["value"], dtype=spec["dtype"]).reshape(spec["shape"])
        if given.size != want.size or not np.array_equal(given.reshape(want.shape).astype(want.dtype), want):
            raise EdgecError(f"input '{name}' was fixed to {text_of(spec['value'])} when this artifact was compiled; "
                             f"it cannot run {name}={text_of(given.reshape(-1).tolist())}",
                             f"compile again with --input-value {name}=VALUE for that value")
    return rest


def fixed_feed(fixed: dict[str, dict[str, Any]] | None) -> dict[str, np.ndarray]:
    """The fixed inputs as arrays: what the source model is fed next to the artifact's inputs (verify)."""
    return {name: np.asarray(spec["value"], dtype=spec["dtype"]).reshape(spec["shape"])
            for name, spec in (fixed or {}).items()}


def text_of(values: Sequence[Any]) -> str:
    """``[16000.0]`` → ``16000``; a list of several as ``1,0,1``."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
