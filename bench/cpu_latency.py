#!/usr/bin/env python
"""The CPU goal figures (issue 15): edgec's CPU latency vs onnxruntime, untuned and tuned, and how far from the limit.

Prints the host CPU, what LLVM calls it and its ISA features, then per model the per-round median ratio
edgec/onnxruntime (contenders interleaved round by round in one process, as bench/compile_vs_ort.py does) next to
its bound: untuned ≤ 0.8×, with `edgec tune` ≤ 0.7× (1 thread). ``--target`` compiles for a preset
(x86:avx2, x86:avx512, ...; one this host can run): onnxruntime is not capped the same way — it has no switch for
its ISA (MLAS picks its kernels from CPUID), which the output says. Also the
achieved GFLOP/s (2·MACs of a direct convolution / latency — Winograd layers do fewer real multiplies, so a model
can exceed 100 %) against two ceilings: onnxruntime's 1-thread SGEMM on 2048² measured in the
same run (MLAS's hand-written AVX-512 kernel: what this core really sustains), and the nominal AVX-512 FMA peak
(2 FMA pipes × 16 float32 lanes × 2 flops) at the base clock /proc/cpuinfo reports — the core boosts above that
clock, so a figure over 100 % of it is possible. A benchmark, never a test.

    python bench/cpu_latency.py                          # untuned, 1 thread and all cores, four models
    python bench/cpu_latency.py --tune-budget 10m   # also `edgec tune --threads 1` each model, then the tuned ratio
    python bench/cpu_latency.py --models default --quick
    python bench/cpu_latency.py --target x86:avx2         # edgec built for AVX2 on this host (onnxruntime uncapped)
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

import compile_vs_ort as cvo  # noqa: E402  (the shared compile + interleaved timing machinery)

MODELS = ("default", "resnet18", "mobilenet_v2", "efficientnet")
UNTUNED_BOUND, TUNED_BOUND = 0.8, 0.7


def sgemm_ceiling_gflops(size: int = 2048, repeats: int = 5) -> float:
    """onnxruntime's single-thread SGEMM rate (MLAS, hand-written AVX-512): what this core sustains in practice.

    (torch's CPU wheel reaches only ~80 GFLOP/s on this AMD core, numpy's OpenBLAS ~120: neither is a ceiling.)
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
                              [numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"a": rng.standard_normal((size, size)).astype(np.float32)}
    session.run(None, feed)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def nominal_peak_gflops() -> float | None:
    """2 FMA units × 16 float32 lanes × 2 flops × the base clock /proc/cpuinfo reports (boost is higher)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    if "avx512f" not in info:
        return None
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    return 2 * 16 * 2 * max(mhz) / 1e3 if mhz else None


def ort_isa_note(target: str) -> str:
    """onnxruntime has no ISA cap: say so when edgec's target is capped below the host."""
    if target == "x86":
        return "all host features (as edgec)"
    return "NOT capped: onnxruntime has no switch for its ISA (MLAS dispatches on CPUID), it uses every host feature"


def tune(name: str, budget: str, db: Path, threads: str | None, target: str = "x86") -> float:
    info = cvo.prepare(name)
    cmd = [str(Path(sys.executable).with_name("edgec")), "tune", info["source"], "--target", target,
           "--budget", budget, "--db", str(db)] + (["--threads", threads] if threads else [])
    if info["input_shapes"]:
        cmd += ["--input-shape", info["input_shapes"]]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", default="1,all", help="comma list; 'all' = every core")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 20; --quick 3)")
    ap.add_argument("--tune-budget", default=None, help="run `edgec tune --budget B` per model, then time it")
    ap.add_argument("--tune-threads", default="1",
                    help="`edgec tune --threads`: measure candidates on 1 thread, where the bound is (default 1; "
                         "'all' = every core)")
    ap.add_argument("--target", default="x86", help="edgec's target preset (default x86: this host, all features)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 20)
    args.warmup = 1 if args.quick else 3
    args.min_round_seconds = 0.02 if args.quick else 0.2
    cores = os.cpu_count() or 1
    threads = sorted({cores if t == "all" else int(t) for t in args.threads.split(",")})

    sgemm, peak = sgemm_ceiling_gflops(), nominal_peak_gflops()
    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of

    isa = isa_of(resolve_target(args.target).tvm_target())
    print(f"# cpu_latency: {cvo.host_line()}, {cores} cores, load {cvo._loadavg()}", flush=True)
    print(f"# edgec target {args.target}: mcpu {isa.mcpu}, {isa.lanes} lanes, features "
          f"{' '.join(sorted(isa.features))}; onnxruntime: {ort_isa_note(args.target)}", flush=True)
    print(f"# edgec tree "
          f"{cvo.edgec_tree_sha256()[:12]}; per core: SGEMM ceiling (onnxruntime MLAS, 1 thread, 2048²) "
          f"{sgemm:.0f} GFLOP/s; AVX-512 FMA peak at base clock "
          f"{f'{peak:.0f} GFLOP/s' if peak else 'unknown'}", flush=True)
    rows, records = [], []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        runs = [("untuned", None, UNTUNED_BOUND)]
        if args.tune_budget:
            tune_threads = None if args.tune_threads == "all" else args.tune_threads
            db = cvo.CACHE / "tuning" / (f"{name}-{tune_threads}t" if tune_threads else name)
            print(f"# {name}: edgec tune --budget {args.tune_budget} ...", flush=True)
            tune_s = tune(name, args.tune_budget, db, tune_threads, args.target)
            print(f"# {name}: tuned in {tune_s:.0f} s", flush=True)
            runs.append(("tuned", db, TUNED_BOUND))
        for label, db, bound in runs:
            print(f"# {name} ({label}): compile and time ...", flush=True)
            rec = cvo.bench_model(name, threads, args, tuning_db=db, bench="cpu_latency", target=args.target)
            rec["variant"], rec["bound"] = label, bound
            records.append(rec)
            for t in rec["timings"]:
                ratio = t["ratio"]["median"]
                gflops = t["edgec_gflops"]
                ok = "ok" if ratio <= bound else "MISSED" if t["threads"] == 1 else "-"
                rows.append([name, label, t["threads"], f"{rec['macs'] / 1e6:.0f}", f"{t['edgec_ms']:.3f}",
                             f"{t['onnxruntime_ms']:.3f}", f"{ratio:.2f}x ({t['ratio']['min']:.2f}-"
                             f"{t['ratio']['max']:.2f})", f"<= {bound}x {ok}" if t["threads"] == 1 else "",
                             f"{gflops:.0f}", f"{gflops / t['threads'] / sgemm:.0%}",
                             f"{gflops / t['threads'] / peak:.0%}" if peak else "?",
                             "PASS" if rec["verification"] and rec["verification"]["passed"] else "FAIL"])
    print()
    print(cvo._timing.format_table(rows, ["model", "variant", "thr", "MMACs", "edgec ms", "ort ms",
                                          "edgec/ort median (min-max)", "bound (1 thread)", "edgec GFLOP/s",
                                          "% SGEMM ceiling/core", "% base-clock peak/core", "verify"]))
    print()
    for rec in records:
        print(json.dumps({k: v for k, v in rec.items() if k not in ("inputs", "outputs")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
