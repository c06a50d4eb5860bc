#!/usr/bin/env python
"""One of edgec's CPU kernel choices switched off and on, same model, same run: edgec without it, edgec with it
(the default) and onnxruntime, interleaved round by round, 1 thread. Each switch is a field of the CpuOptions the
build is given (edgec/targets/cpu/options.py); the default build has them all on.

    TVM_NUM_THREADS=1 python bench/kernel_ab.py SWITCH [MODEL] [--rounds 15]

    winograd      Winograd F(4,3)/F(2,3) for 3×3 convs where kernels/winograd.use_winograd allows (default model
                  resnet18)
    dw-pointwise  a depthwise conv fused into the 1×1 conv that consumes it (kernels/dw_pointwise; mobilenet_v2)
    widen         convs with 24/40 output channels computed in full-vector blocks (kernels/widened;
                  efficientnet)
    gemv          the one-row matmul schedule (kernels/matmul.Matmul._gemv; mobilenet_v2)
    spatial       convs with fewer output channels than lanes vectorized along rows (kernels/spatial; the
                  50 % pruned embedded model bench/prune.py caches, bench/.cache/prune/embedded_pruned50_rt8.onnx)
    prefetch      the next register tile's weights prefetched in the direct conv (cpu/prefetch.py; efficientnet)
    k-split       the direct conv's reduction cut into chunks of input channels whose weights fit L1
                  (kernels/direct.k_split_tile; mobilenet_v2)
    small-pairs   "off" fuses every depthwise → 1×1 pair, "on" only those with ≥ 1 MiB between the convs
                  (CpuOptions.dw_pointwise_min_bytes; efficientnet)
    dw-tile       "off" is the old 28-column depthwise register tile, "on" at most 8 (CpuOptions.dw_row_tile;
                  mobilenet_v2)
    tile-reserve  "off" gives every direct conv the largest register tile, "on" keeps 4 registers free where the
                  reduction is short (CpuOptions.short_reduction, kernels/direct.tile_reserve; mobilenet_v2)
    padded-f4     Winograd F(4,3) over padded tiles on 14×14 maps with 8-channel blocks (kernels/winograd; the pruned
                  embedded model, as for spatial)
    serial-small  "off" runs every kernel's parallel loops in parallel, "on" keeps those of kernels estimated under
                  2 µs serial (CpuOptions.parallel_min_ns, cpu/serial_small.py; the embedded model): compare at
                  --threads 2 or more, where a parallel launch costs about a microsecond

``--values OFF,ON`` compares two other values of the switch's field (a threshold's, say). ``--threads N`` runs
edgec (TVM_NUM_THREADS) and onnxruntime (intra-op) on N threads instead of 1.
Add --profile to also print, per fused kernel, its time in each build (bench/profile_cpu.py's per-kernel timing).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PRUNED_EMBEDDED = str(HERE / ".cache" / "prune" / "embedded_pruned50_rt8.onnx")
SWITCHES = {  # name: (CpuOptions field, default model[, (value off, value on)]); on/off default to False/True
    "winograd": ("winograd", "resnet18"),
    "dw-pointwise": ("dw_pointwise", "mobilenet_v2"),
    "widen": ("widen", "efficientnet"),
    "gemv": ("gemv", "mobilenet_v2"),
    "spatial": ("spatial", PRUNED_EMBEDDED),
    "prefetch": ("prefetch", "efficientnet"),
    "k-split": ("k_split", "mobilenet_v2"),
    "small-pairs": ("dw_pointwise_min_bytes", "efficientnet", (0, None)),
    "dw-tile": ("dw_row_tile", "mobilenet_v2", (28, 8)),
    "tile-reserve": ("short_reduction", "mobilenet_v2", (0, 64)),
    "padded-f4": ("padded_f4_min_width", PRUNED_EMBEDDED, (1 << 30, 14)),
    "serial-small": ("parallel_min_ns", "default", (0, 2000)),
}


def _model_path(name: str) -> Path:
    """An ONNX file, or one of the benchmark models by name (exported by compile_vs_ort.prepare if needed)."""
    if Path(name).exists():
        return Path(name)
    import compile_vs_ort

    return Path(compile_vs_ort.prepare(name)["source"])


def main() -> None:
    import numpy as np
    import onnxruntime as ort
    import tvm

    import _timing
    import edgec
    from edgec.devices.device_main import load_vm
    from edgec.targets.cpu.options import CpuOptions

    ap = argparse.ArgumentParser()
    ap.add_argument("switch", choices=sorted(SWITCHES))
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="edgec's and onnxruntime's threads (default 1)")
    ap.add_argument("--profile", action="store_true", help="also time each fused kernel alone in both builds")
    ap.add_argument("--values", metavar="OFF,ON", help="the field's two values instead of the switch's own, read as "
                    "`--cpu-option` reads them (e.g. small-pairs --values 1048576,none)")
    a = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(a.threads)  # before the first run starts TVM's thread pool
    import compile_vs_ort

    print(compile_vs_ort.host_line(), f"| {a.threads} thread(s)", flush=True)
    field, default_model, *values = SWITCHES[a.switch]
    off_value, on_value = values[0] if values else (False, True)
    if a.values:
        off_text, _, on_text = a.values.partition(",")
        off_value, on_value = (getattr(CpuOptions().with_settings([f"{field}={text}"]), field)
                               for text in (off_text, on_text))
    path = _model_path(a.model or default_model)
    runs, profiles = {}, {}
    for label, value in (("off", off_value), ("on", on_value)):
        options = CpuOptions().replace(**{field: value})
        result = edgec.compile(path, target="x86", output=HERE / ".cache" / "artifacts" / f"ab-{a.switch}-{label}",
                               cpu_options=options)
        print(f"{a.switch} {label}: {result.verification.summary()}", flush=True)
        vm, dev, manifest = load_vm(result.artifact.path)
        spec = manifest["inputs"][0]
        x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(spec["dtype"])
        args = [tvm.runtime.tensor(x, dev)]
        runs[label] = (lambda vm=vm, args=args: vm["main"](*args))
        if a.profile:
            import profile_cpu

            profiles[label] = profile_cpu.kernel_times(path, "x86", options)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = a.threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    runs["onnxruntime"] = lambda: session.run(None, feed)
    times = _timing.interleaved(runs, rounds=a.rounds, warmup=2, min_round_seconds=0.2)
    for label in runs:
        print(f"{label:12s} median {_timing.median(times[label]) * 1e3:8.3f} ms")
    print(f"{a.switch} on / off:          ", _timing.format_ratio(times, "on", "off"))
    print(f"{a.switch} on / onnxruntime:  ", _timing.format_ratio(times, "on", "onnxruntime"))
    print(f"{a.switch} off / onnxruntime: ", _timing.format_ratio(times, "off", "onnxruntime"))
    for label, rows in profiles.items():
        total = sum(r[0] for r in rows)
        print(f"\nkernels, {a.switch} {label} (each alone, warm caches; total {total * 1e3:.3f} ms):")
        for seconds, name, calls, _each, _flops, _sched in sorted(rows, reverse=True)[:12]:
            print(f"  {name[:56]:<56} {calls:>3} x  {seconds * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
