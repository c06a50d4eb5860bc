"""Equalize the channels of a Conv output that a depthwise Conv reads, before activation calibration.

Why: activations are quantized per tensor, so one uint8 step serves every channel; where a tensor's channels
span very different ranges, the narrow ones keep a few levels. PP-OCRv4's recognizer starts with a 3×3 conv whose
16 channels reach from ±1 (median) to ±20, read directly by a depthwise conv: its output was the most sensitive
activation of the model (kept float alone, the int8 model's character accuracy rose 0.4–1.6 pt, by calibration
set). Dividing channel ``c`` of the first conv (weights and bias) by ``s_c`` and multiplying the depthwise conv's
filters on that channel by ``s_c`` leaves the float model's output unchanged (cross-layer equalization, Nagel et
al. 2019), and brings every channel to the widest one's range.

When it is free: with per-channel weight scales, each scaled row of the first conv is an output channel of its
own and each scaled depthwise filter too, so their weight quantization is the same as before (the scale absorbs
``s_c``); only the activation between them changes, for the better. A ReLU in between commutes with a positive
scale and is allowed; anything else (a clip, a shared tensor, a second reader, a graph output) is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx_ir as ir

from edgec.calibration import capture

__all__ = ["DepthwisePair", "depthwise_pairs", "equalize", "MIN_RATIO"]

MIN_RATIO = 1e-2  # a channel is scaled up at most 100× (a dead channel must not blow up its weights)

Feeds = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass
class DepthwisePair:
    first: ir.Node      # Conv whose output (through an optional Relu) only the depthwise conv reads
    depthwise: ir.Node  # Conv with group = input channels
    tensor: ir.Value    # what the depthwise conv reads: the activation to equalize


def _single_reader(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node if uses[0].idx == 0 else None


def _private_const(node: ir.Node, index: int) -> np.ndarray | None:
    """The constant initializer at ``node.inputs[index]`` if nothing else reads it."""
    if len(node.inputs) <= index or node.inputs[index] is None:
        return None
    value = node.inputs[index]
    if value.const_value is None or not value.is_initializer() or len(list(value.uses())) != 1:
        return None
    return value.const_value.numpy()


def depthwise_pairs(model: ir.Model) -> list[DepthwisePair]:
    """Conv → (Relu →) depthwise Conv chains whose weights can take the scales (module docstring)."""
    pairs = []
    for node in model.graph:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        w1 = _private_const(node, 1)
        if w1 is None or w1.ndim != 4 or w1.dtype != np.float32 or (len(node.inputs) > 2 and node.inputs[2] is not None
                                          and _private_const(node, 2) is None):
            continue
        tensor = node.outputs[0]
        reader = _single_reader(tensor)
        if reader is not None and reader.op_type == "Relu" and reader.domain in ("", "ai.onnx"):
            tensor = reader.outputs[0]
            reader = _single_reader(tensor)
        if reader is None or reader.op_type != "Conv" or reader.domain not in ("", "ai.onnx"):
            continue
        w2 = _private_const(reader, 1)
        group = reader.attributes["group"].value if "group" in reader.attributes else 1
        depthwise = w2 is not None and w2.ndim == 4 and w2.shape[1] == 1 and group == w1.shape[0]
        if not depthwise or w2.dtype != np.float32 or w2.shape[0] % group:
            continue
        pairs.append(DepthwisePair(node, reader, tensor))
    return pairs


def _channel_absmax(model: ir.Model, names: list[str], feeds: Iterable[dict[str, np.ndarray]]
                    ) -> dict[str, np.ndarray]:
    peaks: dict[str, np.ndarray] = {}

    def update(_indices: range, values: list[np.ndarray]) -> None:
        for name, v in zip(names, values):
            peak = np.max(np.abs(v), axis=tuple(i for i in range(v.ndim) if i != 1)).astype(np.float64)
            peaks[name] = peak if name not in peaks else np.maximum(peaks[name], peak)

    capture.run(ir.serde.serialize_model(model), names, feeds, update)
    return peaks


def equalize(model: ir.Model, feeds: Feeds) -> list[str]:
    """Equalize every :func:`depthwise_pairs` chain of ``model`` in place from its calibration peaks; returns one
    note per chain changed."""
    pairs = depthwise_pairs(model)
    if not pairs:
        return []
    peaks = _channel_absmax(model, [p.tensor.name for p in pairs], feeds())
    notes = []
    for pair in pairs:
        peak = peaks[pair.tensor.name]
        widest = float(peak.max())
        if widest <= 0 or float(peak.min()) >= 0.5 * widest:  # already within a factor 2: nothing to gain
            continue
        scale = np.maximum(peak, MIN_RATIO * widest) / widest  # s_c ≤ 1: channel c is divided by it
        _scale_outputs(pair.first, 1.0 / scale)
        w2 = pair.depthwise.inputs[1]
        multiplier = w2.const_value.shape[0] // scale.size  # depthwise filters per input channel
        w = w2.const_value.numpy().astype(np.float64) * np.repeat(scale, multiplier)[:, None, None, None]
        w2.const_value = ir.tensor(w.astype(np.float32), name=w2.name)
        notes.append(f"equalized {pair.first.name or pair.tensor.name} → {pair.depthwise.name or 'depthwise conv'}: "
                     f"{scale.size} channels, peaks {float(peak.min()):.3g}–{widest:.3g} brought to {widest:.3g}")
    return notes


def _scale_outputs(conv: ir.Node, factor: np.ndarray) -> None:
    """Multiply output channel ``c`` of ``conv`` (weights and bias) by ``factor[c]``."""
    w = conv.inputs[1]
    w.const_value = ir.tensor((w.const_value.numpy().astype(np.float64) * factor[:, None, None, None])
                              .astype(np.float32), name=w.name)
    if len(conv.inputs) > 2 and conv.inputs[2] is not None:
        b = conv.inputs[2]
        b.const_value = ir.tensor((b.const_value.numpy().astype(np.float64) * factor).astype(np.float32),
                                  name=b.name)
