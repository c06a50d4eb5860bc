"""``quantize_model``: load → cleanup passes → calibrated QDQ quantization → checks → atomic write, plus the report.

Every user mistake is found before the output file is touched, and the file is written to a temporary name in the
same folder and renamed, so a failed or interrupted run never leaves a half-written model behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgec.calibration.sources import EvalData, batches, open_eval, open_source
from edgec.errors import EdgecError
from edgec.passes.quantize_qdq import QuantConfig, QuantizeQDQ, quantized_ops
from edgec.calibration import capture
from edgec.toolchain.dynamic_dims import restore_dynamic, source_dims
from edgec.toolchain.load import load_model
from edgec.toolchain.pipeline import DEFAULT_PASSES, run_pipeline
from edgec.toolchain.writes import check_output_file, staged_file

__all__ = ["QuantizeResult", "quantize_model", "evaluate", "write_model"]


@dataclass
class QuantizeResult:
    output: Path | None
    report: dict[str, Any]
    model: onnx.ModelProto
    float_model: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    met: bool | None = None  # with max_drop: whether the drop bound holds for the written model


def _weight_bytes(model: onnx.ModelProto) -> int:
    from edgec.toolchain.inspect import inspect_model

    return inspect_model(model).total_weight_bytes


def sizes(float_proto: onnx.ModelProto, quant_proto: onnx.ModelProto, layers: list[dict[str, Any]]
          ) -> dict[str, int]:
    """All initializer bytes, and the quantizable layers' weight bytes (scales included), float vs quantized."""
    return {
        "float_bytes": _weight_bytes(float_proto),
        "quant_bytes": _weight_bytes(quant_proto),
        "float_weight_bytes": sum(layer["float_bytes"] for layer in layers),
        "quant_weight_bytes": sum(layer["quantized_bytes"] for layer in layers),
    }


def evaluate(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, path: Path | EvalData) -> dict[str, Any]:
    """Top-1 of both models on the eval data (``open_eval``: an .npz with ``x`` and optional ``y`` labels, a .npy,
    an image folder); agreement with the float model when there are no labels."""
    data = path if isinstance(path, EvalData) else open_eval(path, ir.serde.deserialize_model(float_model))
    source, labels = data.source, data.labels
    batch = source.specs[0].batch
    f_sess, q_sess = capture.session(float_model), capture.session(quant_model)
    f_top, q_top = [], []
    for feed in batches(source):
        f_top.append(np.argmax(f_sess.run(None, feed)[0].reshape(batch, -1), axis=1))
        q_top.append(np.argmax(q_sess.run(None, feed)[0].reshape(batch, -1), axis=1))
    n = source.num_samples
    f_pred, q_pred = np.concatenate(f_top)[:n], np.concatenate(q_top)[:n]
    result: dict[str, Any] = {"samples": n, "agreement": float(np.mean(f_pred == q_pred))}
    if labels is not None:
        result["float_accuracy"] = float(np.mean(f_pred == labels))
        result["quant_accuracy"] = float(np.mean(q_pred == labels))
        result["drop_pt"] = 100.0 * (result["float_accuracy"] - result["quant_accuracy"])
    return result


def quantize_model(source: str | Path, output: str | Path | None, calib: str | Path | None, samples: int = 64,
                   weights: str = "int8", activations: str = "int8", granularity: str = "channel",
                   method: str = "auto", bias_correction: bool = False, adaround: bool = False,
                   eval_path: str | Path | None = None,
                   input_shapes: str | Sequence[str] | dict | None = None, mean: Sequence[float] = (0.0,),
                   std: Sequence[float] = (1.0,), layout: str = "auto", resize: int | None = None,
                   percentile: float = 99.99, seed: int = 0,
                   overrides: dict[str, str] | None = None, max_drop: float | None = None, scan: bool = False,
                   promote_to: str = "float") -> QuantizeResult:
    """Quantize ``source`` into a QDQ ONNX at ``output`` (``None``: do not write; the tests and bench use that).

    ``overrides``: per layer (node or weight name) "int8" | "int4" | "float", else ``weights``.
    ``scan``: also rank the layers by sensitivity; ``max_drop`` (needs ``eval_path``): mixed precision, promoting
    the most sensitive layers (up to ``promote_to``) until the drop holds, see :mod:`edgec.quantization.sensitivity`;
    the best model so far is written after every improvement, and ``result.met`` says whether the bound held."""
    if max_drop is not None:
        from edgec.quantization.sensitivity import check_search_options

        check_search_options(max_drop, eval_path, promote_to, weights)
    elif promote_to not in ("int8", "float"):
        raise EdgecError(f"unknown --promote-to '{promote_to}'", "use int8 or float")
    config = QuantConfig(weights=weights, activations=activations, granularity=granularity, method=method,
                         bias_correction=bias_correction, adaround=adaround, percentile=percentile,
                         overrides=dict(overrides or {}))
    config.validate()
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        if out_path.suffix.lower() != ".onnx":
            raise EdgecError(f"output {out_path} should end in .onnx", "pass -o model.int8.onnx")
        check_output_file(out_path, [source, calib, eval_path], create_parent=False)
    eval_file = Path(eval_path) if eval_path is not None else None
    if eval_file is not None and not eval_file.exists():
        raise EdgecError(f"eval data {eval_file} does not exist",
                         "pass an .npz with x (and optionally y), a .npy, or a folder of images")

    model = load_model(source, input_shapes)
    already = quantized_ops(model)
    if already:
        ops = ", ".join(f"{n}×{op}" for op, n in sorted(already.items()))
        raise EdgecError(f"{Path(str(source)).name} is already quantized ({ops})", "quantize the float model instead")
    needs_data = config.activations == "int8" or config.bias_correction or config.adaround
    src = open_source(calib, model, samples, mean, std, layout, resize, seed) if needs_data or calib else None
    # evaluation data read with the calibration data's preprocessing (image folders: mean/std/layout/resize)
    eval_data = open_eval(eval_file, model, mean, std, layout, resize) if eval_file is not None else None
    model, log = run_pipeline(model, DEFAULT_PASSES)  # BN folding etc. first: quantize the weights that will run
    float_proto = ir.serde.serialize_model(model)
    if max_drop is not None or scan:
        from edgec.quantization.sensitivity import mixed_precision

        result = mixed_precision(model, float_proto, log, config, src, out_path, eval_data, max_drop, scan,
                                 promote_to)
        if out_path is not None:  # the search wrote its best model at batch 1; the final one keeps the batch
            result.model = _write_keeping_batch(result.model, source, out_path, result.notes)
        return result
    qpass = QuantizeQDQ(config, (lambda: batches(src)) if src is not None else None)
    model, qlog = run_pipeline(model, [qpass])
    quant_proto = ir.serde.serialize_model(model)
    capture.session(quant_proto)  # onnxruntime must load what we write; failing here is an edgec bug

    report: dict[str, Any] = dict(qlog[-1].get("report", {}))
    report["calibration"] = src.description if src is not None else "none (weights only)"
    notes = list(report.get("notes", [])) + (src.notes if src is not None else [])
    report["sizes"] = sizes(float_proto, quant_proto, report.get("layers", []))
    if eval_data is not None:
        report["eval"] = evaluate(float_proto, quant_proto, eval_data)
    report["passes"] = log + qlog

    if out_path is not None:
        quant_proto = _write_keeping_batch(quant_proto, source, out_path, notes)
    return QuantizeResult(out_path, report, quant_proto, float_proto, notes)


def _write_keeping_batch(proto: onnx.ModelProto, source: str | Path, path: Path,
                         notes: list[str]) -> onnx.ModelProto:
    """Write ``proto`` with the source's dynamic batch dim restored where it runs batched (dynamic_dims)."""
    proto, note = restore_dynamic(proto, source_dims(source))
    if note:
        notes.append(note)
    write_model(proto, path)
    return proto


def write_model(proto: onnx.ModelProto, path: Path) -> None:
    """Write ``proto`` under a staging name, then rename it onto ``path`` (atomic: never half a model)."""
    with staged_file(path) as tmp:
        onnx.save(proto, str(tmp))
