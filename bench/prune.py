#!/usr/bin/env python
"""Structured channel pruning (issue 5): accuracy after pruning, with and without least-squares recovery, and the
measured x86 speedup of the compiled pruned model. Each figure is printed next to the issue's bound.

Model: the embedded MNIST ResNet (98.7 % test top-1), pruned to remove ``--macs`` (default 50 %) of its MACs with
each ``--criteria`` (no retraining). Calibration: the first 256 training digits of ``edgec.models.mnist_split``;
accuracy: all 1,000 test digits, onnxruntime. Latency: the unpruned and the pruned (reconstructed) model compiled
with ``edgec.compile(target="x86")``, timed interleaved round by round (``_timing.interleaved``) in a fresh
process with ``TVM_NUM_THREADS=1``; the speedup is the median of per-round ratios.

Not covered here (yet): the ResNet-style model trained on the embedded data set, EfficientNet-Lite0 at 30 %, and
latency budgets.

    python bench/prune.py                       # l1 and bn-scale, 20 timing rounds
    python bench/prune.py --criteria l1,l2,bn-scale,filtersketch,similarity --rounds 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _timing  # noqa: E402

CACHE = HERE / ".cache" / "prune"
DROP_BOUND_PT = 2.0
SPEEDUP_BOUND = 1.6


def accuracy(proto, x, y) -> float:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    hits = sum(int(session.run(None, {name: x[i: i + 1]})[0].argmax() == y[i]) for i in range(len(y)))
    return hits / len(y)


def worker(spec: dict) -> dict:
    import numpy as np
    import tvm

    from edgec.devices.device_main import load_vm

    calls = {}
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    for name, folder in spec["artifacts"].items():
        vm, dev, manifest = load_vm(Path(folder))
        arg = tvm.runtime.tensor(x, dev)
        main = vm[manifest.get("entry", "main")]
        calls[name] = (lambda main=main, arg=arg: main(arg))
    times = _timing.interleaved(calls, rounds=spec["rounds"], warmup=3, min_round_seconds=spec["min_round_seconds"])
    return {"times": times, "tvm_num_threads": int(tvm.runtime.num_threads())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--macs", type=float, default=0.5, help="share of MACs to remove (default 0.5)")
    ap.add_argument("--criteria", default="l1,bn-scale", help="comma list of criteria (default l1,bn-scale)")
    ap.add_argument("--round-to", type=int, default=8, help="channel multiple (default 8: AVX2 float32 lanes)")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default 20)")
    ap.add_argument("--min-round-seconds", type=float, default=0.2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import onnx_ir as ir

    import edgec
    from edgec.models import default_model_path, mnist_split
    from edgec.pruning import Budget, prune
    from edgec.toolchain.load import load_model

    started = time.perf_counter()
    split = mnist_split()
    calib = split["train"][0][:256]
    xt, yt = split["test"]
    source = default_model_path()
    base = accuracy(ir.serde.serialize_model(load_model(source)), xt, yt)
    print(f"# prune bench: embedded MNIST ResNet, {args.macs:.0%} of MACs, round_to={args.round_to}, "
          f"calibration 256 training digits, accuracy on {len(yt)} test digits; load {os.getloadavg()[0]:.2f}")
    print(f"unpruned top-1: {base:.1%}")
    rows, records, best = [], [], None
    CACHE.mkdir(parents=True, exist_ok=True)
    for criterion in [c.strip() for c in args.criteria.split(",") if c.strip()]:
        result = {}
        for rec in (False, True):
            model = load_model(source)
            t0 = time.perf_counter()
            report = prune(model, Budget(macs=args.macs, round_to=args.round_to), criterion, calib,
                           reconstruct=rec)
            seconds = time.perf_counter() - t0
            proto = ir.serde.serialize_model(model)
            result[rec] = {"acc": accuracy(proto, xt, yt), "seconds": seconds, "macs_removed": report["macs_removed"],
                           "channels": [c["after"] for c in report["channels"]]}
            if rec:
                path = CACHE / f"mnist_{criterion}.onnx"
                import onnx

                onnx.save(proto, str(path))
                result[rec]["path"] = str(path)
        drop = (base - result[True]["acc"]) * 100
        rows.append([criterion, f"{result[True]['macs_removed']:.1%}", str(result[True]["channels"]),
                     f"{result[False]['acc']:.1%}", f"{result[True]['acc']:.1%}",
                     f"{drop:.1f} pt (bound ≤ {DROP_BOUND_PT:g}) {'OK' if drop <= DROP_BOUND_PT else 'MISSED'}",
                     f"{result[True]['seconds']:.1f} s"])
        records.append({"criterion": criterion, "unpruned": base, **{("reconstructed" if k else "plain"): v
                                                                      for k, v in result.items()}})
        if best is None or result[True]["acc"] > best[1]["acc"]:
            best = (criterion, result[True])
    print(_timing.format_table(rows, ["criterion", "MACs removed", "channels kept", "top-1 plain",
                                      "top-1 + LS refit", "drop with refit", "prune+refit time"]))

    print(f"# compiling for x86 (unpruned, and the pruned+refit model of '{best[0]}') ...", flush=True)
    artifacts = {}
    for name, src in (("unpruned", str(source)), ("pruned", best[1]["path"])):
        out = CACHE / f"artifact-{name}"
        edgec.compile(src, target="x86", output=out, verify=False)
        artifacts[name] = str(out)
    spec = {"artifacts": artifacts, "rounds": args.rounds, "min_round_seconds": args.min_round_seconds}
    env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    times = json.loads(lines[-1])["times"]
    stats = _timing.ratio_stats(times, "unpruned", "pruned")
    verdict = "OK" if stats["median"] >= SPEEDUP_BOUND else "MISSED"
    print(f"x86 latency, 1 thread: unpruned {_timing.fmt_ms(_timing.median(times['unpruned']))} ms, pruned "
          f"{_timing.fmt_ms(_timing.median(times['pruned']))} ms; speedup median {stats['median']:.2f}x "
          f"(min {stats['min']:.2f}x - max {stats['max']:.2f}x, {stats['rounds']} rounds) "
          f"(bound ≥ {SPEEDUP_BOUND:g}x) {verdict}")
    print(json.dumps({"bench": "prune", "macs": args.macs, "round_to": args.round_to, "records": records,
                      "speedup": stats, "latency_ms": {k: _timing.median(v) * 1e3 for k, v in times.items()}}))
    print(f"# total {time.perf_counter() - started:.1f} s; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
