#!/usr/bin/env python
"""Winograd vs direct 3×3 convolutions, same model, same run: edgec (direct only), edgec (Winograd where
cpu_winograd.use_winograd allows) and onnxruntime, interleaved round by round, 1 thread.

    TVM_NUM_THREADS=1 python bench/winograd_ab.py [resnet18|MODEL.onnx] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    import numpy as np
    import onnxruntime as ort
    import tvm

    import _timing
    import edgec
    import models
    from edgec.devices.device_main import load_vm
    from edgec.targets import cpu_layout

    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="resnet18")
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    path = Path(a.model) if Path(a.model).exists() else models.onnx_path(a.model)
    runs = {}
    for label, enabled in (("direct", False), ("winograd", True)):
        cpu_layout.WINOGRAD = enabled
        result = edgec.compile(path, target="x86", output=HERE / ".cache" / "artifacts" / f"ab-{label}")
        print(f"{label}: {result.verification.summary()}", flush=True)
        vm, dev, manifest = load_vm(result.artifact.path)
        spec = manifest["inputs"][0]
        x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(spec["dtype"])
        args = [tvm.runtime.tensor(x, dev)]
        runs[label] = (lambda vm=vm, args=args: vm["main"](*args))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    runs["onnxruntime"] = lambda: session.run(None, feed)
    times = _timing.interleaved(runs, rounds=a.rounds, warmup=2, min_round_seconds=0.2)
    for label in runs:
        print(f"{label:12s} median {_timing.median(times[label]) * 1e3:8.3f} ms")
    print("winograd / direct:     ", _timing.format_ratio(times, "winograd", "direct"))
    print("winograd / onnxruntime:", _timing.format_ratio(times, "winograd", "onnxruntime"))
    print("direct / onnxruntime:  ", _timing.format_ratio(times, "direct", "onnxruntime"))


if __name__ == "__main__":
    main()
