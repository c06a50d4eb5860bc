#!/usr/bin/env python
"""Real models from PyPI wheels, compiled bounds-checked and run twice from fresh inputs loaded from .npy files
through the CLI (`edgec compile --bounds-check`, `edgec run --input x.npy`), then compiled normally and run the
same way: the memory-safety check of issue 15 on models edgec did not make. A check, not a timing; the models
and their fetch step are bench/zoo_models.py's (wheels downloaded once into bench/.cache/zoo).

    python bench/zoo_bounds.py [--models layout_cdla,ppocr_cls,...]

Each line: the model, whether the checked build ran both inputs without an out-of-bounds access, the normal
build's verification against onnxruntime and its two runs from files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from zoo_models import MODELS, ZOO, fetch  # noqa: E402  (the zoo's table and fetch step, shared with zoo.py)

DEFAULT_MODELS = ("layout_cdla", "ppocr_cls", "ppocr_det", "ppocr_rec")


def edgec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("edgec")), *args], capture_output=True, text=True)


def check(name: str, work: Path) -> str:
    shape = MODELS[name].shape
    model = fetch(name)
    dims = [int(d) for d in shape.split(",")]
    inputs = []
    for seed in (1, 2):  # fresh inputs, from files, as a user runs the artifact
        path = work / f"{name}-x{seed}.npy"
        np.save(path, np.random.default_rng(seed).uniform(-1, 1, dims).astype(np.float32))
        inputs.append(path)
    words = [name]
    for label, flags in (("bounds-checked", ["--bounds-check", "--no-verify"]), ("normal", [])):
        out = work / f"{name}-{label}"
        started = time.perf_counter()
        done = edgec("compile", str(model), "--target", "x86", "--input-shape", shape, "-o", str(out), *flags)
        if done.returncode:
            return f"{name}: {label} compile failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        runs = [edgec("run", str(out), "--input", str(x)) for x in inputs]
        bad = [r for r in runs if r.returncode]
        verdict = "ok" if not bad else f"FAILED (exit {bad[0].returncode}: {bad[0].stderr.strip()[-200:]})"
        extra = ""
        if label == "normal":
            line = next((ln for ln in done.stdout.splitlines() if "verify" in ln.lower()), "")
            extra = f"; {line.strip()[:120]}"
        words.append(f"{label}: 2 runs from .npy {verdict} ({time.perf_counter() - started:.0f} s{extra})")
    return " | ".join(words)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated names from bench/zoo_models.py (single-input models)")
    args = ap.parse_args()
    work = ZOO / "runs"
    work.mkdir(parents=True, exist_ok=True)
    import compile_vs_ort

    print(f"# zoo_bounds: {compile_vs_ort.host_line()}", flush=True)
    failed = False
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        line = check(name, work)
        failed |= "FAILED" in line or "failed" in line
        print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
