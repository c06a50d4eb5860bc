"""Quantization arithmetic shared by the QDQ pass, the report and (later) the integer TVM lowering.

Conventions, the ONNX ones (QuantizeLinear / DequantizeLinear):

* ``q = saturate(round_half_even(x / scale) + zero_point)`` and ``x̂ = (q - zero_point) * scale``.
* Activations: asymmetric, per tensor, uint8 by default (what x86 VNNI multiplies: u8 × s8), with the float
  range widened to include 0 so that zero (padding, ReLU) is exact.
* Weights: symmetric (zero point 0), int8 in [-127, 127] (the -128 code is left unused so that negating never
  overflows and int16 pairwise sums in VNNI-style kernels cannot saturate), int4 in [-7, 7]; per tensor, per
  output channel, or per block of ``block`` input channels (ONNX blocked quantization, opset 21).
* Bias: int32 with scale ``input_scale * weight_scale`` (per channel when the weights are), zero point 0, so an
  integer kernel adds it straight to its int32 accumulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["is_quantized_op", "is_quantized_model", "ActivationQParams", "WeightQuant", "activation_qparams",
           "quantize", "dequantize", "quantize_weight", "finite_or_none",
           "sqnr_db", "QRANGES", "binarize_weight"]

# operators that hold quantized arithmetic; QLinear* and *Integer (ConvInteger, MatMulInteger) by name below
_QUANTIZED_OP_TYPES = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                       "QAttention", "QGemm", "QuantizeBFP", "DequantizeBFP"}


def is_quantized_op(op_type: str) -> bool:
    """Whether an operator shows a model is quantized (QDQ, QLinear*, *Integer)."""
    return op_type in _QUANTIZED_OP_TYPES or op_type.startswith("QLinear") or op_type.endswith("Integer")


def is_quantized_model(model) -> bool:
    """Whether an ``onnx.ModelProto``'s graph holds a quantized operator (:func:`is_quantized_op`)."""
    return any(is_quantized_op(node.op_type) for node in model.graph.node)


# (qmin, qmax, numpy storage dtype) per quantized type; int4 values are stored in int8 arrays until serialized.
QRANGES: dict[str, tuple[int, int, type]] = {
    "uint8": (0, 255, np.uint8),
    "int8": (-128, 127, np.int8),
    "int4": (-8, 7, np.int8),
    "int32": (-(2 ** 31), 2 ** 31 - 1, np.int32),
}
WEIGHT_QMAX = {"int8": 127, "int4": 7, "binary": 1}
WEIGHT_BITS = {"int8": 8, "int4": 4, "binary": 1}


@dataclass
class ActivationQParams:
    scale: float
    zero_point: int
    dtype: str  # "uint8" | "int8"
    lo: float   # the float range the observer chose (before widening to include zero)
    hi: float


def activation_qparams(lo: float, hi: float, dtype: str = "uint8") -> ActivationQParams:
    """Asymmetric per-tensor parameters for the float range [lo, hi] (widened to include 0)."""
    qmin, qmax, _ = QRANGES[dtype]
    a, b = min(lo, 0.0), max(hi, 0.0)
    if b - a < 1e-12:  # an all-zero tensor: any scale represents it; keep it finite and positive
        b = a + 1e-8
    scale = (b - a) / (qmax - qmin)
    zero_point = int(np.clip(round(qmin - a / scale), qmin, qmax))
    return ActivationQParams(float(np.float32(scale)), zero_point, dtype, float(lo), float(hi))


def broadcast_to_axis(p: np.ndarray | float, x: np.ndarray, axis: int | None, block: int | None) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0 or axis is None:
        return p
    if block:  # blocked: p has x's shape with dim `axis` = ceil(dim / block)
        return np.repeat(p, block, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def quantize(x: np.ndarray, scale: np.ndarray | float, zero_point: np.ndarray | int, dtype: str,
             axis: int | None = None, block: int | None = None) -> np.ndarray:
    """ONNX QuantizeLinear: round half to even, add the zero point, saturate."""
    qmin, qmax, store = QRANGES[dtype]
    s = broadcast_to_axis(scale, x, axis, block)
    z = broadcast_to_axis(zero_point, x, axis, block)
    return np.clip(np.rint(x.astype(np.float64) / s) + z, qmin, qmax).astype(store)


def dequantize(q: np.ndarray, scale: np.ndarray | float, zero_point: np.ndarray | int = 0,
               axis: int | None = None, block: int | None = None) -> np.ndarray:
    """ONNX DequantizeLinear, computed in float32 as onnxruntime does."""
    s = broadcast_to_axis(scale, q, axis, block).astype(np.float32)
    z = broadcast_to_axis(zero_point, q, axis, block)
    return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


@dataclass
class WeightQuant:
    """One quantized weight: integer values (int8 array, also for int4), scale, and how it is laid out."""

    q: np.ndarray
    scale: np.ndarray        # 0-d (tensor), 1-d (channel) or blocked (x's shape with ceil(dim/block) on `axis`)
    bits: int
    granularity: str         # "tensor" | "channel" | "group:N"
    axis: int | None         # the DequantizeLinear axis (None for per tensor)
    block: int | None        # the DequantizeLinear block_size (group-wise only)

    @property
    def dtype(self) -> str:
        return {4: "int4", 1: "binary"}.get(self.bits, "int8")

    def dequantized(self) -> np.ndarray:
        return dequantize(self.q, self.scale, 0, self.axis, self.block)

    def nbytes(self) -> int:
        """Stored bytes: packed values (int4: two per byte, binary: eight) plus float32 scales."""
        return math.ceil(self.q.size * self.bits / 8) + 4 * int(np.asarray(self.scale).size)


def quantize_weight(w: np.ndarray, dtype: str, granularity: str, out_axis: int, in_axis: int,
                    search: bool | None = None) -> WeightQuant:
    """Symmetric weight quantization.

    ``out_axis`` is the output-channel axis (per-channel scales), ``in_axis`` the reduction axis (group-wise
    blocks). ``search`` (default: on for int4) picks each scale's clipping by minimising the squared error over
    20 candidates from 0.5 to 1.0 of the absmax: at 4 bits clipping a few outliers halves the step for the rest.
    """
    if dtype == "binary":
        return binarize_weight(w, granularity, out_axis)
    qmax = WEIGHT_QMAX[dtype]
    bits = WEIGHT_BITS[dtype]
    search = (bits < 8) if search is None else search
    w = w.astype(np.float64)
    if granularity == "tensor":
        view, axis, block = w.reshape(1, -1), None, None
    elif granularity == "channel":
        view, axis, block = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1), out_axis, None
    elif granularity.startswith("group:"):
        block = int(granularity.split(":", 1)[1])
        axis = in_axis
        moved = np.moveaxis(w, in_axis, -1)  # (..., K)
        k = moved.shape[-1]
        groups = math.ceil(k / block)
        padded = np.zeros(moved.shape[:-1] + (groups * block,))
        padded[..., :k] = moved
        view = padded.reshape(-1, block)  # one row per (other dims..., group)
    else:
        raise ValueError(f"unknown granularity {granularity}")
    absmax = np.max(np.abs(view), axis=1)
    ratios = np.linspace(0.5, 1.0, 21) if search else np.array([1.0])
    best_scale = np.where(absmax > 0, absmax / qmax, 1.0)
    best_err = np.full(absmax.shape, np.inf)
    for r in ratios:
        s = np.where(absmax > 0, absmax * r / qmax, 1.0).astype(np.float32).astype(np.float64)
        deq = np.clip(np.rint(view / s[:, None]), -qmax, qmax) * s[:, None]
        err = np.sum((view - deq) ** 2, axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, s, best_scale)
    scale = best_scale.astype(np.float32)
    if granularity == "tensor":
        scale_arr = np.asarray(scale[0], dtype=np.float32)
    elif granularity == "channel":
        scale_arr = scale
    else:
        moved_shape = np.moveaxis(w, in_axis, -1).shape[:-1] + (math.ceil(w.shape[in_axis] / block),)
        scale_arr = np.moveaxis(scale.reshape(moved_shape), -1, in_axis).astype(np.float32)
    q = np.clip(np.rint(w / broadcast_to_axis(scale_arr, w, axis, block)), -qmax, qmax).astype(np.int8)
    return WeightQuant(q=q, scale=scale_arr, bits=bits, granularity=granularity, axis=axis, block=block)


def binarize_weight(w: np.ndarray, granularity: str, out_axis: int) -> WeightQuant:
    """``w ≈ α·sign(w)``: q = ±1 (``sign(0) = +1``), α = mean(|w|) per output channel or per tensor.

    For a fixed sign pattern ``b`` the error ``‖w − α·b‖²`` is a parabola in α with its minimum at
    ``α = ⟨w, b⟩ / n``, which for ``b = sign(w)`` is ``mean(|w|)``; and ``sign(w)`` is the best pattern for any α > 0.
    An all-zero channel gets α = 1.0 (any α reproduces it no better; a positive scale keeps DequantizeLinear valid).
    """
    w = np.asarray(w, np.float64)
    q = np.where(w >= 0, 1, -1).astype(np.int8)
    if granularity == "tensor":
        alpha, axis = np.mean(np.abs(w)), None
        scale = np.asarray(alpha if alpha > 0 else 1.0, np.float32)
    elif granularity == "channel":
        axis = out_axis
        alpha = np.mean(np.abs(np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1)), axis=1)
        scale = np.where(alpha > 0, alpha, 1.0).astype(np.float32)
    else:
        raise ValueError(f"binary weights support tensor or channel granularity, not {granularity}")
    return WeightQuant(q=q, scale=scale, bits=1, granularity=granularity, axis=axis, block=None)


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """10·log10(Σx² / Σ(x - x̂)²); +inf when the quantized values are exact."""
    if noise_energy <= 0:
        return math.inf
    if signal_energy <= 0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


def finite_or_none(x: float) -> float | None:
    """JSON has no infinity: an exact (noise-free) SQNR is reported as null."""
    return x if math.isfinite(x) else None
