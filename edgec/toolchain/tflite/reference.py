"""The TFLite interpreter (ai-edge-litert) as a reference: what an artifact compiled from a .tflite is checked
against, 1 thread, XNNPACK as it ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.errors import EdgecError


def interpreter(path: str | Path, threads: int = 1, xnnpack: bool = True):
    """An allocated interpreter for ``path``; ``xnnpack=False``: TFLite's builtin kernels only."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise EdgecError("the TFLite interpreter (ai-edge-litert) is not installed",
                         "pip install ai-edge-litert, or verify against optimized.onnx") from None
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it


def cannot_run(path: str | Path) -> str | None:
    """Why the interpreter cannot run ``path`` (an operator it lacks: MediaPipe's landmark ops, which only
    MediaPipe's own runtime registers), or None when it can."""
    try:
        interpreter(path)
    except RuntimeError as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    return None


def feed(it, inputs: dict[str, np.ndarray]) -> None:
    """Set the interpreter's inputs from ``inputs`` keyed by the .tflite's input names (by position where a name
    was made unique by the reader)."""
    values = list(inputs.values())
    for i, d in enumerate(it.get_input_details()):
        value = inputs[d["name"]] if d["name"] in inputs else values[i]
        it.set_tensor(d["index"], np.ascontiguousarray(value, dtype=d["dtype"]))


def interpreter_outputs(path: str | Path, inputs: dict[str, np.ndarray], xnnpack: bool = True) -> list[np.ndarray]:
    """The interpreter's outputs for ``inputs``, in its output order."""
    it = interpreter(path, xnnpack=xnnpack)
    feed(it, inputs)
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


def interpreter_spread(path: str | Path, inputs: dict[str, np.ndarray]) -> list[float]:
    """How far the interpreter's own two kernel sets (XNNPACK, and TFLite's builtin kernels) are apart, per
    output: float32 summation order alone moves a deep net's large outputs (MediaPipe's pose segmentation logits,
    ~1e3 on random inputs) by more than 1e-4 of their magnitude, and a correct compiler can do no better."""
    fast = interpreter_outputs(path, inputs, xnnpack=True)
    try:
        builtin = interpreter_outputs(path, inputs, xnnpack=False)
    except RuntimeError:  # a MediaPipe op only XNNPACK implements (Convolution2DTransposeBias): no second run
        return [0.0] * len(fast)
    return [float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
            for a, b in zip(fast, builtin)]
