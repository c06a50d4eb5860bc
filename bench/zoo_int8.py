#!/usr/bin/env python
"""int8 speed on real models: `edgec compile --quantize int8` of zoo models (bench/zoo_models.py) against
onnxruntime running the same QDQ model (its integer kernels: MLAS, which uses VNNI/AMX where the CPU has them) and
onnxruntime's float run of the source, 1 thread each, interleaved round by round. A benchmark, never a test.

Per model: calibration on 16 real-ish samples (bench/zoo_data.py), compile + verify through the CLI (the
verification against onnxruntime on the QDQ model is printed), how many of the library's functions use AMX tiles
(``ldtilecfg``) or VNNI (``vpdpbusd``) (read from its disassembly with objdump), then the timings on one
held-out sample. The host CPU and its features are printed first.

    python bench/zoo_int8.py [--models ppocr_det,nudenet_320n,ddddocr_det,mtcnn_onet] [--rounds 7]
        [--cpu-option amx=off]
"""

from __future__ import annotations

import os

os.environ["TVM_NUM_THREADS"] = "1"  # read once, when TVM's thread pool starts
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _timing  # noqa: E402
import zoo_data  # noqa: E402
from zoo import edgec, error_line, shape_args  # noqa: E402
from zoo_models import MODELS, fetch  # noqa: E402

DEFAULT = "ppocr_det,nudenet_320n,ddddocr_det,mtcnn_onet"


def isa_functions(library: Path) -> tuple[int, int]:
    """(functions using AMX tiles, functions using VNNI but no tiles) in ``library``'s disassembly."""
    try:
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True,
                              text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return -1, -1
    amx, vnni, current = set(), set(), None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = head.group(1)
        elif "ldtilecfg" in line:
            amx.add(current)
        elif "vpdpbusd" in line:
            vnni.add(current)
    return len(amx), len(vnni - amx)


def bench_model(name: str, rounds: int, cpu_options: list[str], work: Path) -> str:
    import onnxruntime as ort
    import tvm

    from edgec.devices.device_main import load_vm

    model = MODELS[name]
    source = fetch(name)
    names = [i.name for i in ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()]
    samples = zoo_data.feeds(model, 17, 0, names)
    arrays = zoo_data.stacked(samples[:16])
    if arrays is None or len(arrays) != 1:
        return f"{name}: n/a (one batched input needed for the calibration file)"
    np.savez(work / f"{name}.npz", **arrays)
    out = work / name
    done = edgec("compile", str(source), *shape_args(model), "--quantize", "int8", "--calib",
                 str(work / f"{name}.npz"), "--samples", "16", "-o", str(out),
                 *[arg for opt in cpu_options for arg in ("--cpu-option", opt)])
    if done.returncode != 0:
        return f"{name}: compile FAILED: {error_line(done)}"
    verdict = next((ln for ln in done.stdout.splitlines() if ln.startswith("verify:")), "verify: (none)")
    amx, vnni = isa_functions(out / "model.so")
    vm, dev, manifest = load_vm(out)
    feed = samples[16]
    x = next(iter(feed.values())).astype(np.float32)
    args = [tvm.runtime.tensor(x, dev)]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    qdq = ort.InferenceSession(str(out / "optimized.onnx"), opts, providers=["CPUExecutionProvider"])
    flt = ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    runs = {"edgec int8": lambda: vm["main"](*args),
            "onnxruntime int8": lambda: qdq.run(None, {qdq.get_inputs()[0].name: x}),
            "onnxruntime fp32": lambda: flt.run(None, {flt.get_inputs()[0].name: x})}
    times = _timing.interleaved(runs, rounds=rounds, warmup=2, min_round_seconds=0.3)
    ms = {k: _timing.median(v) * 1e3 for k, v in times.items()}
    ratio = _timing.ratio_stats(times, "edgec int8", "onnxruntime int8")
    return (f"{name}: {verdict.removeprefix('verify: ')[:60]} | {amx} AMX + {vnni} VNNI functions | edgec int8 "
            f"{ms['edgec int8']:.2f} ms, onnxruntime int8 {ms['onnxruntime int8']:.2f}, fp32 "
            f"{ms['onnxruntime fp32']:.2f} | edgec/onnxruntime int8 {ratio['median']:.2f}x "
            f"({ratio['min']:.2f}-{ratio['max']:.2f})")


def main() -> None:
    from compile_vs_ort import host_line

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cpu-option", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    print(f"# zoo_int8: {host_line()}; 1 thread; {a.rounds} interleaved rounds", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            print(bench_model(name, a.rounds, a.cpu_option, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
