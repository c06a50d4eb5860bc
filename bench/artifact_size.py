"""Artifact weight bytes: fp32 vs int8 vs int4 vs binary (issue 4's bounds: int8 ≥ 3.9× smaller than fp32,
int4 ≥ 7×).

Measured from the compiled artifacts, not the ONNX: ``manifest["sizes"]["artifact_weights_bytes"]``, the bytes of
every constant the compiled executable holds (weights in their final blocked/VNNI layouts, int4 packed two per byte,
per-channel requantization multipliers, int32 bias + zero-point constants, group-wise block scales). Each model is
compiled by ``edgec.compile`` as

- fp32 (edgec's default: 3×3 convs with ≥ 32 channels use Winograd, whose transformed weights are 36/9 = 4× the
  3×3 kernel), and fp32 with Winograd off (the weights as trained, 4 bytes each, plus layout padding): the ratios
  are given against both, the verdict against the second (the smaller, stricter baseline);
- ``--quantize int8``, ``--quantize int4`` (per channel), ``--quantize int4 --granularity group:32``,
  ``--quantize binary`` (±α per channel, packed 8 per byte; post-training binarisation is not accurate, the row
  is about storage only).

Usage: ``.venv/bin/python bench/artifact_size.py [--models default,resnet18]``. ``default``: the embedded MNIST ResNet
(28 k parameters: its per-channel constants weigh relatively more than in a real network), calibrated on 64 real
training digits; ``resnet18``: the ResNet-18 layout of bench/models.py (11.7 M parameters, random weights, 8 random
calibration inputs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

BOUNDS = {"int8": 3.9, "int4": 7.0, "int4 group:32": 7.0}


def bench_model(name: str, work: Path) -> None:
    from edgec.targets.cpu.options import CpuOptions
    from edgec.toolchain.api import compile as edgec_compile

    if name == "default":
        from edgec.models import mnist_split

        calib, source = mnist_split()["train"][0][:64], None
    else:
        import models

        source = models.onnx_path(name)
        calib = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    np.save(work / f"{name}-calib.npy", calib)
    cal = str(work / f"{name}-calib.npy")
    variants = {"fp32": None, "fp32 (no Winograd)": None, "int8": {"mode": "int8", "calib": cal},
                "int4": {"mode": "int4", "calib": cal},
                "int4 group:32": {"mode": "int4", "granularity": "group:32", "calib": cal},
                "binary": {"mode": "binary", "calib": cal}}
    sizes, notes = {}, {}
    for label, q in variants.items():
        started = time.perf_counter()
        res = edgec_compile(source, output=work / f"{name}-{label.replace(' ', '_').replace(':', '')}",
                            quantize=q, cpu_options=CpuOptions(winograd=label != "fp32 (no Winograd)"))
        m = res.artifact.manifest
        sizes[label] = m["sizes"]["artifact_weights_bytes"]
        packed = m["target"]["build"]["params"]["int4_packed"]
        v = res.verification
        notes[label] = (f"{'verify PASS' if v and v.passed else 'verify FAIL' if v else 'not verified'}"
                        + (f" ({v.max_abs_diff:.2g} <= {v.atol:.2g})" if v else "")
                        + "".join(f"; {packed[k]['tensors']} weights packed {k}" for k in ("int4", "binary")
                                  if packed.get(k, {}).get("tensors"))
                        + f"; {time.perf_counter() - started:.0f} s")
        if label == "fp32":
            onnx_bytes = m["sizes"]["weights_bytes"]
    base, base_w = sizes["fp32 (no Winograd)"], sizes["fp32"]
    print(f"## {name}: artifact weight bytes (the compiled executable's constants; fp32 model initializers: "
          f"{onnx_bytes:,} bytes)")
    print()
    print("| artifact | weight bytes | fp32 (no Winograd) / this | fp32 (default, Winograd) / this | bound | "
          "verdict | notes |")
    print("|---|---|---|---|---|---|---|")
    for label, b in sizes.items():
        bound = BOUNDS.get(label)
        ratio = base / b
        verdict = ("MEETS" if ratio >= bound else "MISSES") if bound else ""
        print(f"| {label} | {b:,} | {ratio:.2f}x | {base_w / b:.2f}x | {f'>= {bound}x' if bound else ''} | "
              f"{verdict} | {notes[label]} |")
    print()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="default,resnet18")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgec-size-bench-"))
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        bench_model(name, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
