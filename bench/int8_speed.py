"""int8 vs fp32 on x86 (issue 4's bound: the int8 artifact ≥ 1.5× faster than the fp32 artifact), with onnxruntime's
int8 (QDQ) latency next to it.

The embedded default model (MNIST ResNet) is compiled twice by `edgec compile` (fp32, and `--quantize int8` with
64 real training digits as calibration), and onnxruntime runs the same QDQ model (1 thread, full optimizations:
it fuses DQ → Conv → Q into QLinearConv). All three run at 1 thread (TVM_NUM_THREADS=1), interleaved round by
round (A B C, C B A, ...); ratios are per round, summarised by their median (min-max). Usage:

    TVM_NUM_THREADS=1 .venv/bin/python bench/int8_speed.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _timing import fmt_ms, format_table, interleaved, median, ratio_stats  # noqa: E402

BOUND = 1.5


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from edgec.models import mnist_split
    from edgec.toolchain.api import compile as edgec_compile

    split = mnist_split()
    work = Path(tempfile.mkdtemp(prefix="edgec-int8-bench-"))
    np.save(work / "calib.npy", split["train"][0][:64])
    fp32 = edgec_compile(None, output=work / "fp32")
    int8 = edgec_compile(None, output=work / "int8", quantize={"mode": "int8", "calib": str(work / "calib.npy")})
    print(f"fp32 artifact: verify {fp32.verification.summary()}")
    print(f"int8 artifact: verify {int8.verification.summary()}; "
          f"{int8.artifact.manifest['quantization']['integer_layers']} integer layers")

    x = split["test"][0][:1].astype(np.float32)
    runs = {}
    for name, res in (("tvm fp32", fp32), ("tvm int8", int8)):
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(res.artifact.path / "model.so")), tvm.cpu())
        arg = tvm.runtime.tensor(x)
        vm.set_input("main", arg)
        runs[name] = (lambda vm=vm: vm.invoke_stateful("main"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    qdq = onnx.load(str(int8.artifact.path / "optimized.onnx"))
    sess = ort.InferenceSession(qdq.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    runs["onnxruntime int8"] = lambda: sess.run(None, feed)

    times = interleaved(runs, rounds=args.rounds, warmup=3, min_round_seconds=0.1)
    rows = [[name, fmt_ms(median(t)), fmt_ms(min(t)), fmt_ms(max(t))] for name, t in times.items()]
    print(format_table(rows, ["contender (1 thread)", "median ms", "min ms", "max ms"]))
    speedup = ratio_stats(times, "tvm fp32", "tvm int8")
    vs_ort = ratio_stats(times, "tvm int8", "onnxruntime int8")
    verdict = "MEETS" if speedup["median"] >= BOUND else "MISSES"
    print(f"int8 speed-up over fp32 (fp32/int8 time, per round): median {speedup['median']:.2f}x "
          f"(min {speedup['min']:.2f}x - max {speedup['max']:.2f}x, {speedup['rounds']} rounds): "
          f"{verdict} the >= {BOUND}x bound")
    print(f"tvm int8 / onnxruntime int8 time, per round: median {vs_ort['median']:.2f}x "
          f"(min {vs_ort['min']:.2f}x - max {vs_ort['max']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
