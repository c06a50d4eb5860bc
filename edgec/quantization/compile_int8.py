"""``edgec compile --quantize int8|int4|binary``: quantize inside the compile, and the verification tolerance that
goes with it.

``int4``: int4 weights (per output channel, or ``granularity="group:N"``: a scale per block of N input channels),
int8 activations (W4A8). The artifact stores those weights packed two per byte (``edgec/targets/int4_pack.py``)
and runs the same integer kernels as int8 (group-wise: integer partial sums per block, see ``qdq_lower``).
``binary``: ±1 weights times α per output channel (or tensor), int8 activations; stored 8 per byte in the artifact.

The QDQ pass runs *after* the cleanup passes (``fold_constants`` would otherwise evaluate the weights'
DequantizeLinear back into float constants), and the QDQ model, not the float source, is the reference the
artifact is verified against: quantization changes the outputs on purpose; what the compiler must preserve is
the QDQ model's arithmetic (TVM then runs it as int8 kernels, see ``edgec/targets/qdq_lower.py``).

Tolerance: one quantization step of each output. An output produced by DequantizeLinear has a step of its
scale. A float output computed by an integer layer (a Gemm/MatMul/Conv making the logits) has no scale of its
own: its step is what one step of the layer's quantized input moves it by, through the largest weight,
``sx · max_c(sw[c] · max|wq[:, c]|)`` (plus onnxruntime's float summation noise, 1e-5 relative); an 8-bit
adder layer's (``edgec::AdderConv``, input and weights on one grid) is the grid's step ``s``: one input step moves
one term |qx − qw| by one (onnxruntime's float32 sum of a 576-term layer was 4e-4 off the exact one, s = 0.05). A float output
layer (mixed precision, ``--max-drop``, may keep the last layer float) has no such step: the default tolerance
(1e-4) stays, which holds because the integer kernels reproduce onnxruntime's integer results exactly (measured
on the embedded model with fc, and fc + block2.conv2, float: 4e-6 and 1e-5). When no step can
be derived the default tolerance stays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from edgec.errors import EdgecError

__all__ = ["quantize_for_compile", "output_step_tolerance", "QUANTIZE_CHOICES"]

QUANTIZE_CHOICES = ("int8", "int4", "binary")


def quantize_for_compile(model: ir.Model, options: dict[str, Any], atol: float | None = None
                         ) -> tuple[ir.Model, list[dict[str, Any]], float, dict[str, Any]]:
    """Run the QDQ pass on an already cleaned-up model; returns (model, pass log, tolerance, manifest info).

    ``options``: ``mode`` ("int8", "int4" or "binary": the weights' precision; activations are int8), ``calib``
    (path or "none"/None: data-free), ``samples`` (64), and any
    :class:`QuantConfig` field (``method``, ``granularity``, ``bias_correction``...)."""
    from edgec.calibration.sources import batches, open_source
    from edgec.passes.quantize_qdq import QuantConfig, QuantizeQDQ
    from edgec.toolchain.pipeline import run_pipeline

    opts = dict(options)
    mode = opts.pop("mode", "int8")
    if mode not in QUANTIZE_CHOICES:
        raise EdgecError(f"unknown --quantize mode '{mode}'", f"use one of: {', '.join(QUANTIZE_CHOICES)}")
    calib = opts.pop("calib", None)
    samples = int(opts.pop("samples", 64))
    max_drop = opts.pop("max_drop", None)
    eval_path = opts.pop("eval", None)
    promote_to = opts.pop("promote_to", "float")
    source_keys = {k: opts.pop(k) for k in ("mean", "std", "layout", "resize", "seed") if k in opts}
    config = QuantConfig(weights=mode, activations="int8", **opts)
    config.validate()
    if max_drop is not None:
        from edgec.quantization.sensitivity import check_search_options

        check_search_options(float(max_drop), eval_path, promote_to, mode)
    src = open_source(calib, model, samples, **source_keys)
    search = None
    if max_drop is not None:  # the search of `edgec quantize --max-drop`, on the model the compile cleaned up
        from edgec.calibration.sources import open_eval
        from edgec.quantization.sensitivity import bound_missed, mixed_precision

        prep = {k: v for k, v in source_keys.items() if k != "seed"}
        eval_data = open_eval(eval_path, model, **prep)
        result = mixed_precision(model, ir.serde.serialize_model(model), [], config, src, None, eval_data,
                                 float(max_drop), False, promote_to)
        mp = result.report["mixed_precision"]
        if not result.met:  # before the artifact folder is staged: nothing is written
            raise bound_missed(mp, "no artifact written")
        search = {k: mp[k] for k in ("max_drop", "metric", "measured_on", "final_drop_pt", "met", "promoted",
                                     "ladder", "evaluations", "seconds", "steps")}
        model = ir.serde.deserialize_model(result.model)
        promoted = ", ".join(f"{p['layer']} → {p['precision']}" for p in mp["promoted"]) or "none"
        log = [e for e in result.report["passes"]] + [{
            "pass": "mixed_precision", "changed": bool(mp["promoted"]),
            "nodes_before": _log_nodes(result.report["passes"]), "nodes_after": _log_nodes(result.report["passes"]),
            "report": f"max drop {mp['max_drop']:g} pt ({mp['metric']}, {mp['measured_on']}): final drop "
                      f"{mp['final_drop_pt']:.2f} pt, met; promoted: {promoted}"}]
    else:
        model, log = run_pipeline(model, [QuantizeQDQ(config, lambda: batches(src))])
    proto = ir.serde.serialize_model(model)
    tol = output_step_tolerance(proto)
    steps = [v for v in tol.values() if v is not None]
    atol_used = max(steps) if steps and len(steps) == len(tol) else (atol if atol is not None else 1e-4)
    # --method auto's choice: in the search's report, or the QDQ pass's
    choice = result.report.get("method_choice") if max_drop is not None else next(
        (e["report"]["method_choice"] for e in reversed(log) if "method_choice" in e.get("report", {})), None)
    info = {"mode": mode, "calibration": src.description, "samples": samples,
            **({"method_choice": choice} if choice is not None else {}),
            "config": {"method": choice["chosen"] if choice is not None else config.method,
                       "granularity": config.granularity,
                       "bias_correction": config.bias_correction, "activation_dtype": config.activation_dtype},
            "output_step": tol, "atol": atol_used,
            **({"mixed_precision": search} if search is not None else {}),
            "tolerance_rule": "one quantization step of each output (DequantizeLinear scale; for a float layer "
                              "output, one input step through the largest weight)"}
    return model, log, atol_used, info


def _log_nodes(log: list[dict[str, Any]]) -> int | None:
    return log[-1].get("nodes_after") if log else None


def output_step_tolerance(model: onnx.ModelProto) -> dict[str, float | None]:
    """One quantization step of each graph output (see the module doc); None where none can be derived."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    producer = {out: node for node in model.graph.node for out in node.output}
    passthrough = {"Relu", "Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Transpose", "MaxPool"}

    def dq_of(name: str):
        node = producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    result: dict[str, float | None] = {}
    for out in model.graph.output:
        name, step = out.name, None
        node = producer.get(name)
        while node is not None and node.op_type in passthrough:
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in consts:
            step = float(np.max(consts[node.input[1]]))
        elif node is not None and node.op_type in ("Gemm", "MatMul", "Conv"):
            xdq, wdq = dq_of(node.input[0]), dq_of(node.input[1])
            if xdq is not None and wdq is not None and xdq.input[1] in consts and wdq.input[0] in consts:
                sx = float(np.max(consts[xdq.input[1]]))
                wq = consts[wdq.input[0]].astype(np.float64)
                sw = consts[wdq.input[1]].astype(np.float64)
                block = next((a.i for a in wdq.attribute if a.name == "block_size"), 0)
                if block:  # group-wise: the scale of every element, each block's scale repeated
                    axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1) % wq.ndim
                    sw = np.take(np.repeat(sw, block, axis=axis), np.arange(wq.shape[axis]), axis=axis)
                elif sw.size > 1:
                    axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1) % wq.ndim
                    shape = [1] * wq.ndim
                    shape[axis] = -1
                    sw = sw.reshape(shape)
                step = sx * float(np.max(np.abs(wq * sw)))
                step = step * (1 + 1e-5)
        elif node is not None and node.op_type == "AdderConv" and node.domain == "edgec":
            xdq = dq_of(node.input[0])
            if xdq is not None and xdq.input[1] in consts:  # one input step moves one term |qx − qw| by one
                step = float(np.max(consts[xdq.input[1]])) * (1 + 1e-5)
        result[name] = step
    return result
