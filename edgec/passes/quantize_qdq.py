"""Quantize a float model into standard QDQ ONNX: QuantizeLinear/DequantizeLinear around Conv, Gemm and MatMul.

Why QDQ: it is the one quantized form every consumer reads. onnxruntime runs it (and fuses DQ → Conv → Q into its
integer QLinearConv kernels), and edgec's TVM lowering recognises the same pattern to emit int8 × int8 → int32
kernels; the float model stays readable in between, so accuracy can be measured before any compilation.

What is quantized, and how (see :mod:`edgec.quantization.qmath` for the arithmetic):

* Weights of Conv / Gemm / MatMul that are initializers: symmetric int8 or int4, per tensor, per output channel
  or per block of input channels (``group:N``, ONNX blocked quantization). int4 is stored as ONNX INT4 (packed,
  two per byte); onnxruntime ≥ 1.18 runs those DequantizeLinear nodes.
* Activations (``activations="int8"``): every float input of those layers and every layer output (after a
  following Relu, so the pair becomes one integer kernel with fused ReLU), per tensor, asymmetric uint8 by
  default, with ranges from streaming observers fed by onnxruntime running the float model on calibration data.
  Graph outputs stay float (logits keep their precision; an integer kernel dequantizes its int32 accumulator),
  and so does a layer output that no quantized layer reads, directly or through float ops (a head's logits
  before its Softmax). With per-channel weights, a Conv output that a depthwise Conv reads is first equalized
  (channel ranges brought to one, exactly, through both convs' weights: :mod:`edgec.quantization.equalize`).
* Biases of layers whose input is quantized: int32 with scale ``input_scale × weight_scale``, what an integer
  kernel adds to its accumulator (kept float for group-wise weights, which have no single per-channel scale).
* Bias correction (optional): quantization shifts each layer's output mean; layer by layer in graph order, the
  per-channel mean of the quantized model's layer output is measured on the calibration data (with the earlier
  layers already corrected) and the difference to the float model's mean is added to the bias.

The opset is raised to 13 (per-axis DequantizeLinear) or 21 (INT4, block_size) when lower. A model that already
holds quantized operators is refused: quantizing twice compounds the error and the ranges would be meaningless.
This pass must run after BatchNorm folding, else the folded weights would be float again.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir

from edgec.calibration import capture
from edgec.calibration.observers import OBSERVERS, Observer, get_observer
from edgec.errors import EdgecError
from edgec.passes.base import PRECISION_HINT, EdgecPass, register_pass
from edgec.quantization import collect
from edgec.quantization.adder_qdq import find_adders, quantize_adder_weight
from edgec.quantization.equalize import equalize
from edgec.quantization.method_choice import AUTO, choose_method
from edgec.quantization.qmath import (ActivationQParams, WeightQuant, activation_qparams, finite_or_none,
                                      is_quantized_op, quantize, quantize_weight, sqnr_db)

__all__ = ["QuantConfig", "QuantizeQDQ", "quantized_ops", "WEIGHT_CHOICES", "ACTIVATION_CHOICES",
           "PRECISION_CHOICES", "layer_keys"]

WEIGHT_CHOICES = ("int8", "int4", "binary")  # binary: ±α per output channel (int8 ±1 + scale in the QDQ model)
# per-layer overrides, lowest first ("float": left unquantized)
PRECISION_CHOICES = ("binary", "int4", "int8", "float")
# PRECISION_HINT (passes/base): unroll_rnn keeps the MatMuls of an unrolled LSTM float, as onnxruntime keeps a
# whole LSTM float — quantizing the state at every step accumulates the error over the sequence.
ACTIVATION_CHOICES = ("int8", "fp32")

Feeds = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass
class QuantConfig:
    """What to quantize and how; ``validate`` turns a bad choice into a user error before any work."""

    weights: str = "int8"
    activations: str = "int8"
    granularity: str = "channel"
    method: str = "auto"  # per model, minmax or percentile: edgec.quantization.method_choice
    bias_correction: bool = False
    adaround: bool = False
    adaround_iterations: int = 1000
    activation_dtype: str = "uint8"
    percentile: float = 99.99
    bins: int = 2048
    # Conv → depthwise Conv activations brought to one range before calibration (exact in float, free with
    # per-channel weight scales: :mod:`edgec.quantization.equalize`)
    equalize: bool = True
    # per layer (node name, weight name, or weight name without ".weight") → "int8" | "int4" | "float"; a float
    # layer keeps its float weight and reads float inputs (no QDQ on them), see ``_activation_values``
    overrides: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.weights not in WEIGHT_CHOICES:
            raise EdgecError(f"unknown weight precision '{self.weights}'", f"use one of: {', '.join(WEIGHT_CHOICES)}")
        if self.activations not in ACTIVATION_CHOICES:
            raise EdgecError(f"unknown activation precision '{self.activations}'",
                             f"use one of: {', '.join(ACTIVATION_CHOICES)}")
        if self.method not in OBSERVERS and self.method != AUTO:
            raise EdgecError(f"unknown calibration method '{self.method}'",
                             f"use one of: {', '.join([AUTO, *OBSERVERS])}")
        if self.activation_dtype not in ("uint8", "int8"):
            raise EdgecError(f"unknown activation type '{self.activation_dtype}'", "use uint8 or int8")
        for key, prec in self.overrides.items():
            if prec not in PRECISION_CHOICES:
                raise EdgecError(f"unknown precision '{prec}' for layer '{key}'",
                                 f"use one of: {', '.join(PRECISION_CHOICES)}")
        if self.adaround_iterations < 1:
            raise EdgecError(f"AdaRound needs at least one iteration (got {self.adaround_iterations})",
                             "pass a positive number of iterations")
        g = self.granularity
        uses_binary = self.weights == "binary" or "binary" in self.overrides.values()
        if uses_binary and g not in ("tensor", "channel"):
            raise EdgecError(f"binary weights do not support granularity '{g}'",
                             "use --granularity channel (one scale α per output channel) or tensor")
        if uses_binary and self.adaround:
            raise EdgecError("AdaRound does not apply to binary weights (there is no rounding to learn)",
                             "drop --adaround")
        if g not in ("tensor", "channel"):
            size = g.split(":", 1)[1] if g.startswith("group:") else ""
            if not size.isdigit() or int(size) < 2:
                raise EdgecError(f"unknown granularity '{g}'", "use tensor, channel, or group:N with N ≥ 2 (e.g. "
                                                               "group:32)")

    @property
    def min_opset(self) -> int:
        return 21 if self.weights == "int4" or self.granularity.startswith("group:") else 13

    def precision(self, keys: Iterable[str]) -> str:
        """The precision of the layer known by ``keys`` (see :func:`layer_keys`): its override, else ``weights``."""
        for key in keys:
            if key in self.overrides:
                return self.overrides[key]
        return self.weights

    def observer(self) -> Observer:
        if self.method == "minmax":
            return get_observer("minmax")
        if self.method == "percentile":
            return get_observer("percentile", bins=self.bins, percentile=self.percentile)
        return get_observer(self.method, bins=self.bins)


@dataclass
class _Layer:
    node: ir.Node
    weight: ir.Value
    out_axis: int
    in_axis: int
    output: ir.Value            # the op's own output (pre-activation): bias correction and SQNR look here
    activation_out: ir.Value    # after a fused Relu: where the output Q/DQ goes
    bias_index: int | None      # input index of the bias (2 for Conv and Gemm), None when the op has none
    wq: WeightQuant | None = None
    bias_float: np.ndarray | None = None
    bias_value: ir.Value | None = None
    bias_scale: np.ndarray | None = None  # int32 bias scale, or None when the bias stays float
    bias_shift: np.ndarray | None = None  # what bias correction added
    q_value: ir.Value | None = None       # the integer weight initializer (AdaRound rewrites it)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.node.name or self.output.name

    @property
    def keys(self) -> tuple[str, ...]:
        return layer_keys(self.name, self.weight.name)


def layer_precision(cfg: QuantConfig, layer) -> str:
    """A layer's precision: the user's override, else the hint of the pass that made its node
    (``PRECISION_HINT``), else the configured weights precision."""
    if any(key in cfg.overrides for key in layer.keys):
        return cfg.precision(layer.keys)
    hint = layer.node.metadata_props.get(PRECISION_HINT)
    return hint if hint in PRECISION_CHOICES else cfg.weights


def layer_keys(node_name: str, weight_name: str) -> tuple[str, ...]:
    """The names an override may use for a layer: node name, weight name, weight name without ``.weight``."""
    short = weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name
    return tuple(dict.fromkeys((node_name, weight_name, short)))


def quantized_ops(model: ir.Model) -> dict[str, int]:
    """Operators that show a model is already quantized (QDQ, QLinear*, *Integer), with their counts."""
    found: dict[str, int] = {}
    for node in model.graph.all_nodes():
        if is_quantized_op(node.op_type):
            found[node.op_type] = found.get(node.op_type, 0) + 1
    return found


@register_pass
class QuantizeQDQ(EdgecPass):
    name = "quantize_qdq"
    description = "insert QuantizeLinear/DequantizeLinear for weights and calibrated activations (QDQ format)"

    def __init__(self, config: QuantConfig | None = None, calibration: Feeds | None = None,
                 activation_cache: dict[str, ActivationQParams] | None = None) -> None:
        """``activation_cache``: activation ranges by tensor name, read and filled in. Ranges come from the *float*
        model, so they do not depend on which layers are quantized: a precision search calibrates once."""
        super().__init__()
        self.config = config or QuantConfig()
        self.calibration = calibration
        self.activation_cache = activation_cache
        self._names: set[str] = set()
        self._float_nodes: set[int] = set()  # ids of the nodes of layers kept float (their inputs stay float)

    # ------------------------------------------------------------------------------------------------ driver

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        cfg = self.config
        cfg.validate()
        already = quantized_ops(model)
        if already:
            ops = ", ".join(f"{n}×{op}" for op, n in sorted(already.items()))
            raise EdgecError(f"the model is already quantized ({ops})", "quantize the float model instead")
        needs_data = cfg.activations == "int8" or cfg.bias_correction or cfg.adaround
        if needs_data and self.calibration is None:
            raise EdgecError("activation quantization, bias correction and AdaRound need calibration data",
                             "pass --calib (a folder, .npy/.npz, or none for data-free)")
        if not self._find_layers(model) and not (cfg.activations == "int8" and find_adders(model)):
            raise EdgecError("the model has no Conv, Gemm, MatMul or AdderConv with constant weights to quantize",
                             "quantization applies to models with such layers")
        choice = None
        if cfg.method == AUTO:  # resolved here, on the model as given, before any rewriting
            if cfg.activations == "int8":
                assert self.calibration is not None
                choice = choose_method(model, cfg, self.calibration)
                if self.activation_cache is None:
                    self.activation_cache = {}
                self.activation_cache.update(choice.ranges)
            cfg = self.config = dataclasses.replace(cfg, method=choice.method if choice else "minmax")
        notes: list[str] = []
        found = self._find_layers(model)
        adder_keys = [layer_keys(a.name, a.weight.name) for a in find_adders(model)]
        known = {key for layer in found for key in layer.keys} | {key for keys in adder_keys for key in keys}
        unknown = [key for key in cfg.overrides if key not in known]
        if unknown:
            raise EdgecError(f"no quantizable layer named '{unknown[0]}'",
                             "name a Conv/Gemm/MatMul/AdderConv by node or weight name: "
                             + ", ".join([layer.keys[-1] for layer in found] + [k[-1] for k in adder_keys]))
        for keys in adder_keys:
            wrong = [cfg.overrides[k] for k in keys if k in cfg.overrides and cfg.overrides[k] not in ("int8", "float")]
            if wrong:
                raise EdgecError(f"adder layer '{keys[0]}' cannot be {wrong[0]}",
                                 "an AdderConv is quantized to int8 (input and weights on one grid) or kept float")
        precisions = [layer_precision(cfg, layer) for layer in found]
        min_opset = 21 if "int4" in precisions or (cfg.granularity.startswith("group:") and any(
            p != "float" for p in precisions)) else 13
        opset = model.opset_imports.get("", 1)
        if opset < min_opset:
            upgrade_opset(model, min_opset)
            notes.append(f"opset {opset} → {min_opset} (needed by "
                         f"{'INT4/blocked' if min_opset == 21 else 'per-axis'} DequantizeLinear)")
        if cfg.activations == "int8" and cfg.granularity == "channel" and cfg.equalize:
            assert self.calibration is not None
            notes.extend(equalize(model, self.calibration))
        layers = self._find_layers(model)  # again: a converter may have rebuilt the graph's nodes
        self._float_nodes = {id(layer.node) for layer in layers if layer_precision(cfg, layer) == "float"}
        adders = find_adders(model) if cfg.activations == "int8" else []
        float_adders = [a for a in adders if cfg.precision(layer_keys(a.name, a.weight.name)) == "float"]
        self._float_nodes |= {id(a.node) for a in float_adders}  # adders kept float read the float input
        adders = [a for a in adders if a not in float_adders]
        self._names = {v.name for v in _all_values(model) if v.name}
        float_proto = ir.serde.serialize_model(model)

        act_params: dict[str, ActivationQParams] = {}
        if cfg.activations == "int8":
            names = self._activation_values(model, layers)
            names += [a.input.name for a in adders if a.input.name not in names]
            act_params = self._calibrate(float_proto, names)
        # an adder's weights go on its input's grid (quantization/adder_qdq.py)
        adder_rows = [quantize_adder_weight(adder, act_params[adder.input.name],
                                            lambda base, a: self._initializer(model, base, a), self._unique,
                                            model.graph) for adder in adders]
        for adder in adders:
            _drop_if_unused(model, adder.weight)
        for layer in layers:
            if id(layer.node) in self._float_nodes:
                layer.report = _float_report(layer)
            else:
                self._quantize_weights(model, layer, act_params)
        for name, qp in act_params.items():
            self._insert_qdq(model, name, qp)
        model.graph.sort()
        if "binary" in precisions:
            notes.append("binary weights: post-training binarisation without retraining loses most of the accuracy "
                         "of a float-trained model; they are meant for models trained binary-aware (BWN/XNOR-Net)")
        hinted = [layer for layer in layers if id(layer.node) in self._float_nodes
                  and not any(key in cfg.overrides for key in layer.keys)]
        chosen = [layer for layer in layers if id(layer.node) in self._float_nodes and layer not in hinted]
        if chosen:
            notes.append("kept float: " + ", ".join(layer.keys[-1] for layer in chosen))
        if hinted:
            notes.append(f"kept float: {len(hinted)} MatMuls of unrolled LSTM/GRU/RNN layers (as onnxruntime keeps "
                         "recurrent layers float; override one with --override NAME=int8)")
        if cfg.adaround:
            notes.extend(self._adaround(model, float_proto, [layer for layer in layers
                                                             if id(layer.node) not in self._float_nodes]))
        if cfg.bias_correction:
            notes.extend(self._bias_correction(model, float_proto, layers))
        if self.calibration is not None:
            self._layer_sqnr(float_proto, ir.serde.serialize_model(model), [*layers, *adders])
        return {
            "changed": True,
            "config": {"weights": cfg.weights, "activations": cfg.activations, "granularity": cfg.granularity,
                       "method": cfg.method, "bias_correction": cfg.bias_correction, "adaround": cfg.adaround,
                       "activation_dtype": cfg.activation_dtype if cfg.activations == "int8" else None,
                       "overrides": dict(cfg.overrides)},
            "opset": model.opset_imports.get("", opset),
            "layers": [layer.report for layer in layers] + adder_rows,
            "activations": {n: _qp_dict(qp) for n, qp in act_params.items()},
            **({"method_choice": choice.to_dict()} if choice is not None else {}),
            "notes": notes,
        }

    # ------------------------------------------------------------------------------------------------ discovery

    def _find_layers(self, model: ir.Model) -> list[_Layer]:
        layers: list[_Layer] = []
        seen_weights: set[int] = set()
        for node in model.graph:
            if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
                continue
            w = node.inputs[1]
            if w is None or w.const_value is None or not w.is_initializer() or w.dtype != ir.DataType.FLOAT:
                continue
            if id(w) in seen_weights:  # a weight shared by two layers is quantized once, for the first
                continue
            ndim = len(w.shape) if w.shape is not None else w.const_value.numpy().ndim
            attrs = {k: a.value for k, a in node.attributes.items()}
            if node.op_type == "Conv":
                out_axis, in_axis, bias_index = 0, 1, 2
            elif node.op_type == "Gemm" and ndim == 2:
                if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                    bias_index = None
                else:
                    bias_index = 2
                out_axis, in_axis = (0, 1) if attrs.get("transB", 0) else (1, 0)
            elif node.op_type == "MatMul" and ndim == 2:
                out_axis, in_axis, bias_index = 1, 0, None
            else:
                continue
            seen_weights.add(id(w))
            out = node.outputs[0]
            act_out = out
            uses = list(out.uses())
            if (len(uses) == 1 and uses[0].node.op_type == "Relu" and uses[0].node.domain == ""
                    and not out.is_graph_output()):
                act_out = _relu6_min(uses[0].node.outputs[0])
            layers.append(_Layer(node, w, out_axis, in_axis, out, act_out, bias_index))
        return layers

    def _activation_values(self, model: ir.Model, layers: list[_Layer]) -> list[str]:
        """Float tensors to quantize: layer data inputs and (fused) layer outputs, never graph outputs, nor a layer
        output from which no quantized layer can be reached (see :func:`_feeds_a_quantized_layer`); none for
        layers kept float (their output is still quantized where a quantized layer reads it)."""
        quantized = {id(layer.node) for layer in layers if id(layer.node) not in self._float_nodes}
        wanted: list[str] = []
        for layer in layers:
            if id(layer.node) in self._float_nodes:
                continue
            for v in (layer.node.inputs[0], layer.activation_out):
                if (v is None or v.const_value is not None or v.is_graph_output() or v.name in wanted
                        or (v.dtype is not None and v.dtype != ir.DataType.FLOAT)):
                    continue
                if self._float_nodes and all(id(u.node) in self._float_nodes for u in v.uses()):
                    continue  # only float layers read it: it stays float
                if v is layer.activation_out and not _feeds_a_quantized_layer(v, quantized):
                    continue
                wanted.append(v.name)
        return wanted

    # ------------------------------------------------------------------------------------------------ ranges

    def _calibrate(self, float_proto: onnx.ModelProto, names: list[str]) -> dict[str, ActivationQParams]:
        assert self.calibration is not None
        cache = self.activation_cache if self.activation_cache is not None else {}
        observers = {n: self.config.observer() for n in names if n not in cache}
        if observers:
            batches = collect.observe(float_proto, observers, self.calibration())
            if batches == 0:
                raise EdgecError("the calibration data gave no samples", "pass a non-empty --calib")
        for name, obs in observers.items():
            lo, hi = obs.compute_range(8)
            cache[name] = activation_qparams(lo, hi, self.config.activation_dtype)
        return {n: cache[n] for n in names}

    # ------------------------------------------------------------------------------------------------ rewriting

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def _initializer(self, model: ir.Model, base: str, array: np.ndarray,
                     dtype: ir.DataType | None = None) -> ir.Value:
        name = self._unique(base)
        tensor = ir.Tensor(array, dtype=dtype, name=name) if dtype is not None else ir.tensor(array, name=name)
        value = ir.Value(name=name, const_value=tensor, shape=ir.Shape(array.shape), type=ir.TensorType(
            dtype or tensor.dtype))
        model.graph.register_initializer(value)
        return value

    def _quantize_weights(self, model: ir.Model, layer: _Layer, acts: dict[str, ActivationQParams]) -> None:
        cfg = self.config
        w_float = layer.weight.const_value.numpy().astype(np.float32)
        granularity = cfg.granularity
        wq = quantize_weight(w_float, layer_precision(cfg, layer), granularity, layer.out_axis, layer.in_axis)
        layer.wq = wq
        storage = wq.q.astype(ml_dtypes.int4) if wq.bits == 4 else wq.q
        q_value = self._initializer(model, f"{layer.weight.name}_quantized", storage,
                                    ir.DataType.INT4 if wq.bits == 4 else ir.DataType.INT8)
        layer.q_value = q_value
        s_value = self._initializer(model, f"{layer.weight.name}_scale", np.asarray(wq.scale, np.float32))
        attrs: dict[str, int] = {}
        if wq.axis is not None:
            attrs["axis"] = wq.axis
        if wq.block:
            attrs["block_size"] = wq.block
        dq_out = ir.Value(name=self._unique(f"{layer.weight.name}_dequantized"), shape=layer.weight.shape,
                          type=ir.TensorType(ir.DataType.FLOAT))
        dq = ir.node("DequantizeLinear", [q_value, s_value], attributes=attrs, outputs=[dq_out],
                     name=self._unique(f"{layer.name}/weight_dq"))
        model.graph.insert_before(layer.node, dq)
        old = layer.weight
        for use in list(old.uses()):
            if use.node is layer.node or use.node.inputs[use.idx] is old:
                use.node.replace_input_with(use.idx, dq_out)
        _drop_if_unused(model, old)

        # bias: int32 when the input is quantized and the weight has per-tensor/channel scales
        bias = layer.node.inputs[layer.bias_index] if (layer.bias_index is not None
                                                       and len(layer.node.inputs) > layer.bias_index) else None
        n_out = w_float.shape[layer.out_axis]
        if bias is not None and (bias.const_value is None or len(list(bias.uses())) != 1):
            bias = None  # computed or shared biases are left alone
            layer.bias_index = None
        if bias is not None:
            layer.bias_float = bias.const_value.numpy().astype(np.float64).reshape(-1)
        elif layer.bias_index is not None and cfg.bias_correction:
            layer.bias_float = np.zeros(n_out)  # bias correction needs one to fold the shift into
        x = layer.node.inputs[0]
        x_qp = acts.get(x.name) if x is not None else None
        if layer.bias_float is not None:
            if x_qp is not None and not granularity.startswith("group:") and layer.bias_float.size == n_out:
                layer.bias_scale = (np.float32(x_qp.scale) * np.asarray(wq.scale, np.float32)).astype(np.float32)
            self._write_bias(model, layer, bias)

        w_sq, e_sq = float(np.sum(w_float.astype(np.float64) ** 2)), float(
            np.sum((w_float.astype(np.float64) - wq.dequantized()) ** 2))
        scales = np.asarray(wq.scale, np.float64).reshape(-1)
        layer.report = {
            "layer": layer.name, "op": layer.node.op_type, "weight": old.name, "bits": wq.bits,
            "granularity": wq.granularity,
            "weight_scale": [float(scales.min()), float(scales.max())], "weight_zero_point": 0,
            "weight_sqnr_db": finite_or_none(sqnr_db(w_sq, e_sq)),
            "float_bytes": int(w_float.nbytes), "quantized_bytes": wq.nbytes(),
            "input": _qp_dict(x_qp) if x_qp is not None else None,
            "output": _qp_dict(acts[layer.activation_out.name]) if layer.activation_out.name in acts else None,
            "bias": None if layer.bias_float is None else ("int32" if layer.bias_scale is not None else "float"),
            "precision": wq.dtype,
        }

    def _write_bias(self, model: ir.Model, layer: _Layer, original: ir.Value | None) -> None:
        """(Re)write the layer's bias from ``layer.bias_float``: int32 + DequantizeLinear, or float."""
        assert layer.bias_float is not None and layer.bias_index is not None
        if layer.bias_value is not None:  # rewrite in place (bias correction)
            if layer.bias_scale is not None:
                q = quantize(layer.bias_float, layer.bias_scale, 0, "int32", axis=0 if layer.bias_scale.ndim else None)
                layer.bias_value.const_value = ir.tensor(q, name=layer.bias_value.name)
            else:
                layer.bias_value.const_value = ir.tensor(layer.bias_float.astype(np.float32),
                                                         name=layer.bias_value.name)
            return
        base = original.name if original is not None else f"{layer.name}_bias"
        if layer.bias_scale is not None:
            per_channel = layer.bias_scale.ndim == 1 and layer.bias_scale.size > 1
            scale = layer.bias_scale if per_channel else np.asarray(layer.bias_scale.reshape(-1)[0], np.float32)
            layer.bias_scale = scale
            q = quantize(layer.bias_float, scale, 0, "int32", axis=0 if per_channel else None)
            layer.bias_value = self._initializer(model, f"{base}_quantized", q)
            s_value = self._initializer(model, f"{base}_scale", np.asarray(scale, np.float32))
            out = ir.Value(name=self._unique(f"{base}_dequantized"), shape=ir.Shape([q.size]),
                           type=ir.TensorType(ir.DataType.FLOAT))
            dq = ir.node("DequantizeLinear", [layer.bias_value, s_value],
                         attributes={"axis": 0} if per_channel else {}, outputs=[out],
                         name=self._unique(f"{layer.name}/bias_dq"))
            model.graph.insert_before(layer.node, dq)
        else:
            out = layer.bias_value = self._initializer(model, f"{base}_float" if original is not None else base,
                                                       layer.bias_float.astype(np.float32))
        while len(layer.node.inputs) <= layer.bias_index:
            layer.node.resize_inputs(len(layer.node.inputs) + 1)
        layer.node.replace_input_with(layer.bias_index, out)
        if original is not None:
            _drop_if_unused(model, original)

    def _insert_qdq(self, model: ir.Model, name: str, qp: ActivationQParams) -> None:
        value = next(v for v in _all_values(model) if v.name == name)
        uses = list(value.uses())
        qtype = ir.DataType.UINT8 if qp.dtype == "uint8" else ir.DataType.INT8
        scale = self._initializer(model, f"{name}_scale", np.asarray(qp.scale, np.float32))
        zero = self._initializer(model, f"{name}_zero_point",
                                 np.asarray(qp.zero_point, np.uint8 if qp.dtype == "uint8" else np.int8))
        q_out = ir.Value(name=self._unique(f"{name}_quantized"), shape=value.shape, type=ir.TensorType(qtype))
        dq_out = ir.Value(name=self._unique(f"{name}_dequantized"), shape=value.shape,
                          type=ir.TensorType(ir.DataType.FLOAT))
        q = ir.node("QuantizeLinear", [value, scale, zero], outputs=[q_out], name=self._unique(f"{name}/q"))
        dq = ir.node("DequantizeLinear", [q_out, scale, zero], outputs=[dq_out], name=self._unique(f"{name}/dq"))
        producer = value.producer()
        if producer is not None:
            model.graph.insert_after(producer, [q, dq])
        else:
            model.graph.insert_before(model.graph.node(0), [q, dq])
        for use in uses:
            if id(use.node) not in self._float_nodes:  # a layer kept float reads the float tensor
                use.node.replace_input_with(use.idx, dq_out)
        _skip_saturating_min(model, q, qp)

    # ------------------------------------------------------------------------------------------------ refinement

    def _adaround(self, model: ir.Model, float_proto: onnx.ModelProto, layers: list[_Layer]) -> list[str]:
        """AdaRound, layer by layer in graph order: inputs from the model quantized so far, targets from the float one.

        At most ``ADAROUND_SAMPLES`` calibration samples and ``ADAROUND_ROWS`` rows per layer (a Conv contributes
        random output positions of each sample); layers AdaRound cannot express as a matrix product (grouped or
        non-2-D Conv, auto_pad, transposed Gemm input, a computed bias) keep nearest rounding and say so.
        """
        from edgec.quantization.adaround import adaround_matrix, conv_patches
        from edgec.quantization.qmath import WEIGHT_QMAX, broadcast_to_axis

        assert self.calibration is not None
        cfg = self.config
        samples = 0
        for feed in self.calibration():
            samples += max(int(next(iter(feed.values())).shape[0]), 1)
            if samples >= ADAROUND_SAMPLES:
                break
        samples = min(samples, ADAROUND_SAMPLES)
        done, skipped = 0, []
        for index, layer in enumerate(layers):
            why = _adaround_unsupported(layer)
            if why is not None or layer.wq is None or layer.q_value is None:
                skipped.append(f"{layer.name} ({why})")
                layer.report["adaround"] = None
                continue
            node, wq = layer.node, layer.wq
            w = layer.weight.const_value.numpy().astype(np.float64)  # the float weight (dropped from the graph)
            rng = np.random.default_rng(1000 + index)
            x_name, y_name = node.inputs[0].name, layer.output.name
            q_sess = capture.session(capture.expose(ir.serde.serialize_model(model), [x_name]))
            f_sess = capture.session(capture.expose(float_proto, [y_name]))
            xs, ys, seen = [], [], 0
            for feed in self.calibration():
                if seen >= samples:
                    break
                x = q_sess.run([x_name], feed)[0]
                y = f_sess.run([y_name], feed)[0]
                seen += x.shape[0]
                if node.op_type == "Conv":
                    attrs = {k: a.value for k, a in node.attributes.items()}
                    kernel = tuple(w.shape[2:])
                    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
                    per_sample = max(1, ADAROUND_ROWS // samples)
                    rows, idx, _ = conv_patches(x, kernel, tuple(attrs.get("strides", (1, 1))),
                                                (pads[0], pads[1], pads[2], pads[3]),
                                                tuple(attrs.get("dilations", (1, 1))), per_sample, rng)
                    yf = y.reshape(y.shape[0], y.shape[1], -1)
                    ys.append(np.take_along_axis(yf, idx[:, None, :], axis=2).transpose(0, 2, 1)
                              .reshape(-1, y.shape[1]))
                    xs.append(rows)
                else:
                    k = w.shape[layer.in_axis]
                    xr, yr = x.reshape(-1, k), y.reshape(-1, w.shape[layer.out_axis])
                    take = max(1, ADAROUND_ROWS // samples) * x.shape[0]  # a MatMul on N×T×K: rows per sample
                    if take < xr.shape[0]:
                        sel = rng.choice(xr.shape[0], take, replace=False)
                        xr, yr = xr[sel], yr[sel]
                    xs.append(xr)
                    ys.append(yr)
            x_rows, y_rows = np.concatenate(xs), np.concatenate(ys)
            moved = np.moveaxis(w, layer.out_axis, 0)
            w_mat = moved.reshape(moved.shape[0], -1)
            s_full = np.broadcast_to(broadcast_to_axis(wq.scale, w, wq.axis, wq.block), w.shape)
            s_mat = np.moveaxis(s_full, layer.out_axis, 0).reshape(w_mat.shape)
            relu = layer.activation_out is not layer.output
            result = adaround_matrix(w_mat, s_mat, WEIGHT_QMAX[wq.dtype], x_rows, y_rows, layer.bias_float, relu,
                                     iterations=cfg.adaround_iterations, seed=index)
            q = np.moveaxis(result.q.reshape(moved.shape), 0, layer.out_axis).astype(np.int8)
            assert q.shape == wq.q.shape and int(np.max(np.abs(q.astype(np.int16) - wq.q))) <= 1
            wq.q = q
            storage = q.astype(ml_dtypes.int4) if wq.bits == 4 else q
            layer.q_value.const_value = ir.Tensor(storage, dtype=ir.DataType.INT4 if wq.bits == 4
                                                  else ir.DataType.INT8, name=layer.q_value.name)
            e_sq = float(np.sum((w - wq.dequantized()) ** 2))
            layer.report["weight_sqnr_db"] = finite_or_none(sqnr_db(float(np.sum(w ** 2)), e_sq))
            layer.report["adaround"] = {
                "mse_nearest": result.mse_nearest, "mse_adaround": result.mse_adaround,
                "reduction": (1 - result.mse_adaround / result.mse_nearest) if result.mse_nearest > 0 else 0.0,
                "changed": result.changed, "rows": result.rows, "iterations": result.iterations,
                "relu": relu, "samples": samples}
            done += 1
        notes = [f"AdaRound: {done} layer(s), {samples} sample(s), {cfg.adaround_iterations} iterations each"]
        if skipped:
            notes.append("AdaRound skipped (nearest rounding kept): " + ", ".join(skipped))
        return notes

    def _bias_correction(self, model: ir.Model, float_proto: onnx.ModelProto, layers: list[_Layer]) -> list[str]:
        assert self.calibration is not None
        targets = [layer for layer in layers if layer.bias_float is not None and layer.bias_value is not None]
        if not targets:
            return ["bias correction: no layer has a bias to correct"]
        float_means = collect.channel_means(float_proto, [t.output.name for t in targets], self.calibration())
        for layer in targets:
            q_mean = collect.channel_means(ir.serde.serialize_model(model), [layer.output.name],
                                           self.calibration())[layer.output.name]
            shift = float_means[layer.output.name] - q_mean
            if shift.shape != layer.bias_float.shape:
                continue
            layer.bias_float = layer.bias_float + shift
            layer.bias_shift = shift
            self._write_bias(model, layer, None)
            layer.report["bias_correction"] = float(np.max(np.abs(shift)))
        return [f"bias correction: {len(targets)} layer(s), layer by layer"]

    def _layer_sqnr(self, float_proto: onnx.ModelProto, q_proto: onnx.ModelProto, layers: list[Any]) -> None:
        """Each layer's (a _Layer's or an AdderLayer's) output SQNR on the calibration data, into its report."""
        assert self.calibration is not None
        names = [layer.output.name for layer in layers]
        if not names:
            return
        energies = collect.output_sqnr(float_proto, q_proto, names, self.calibration())
        for layer in layers:
            signal, noise = energies[layer.output.name]
            layer.report["output_sqnr_db"] = finite_or_none(sqnr_db(signal, noise))


# ---------------------------------------------------------------------------------------------- helpers


ADAROUND_SAMPLES = 256   # calibration samples AdaRound uses at most
ADAROUND_ROWS = 8192     # rows (output positions) per layer it fits to


def _adaround_unsupported(layer: _Layer) -> str | None:
    node = layer.node
    attrs = {k: a.value for k, a in node.attributes.items()}
    has_bias_input = len(node.inputs) > 2 and node.inputs[2] is not None
    if has_bias_input and layer.bias_float is None:
        return "computed or shared bias"
    if node.op_type == "Conv":
        w = layer.weight.const_value
        if w is None or len(w.shape) != 4:
            return "not a 2-D Conv"
        if attrs.get("group", 1) != 1:
            return "grouped Conv"
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return "auto_pad"
    if node.op_type == "Gemm":
        if attrs.get("transA", 0):
            return "transA"
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return "alpha/beta"
    if layer.bias_float is not None and node.op_type != "MatMul":
        w = layer.weight.const_value
        if layer.bias_float.size != w.shape[layer.out_axis]:
            return "broadcast bias"
    return None


def _feeds_a_quantized_layer(value: ir.Value, quantized: set[int]) -> bool:
    """Whether a quantized layer reads ``value`` or anything computed from it. Where none does (a recognizer's
    logits → Softmax → graph output), quantizing it rounds for no integer kernel: its producer dequantizes its
    int32 accumulator straight to float, as for a graph output, and the logits keep their precision (rounded to
    uint8 over PP-OCRv4's head range, close characters' scores tie)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        for use in stack.pop().uses():
            node = use.node
            if id(node) in quantized and use.idx == 0:
                return True
            if id(node) not in seen:
                seen.add(id(node))
                stack.extend(node.outputs)
    return False


def _float_report(layer: _Layer) -> dict[str, Any]:
    """The report row of a layer kept float (an override): nothing quantized, 32 bits."""
    nbytes = int(layer.weight.const_value.numpy().nbytes)
    bias = layer.node.inputs[layer.bias_index] if (layer.bias_index is not None
                                                   and len(layer.node.inputs) > layer.bias_index) else None
    return {"layer": layer.name, "op": layer.node.op_type, "weight": layer.weight.name, "bits": 32,
            "granularity": None, "weight_scale": None, "weight_zero_point": None, "weight_sqnr_db": None,
            "float_bytes": nbytes, "quantized_bytes": nbytes, "input": None, "output": None,
            "bias": None if bias is None else "float",
            "precision": "float"}


def upgrade_opset(model: ir.Model, version: int) -> None:
    """Raise the model's default opset to ``version`` in place, keeping the nodes' metadata.

    Why the metadata is carried over by hand: where onnxscript's converter has no adapter it falls back to onnx's
    C++ converter, which rebuilds every node without its ``metadata_props``; unroll_rnn's ``PRECISION_HINT`` was
    lost that way on every opset ≤ 12 model (ddddocr's CNN + LSTM recognizer had its LSTM quantized: 93.7 % top-1
    agreement where onnxruntime, which keeps the LSTM float, reaches 94.2 %). Node names survive the conversion."""
    from onnxscript.version_converter import convert_version

    metadata = {node.name: dict(node.metadata_props) for node in ir.traversal.RecursiveGraphIterator(model.graph)
                if node.name and node.metadata_props}

    logger = logging.getLogger("onnxscript.version_converter")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it warns when it falls back to onnx's converter: expected, not news
    try:
        convert_version(model, version, fallback=True)
    except Exception as exc:  # the converters raise assorted types on ops they cannot adapt
        raise EdgecError(f"cannot convert the model to opset {version} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:150] if str(exc) else ''})",
                         "re-export the model at opset ≥ 13 (≥ 21 for int4 or group-wise weights)") from None
    finally:
        logger.setLevel(level)
    if model.opset_imports.get("", 0) < version:
        raise EdgecError(f"the model could not be converted to opset {version}",
                         "re-export the model at a newer opset")
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for key, value in metadata.get(node.name, {}).items():
            node.metadata_props.setdefault(key, value)


def _relu6_min(relu_out: ir.Value) -> ir.Value:
    """ReLU6 (``Relu → Min(·, c)``, canonicalize_clip's form of Clip(0, c)) is fused like ReLU: the Min's output
    is where the one Q/DQ goes. Quantizing after the Relu too would spend the uint8 grid on the pre-clip range
    (tens, where ReLU6 keeps 0..6) and round twice: −9 dB of logit SQNR on EfficientNet-Lite0 (bench/quant_effnet.py).
    onnxruntime does the same (Clip/Relu share the quantization of the op before them)."""
    uses = list(relu_out.uses())
    if len(uses) != 1 or relu_out.is_graph_output():
        return relu_out
    node, idx = uses[0].node, uses[0].idx
    if node.op_type != "Min" or node.domain != "" or len(node.inputs) != 2 or node.outputs[0].is_graph_output():
        return relu_out
    other = node.inputs[1 - idx]
    bound = ir.convenience.get_const_tensor(other) if other is not None else None
    if bound is None or bound.size != 1 or float(bound.numpy().reshape(-1)[0]) <= 0:
        return relu_out
    return node.outputs[0]


def _skip_saturating_min(model: ir.Model, q: ir.Node, qp: ActivationQParams) -> None:
    """``Min(·, c)`` (a fused ReLU6's) read only by a QuantizeLinear is a no-op when ``quantize(c)`` saturates, as it
    does for any range calibrated after the Min (its top is at most c): the Q then reads the Min's input and the Min
    goes. Exact (rounding is monotone, Q saturates); the layer becomes DQ → Conv → Relu → Q, which onnxruntime
    fuses into QLinearConv (a Min in between kept the conv in float, 3-4× slower here) and edgec lowers to an
    integer kernel."""
    node = q.inputs[0].producer() if q.inputs[0] is not None else None
    if node is None or node.op_type != "Min" or node.domain != "" or len(node.inputs) != 2:
        return
    out = node.outputs[0]
    if out.is_graph_output() or [u.node for u in out.uses()] != [q]:
        return
    for idx in (0, 1):
        other = node.inputs[1 - idx]
        bound = ir.convenience.get_const_tensor(other) if other is not None else None
        if bound is not None and bound.size == 1 and node.inputs[idx] is not None:
            break
    else:
        return
    qmax = 255 if qp.dtype == "uint8" else 127
    if np.round(np.float32(bound.numpy().reshape(-1)[0]) / np.float32(qp.scale)) + qp.zero_point < qmax:
        return
    q.replace_input_with(0, node.inputs[idx])
    model.graph.remove(node, safe=True)
    const_node = other.producer()
    if const_node is not None and const_node.op_type == "Constant" and not list(other.uses()):
        model.graph.remove(const_node, safe=True)
    else:
        _drop_if_unused(model, other)


def _all_values(model: ir.Model) -> Iterable[ir.Value]:
    yield from model.graph.inputs
    yield from model.graph.initializers.values()
    for node in model.graph:
        yield from node.outputs


def _drop_if_unused(model: ir.Model, value: ir.Value) -> None:
    if not list(value.uses()) and not value.is_graph_output() and value.name in model.graph.initializers:
        model.graph.initializers.pop(value.name)


def _qp_dict(qp: ActivationQParams) -> dict[str, Any]:
    return {"scale": qp.scale, "zero_point": qp.zero_point, "dtype": qp.dtype, "range": [qp.lo, qp.hi]}

