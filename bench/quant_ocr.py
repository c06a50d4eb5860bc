#!/usr/bin/env python
"""PP-OCRv4 text recognizer int8: every edgec calibration method vs onnxruntime's ``quantize_static`` (issue 17).

A benchmark that prints figures; it is not a test and exits 0 even when edgec loses (the verdict line says MISS).

Model: ``ch_PP-OCRv4_rec_infer.onnx`` from the ``rapidocr_onnxruntime`` wheel (unpacked under /tmp/wheels/x; conv
stages with HardSwish, an SVTR block of attention MatMuls + Softmax + LayerNorm, a CTC head ending in Softmax),
run at 1×3×48×320. Data: text lines rendered by ``bench/ocr_data.py`` (digits, ASCII words, prices, dates,
codes; DejaVu fonts), PaddleOCR's preprocessing; 32 calibration lines (seed 1) and 200 evaluation lines
(seed 2, other texts). Metric: character accuracy of the greedy CTC decode against the rendered text (spaces
ignored), and agreement with the float model (lines decoded identically).

Every quantizer gets the same calibration array: edgec reads it as an .npy (``--calib calib.npy --input-shape
x:1,3,48,320``), onnxruntime through a ``CalibrationDataReader`` over the same samples, after its recommended
``quant_pre_process``. edgec: int8 per-channel weights, uint8 activations (its defaults), each ``--method``,
``--bias-correction`` and ``--adaround``. onnxruntime: ``quantize_static`` with its defaults (QDQ, per-tensor
int8 weights, int8 activations, MinMax), and per-channel; ``--all`` adds its Percentile and Entropy calibrators.

    python bench/quant_ocr.py --all      # ~7 min on 2 shared cores (AdaRound 4 of them)
    python bench/quant_ocr.py --quick    # edgec default and onnxruntime default only (~30 s)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ocr_data  # noqa: E402

BENCH = "quant_ocr"
SHAPE = "x:1,3,48,320"


def host_cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    payload = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(payload, opts, providers=["CPUExecutionProvider"])


def predict(model, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def score(probs: np.ndarray, ref_text: list[str], truth: list[str], chars: list[str]) -> dict:
    text = ocr_data.ctc_decode(probs, chars)
    return {"char_accuracy": ocr_data.char_accuracy(text, truth),
            "fp32_agreement": float(np.mean([a == b for a, b in zip(text, ref_text)]))}


def edgec_quantize(calib_path: Path, samples: int, **kw):
    from edgec.quantization.api import quantize_model

    r = quantize_model(ocr_data.MODEL, None, calib_path, samples, input_shapes=[SHAPE], **kw)
    return r.model


def ort_quantize(pre_path: Path, calib: np.ndarray, out: Path, per_channel: bool, method: str = "MinMax") -> Path:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(range(len(calib)))

        def get_next(self):
            i = next(self.items, None)
            return None if i is None else {"x": calib[i:i + 1]}

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(pre_path), str(out), Reader(), per_channel=per_channel,
                        calibrate_method=getattr(CalibrationMethod, method))
    return out


def ort_preprocess(out_dir: Path) -> tuple[Path, str]:
    """onnxruntime's recommended step before quantize_static, on the model with the input fixed at 1×3×48×320
    (its symbolic shape inference gives up on the dynamic height/width); the fixed model if it fails."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(ocr_data.MODEL))
    dims = [int(d) for d in SHAPE.split(":")[1].split(",")]
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, dims):
        dim.ClearField("dim_param")
        dim.dim_value = size
    if model.opset_import[0].version < 13:  # per-channel DequantizeLinear (axis) needs 13; quantize_static
        model = onnx.version_converter.convert_version(model, 13)  # writes it into an opset-12 model regardless
    fixed, pre = out_dir / "ort_fixed.onnx", out_dir / "ort_pre.onnx"
    onnx.save(model, str(fixed))
    try:  # it leaves a temporary model in the working directory: run it in ours
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), contextlib.chdir(out_dir):
            warnings.simplefilter("ignore")
            quant_pre_process(str(fixed), str(pre))
        return pre, "quant_pre_process"
    except Exception as exc:  # noqa: BLE001 - reported, the fixed model is used instead
        return fixed, f"fixed-shape model (quant_pre_process failed: {type(exc).__name__})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--calib", type=int, default=32, help="calibration lines (default 32)")
    parser.add_argument("--eval", type=int, default=200, help="evaluation lines (default 200)")
    parser.add_argument("--quick", action="store_true", help="edgec default and onnxruntime default only")
    parser.add_argument("--all", action="store_true", help="also onnxruntime's Percentile and Entropy")
    parser.add_argument("--only", default="", help="only the rows whose label contains this text")
    parser.add_argument("--model", type=Path, default=ocr_data.MODEL,
                        help="ch_PP-OCRv4_rec_infer.onnx (default: from rapidocr_onnxruntime's wheel, unpacked)")
    args = parser.parse_args()
    ocr_data.MODEL = args.model
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    started = time.perf_counter()
    if not ocr_data.MODEL.exists():
        print(f"model not found: {ocr_data.MODEL} (unpack rapidocr_onnxruntime's wheel under /tmp/wheels/x)")
        return 0

    import onnxruntime

    chars = ocr_data.characters()
    calib_x, calib_text = ocr_data.text_lines(args.calib, seed=1)
    eval_x, eval_text = ocr_data.text_lines(args.eval, seed=2)
    ref = predict(ocr_data.MODEL, eval_x)
    ref_text = ocr_data.ctc_decode(ref, chars)
    fp32 = score(ref, ref_text, eval_text, chars)

    edgec_rows = [("default (--method auto)", {})]
    if not args.quick:
        edgec_rows += [(f"--method {m}", {"method": m}) for m in ("minmax", "percentile", "mse", "entropy")]
        edgec_rows += [("--bias-correction", {"bias_correction": True}), ("--adaround", {"adaround": True})]
    ort_rows = [("default (per-tensor)", False, "MinMax")]
    if not args.quick:
        ort_rows.append(("per-channel", True, "MinMax"))
    if args.all:
        ort_rows += [("per-channel Percentile", True, "Percentile"), ("per-channel Entropy", True, "Entropy")]

    edgec_rows = [r for r in edgec_rows if args.only in f"edgec {r[0]}"]
    ort_rows = [r for r in ort_rows if args.only in f"onnxruntime {r[0]}"]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        calib_path = tmp / "calib.npy"
        np.save(calib_path, calib_x)
        for label, kw in edgec_rows:
            t = time.perf_counter()
            model = edgec_quantize(calib_path, args.calib, **kw)
            seconds = time.perf_counter() - t
            rows.append({"bench": BENCH, "row": f"edgec {label}", **score(predict(model, eval_x), ref_text,
                                                                          eval_text, chars),
                         "quantize_s": round(seconds, 1)})
            print(f"  {rows[-1]['row']:<40} done ({seconds:.0f} s)", file=sys.stderr)
        pre_path, pre_note = ort_preprocess(tmp)
        for label, per_channel, method in ort_rows:
            t = time.perf_counter()
            out = ort_quantize(pre_path, calib_x, tmp / f"ort_{len(rows)}.onnx", per_channel, method)
            seconds = time.perf_counter() - t
            rows.append({"bench": BENCH, "row": f"onnxruntime {label}", **score(predict(out, eval_x), ref_text,
                                                                                eval_text, chars),
                         "quantize_s": round(seconds, 1), "preprocess": pre_note})
            print(f"  {rows[-1]['row']:<40} done ({seconds:.0f} s)", file=sys.stderr)

    print(f"PP-OCRv4 rec (1×3×48×320), {args.calib} calibration / {args.eval} evaluation rendered text lines; "
          f"onnxruntime {onnxruntime.__version__}; host CPU: {host_cpu()}")
    header = f"{'model / quantizer':<42} {'char acc':>9} {'= fp32':>8} {'quantize':>9}"
    print(header)
    print("-" * len(header))
    print(f"{'fp32':<42} {100 * fp32['char_accuracy']:>8.1f}% {100.0:>7.1f}%")
    for r in rows:
        print(f"{r['row']:<42} {100 * r['char_accuracy']:>8.1f}% {100 * r['fp32_agreement']:>7.1f}% "
              f"{r['quantize_s']:>8.1f}s")
    default = next((r for r in rows if r["row"].startswith("edgec default")), None)
    ort_default = next((r for r in rows if r["row"].startswith("onnxruntime default")), None)
    if default and ort_default:
        ok = default["char_accuracy"] >= ort_default["char_accuracy"]
        print(f"edgec default ≥ onnxruntime default (char accuracy): {'ok' if ok else 'MISS'}")
    floor = 0.9 * fp32["char_accuracy"]
    low = [r["row"] for r in rows if r["row"].startswith("edgec") and r["char_accuracy"] < floor]
    verdict = "ok" if not low else "MISS: " + ", ".join(low)
    print(f"every edgec method ≥ 90 % of fp32 ({100 * floor:.1f} %): {verdict}")
    print(f"bench time: {time.perf_counter() - started:.0f} s")
    for r in rows:
        print(json.dumps(r))
    print(json.dumps({"bench": BENCH, "row": "fp32", **fp32}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
