"""Where does the time go? Build each fused, scheduled PrimFunc of a model alone and time it (1 thread).

    .venv/bin/python bench/profile_cpu.py MODEL.onnx|resnet18|mobilenet_v2 [--target x86] [--top 25] [--input-shape 1,3,H,W]
        [--cpu-option KEY=VALUE ...]

Prints one row per kernel: calls × median time, share of the total, GFLOP/s for convs, and whether edgec's rules
(or a tuning record) scheduled it. The sum is close to, not equal to, the model's latency (no VM overhead, warm
caches per kernel).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def scheduled_module(onnx_path: Path, target_name: str, options=None, input_shapes: str | None = None):
    import onnx_ir as ir

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.lower import to_relax
    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    model, _ = run_pipeline(load_model(onnx_path, input_shapes))
    return staged_module(to_relax(ir.serde.serialize_model(model)), resolve_target(target_name), options)


def call_counts(mod) -> collections.Counter:
    from tvm import relax

    counts: collections.Counter = collections.Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            counts[expr.args[0].name_hint] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return counts


def time_primfunc(func, target, number: int = 20) -> float:
    import numpy as np
    import tvm

    from edgec.targets.cpu import stack_alloc

    lib = tvm.tirx.build(func, target=target, pipeline=stack_alloc.register())  # lowered as edgec's builds lower
    dev = tvm.cpu()
    args = []
    for param in func.params:  # TVM 0.27: buffer parameters are Vars carrying shape and dtype
        shape = [int(d) for d in param.shape]
        args.append(tvm.runtime.tensor(np.random.uniform(-1, 1, shape).astype(str(param.dtype)), dev))
    timer = lib.time_evaluator(lib.entry_name if hasattr(lib, "entry_name") else "main", dev, number=number,
                               repeat=3)
    return float(sorted(timer(*args).results)[1])


_MAC_BLOCKS = ("conv2d_NCHWc_rf_update", "conv2d_NCHWc_update", "conv2d_NCHWc", "conv2d_nchw", "DepthwiseConv2d", "depthwise_conv2d_NCHWc", "T_matmul_NT", "matmul",
               "NT_matmul", "T_matmul")


def conv_flops(func) -> int:
    """2·MACs of the conv/dense block in a fused function (0 if none), from its iteration domain."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for name in _MAC_BLOCKS:
        try:
            block = sch.get(sch.get_sblock(name))
        except Exception:  # noqa: BLE001  (no such block)
            continue
        size = 1
        for iv in block.iter_vars:
            size *= int(iv.dom.extent)
        return 2 * size
    return 0


def conv_shape(func) -> str:
    """'IC->OC KHxKW @OHxOW' of the blocked conv in a fused function ('' if none): which layer a row is."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for name in ("conv2d_NCHWc_rf_update", "conv2d_NCHWc_update", "conv2d_NCHWc"):
        try:  # the scheduled conv's reduction is the update block (of its input-channel chunks: kernels/direct)
            block = sch.get(sch.get_sblock(name))
            break
        except Exception:  # noqa: BLE001  (no such block)
            continue
    else:
        return ""
    extents = [int(iv.dom.extent) for iv in block.iter_vars]
    if len(extents) == 10:  # chunk, n, occ, oh, ow, ocb, ic blocks in a chunk, ic in a block, kh, kw
        chunk, n, occ, oh, ow, ocb, icb, ici, kh, kw = extents
        ic = chunk * icb * ici
    else:
        n, occ, oh, ow, ocb, ic, kh, kw = extents
    return f"{ic}->{occ * ocb} {kh}x{kw} @{oh}x{ow}"


def kernel_times(path: Path, target_name: str, options=None, input_shapes: str | None = None) -> list[tuple]:
    """(seconds × calls, name, calls, seconds per call, conv FLOPs, scheduled?, conv shape) per fused kernel of the
    model."""
    from tvm import tirx

    mod, target = scheduled_module(path, target_name, options, input_shapes)
    counts = call_counts(mod)
    rows = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or gv.name_hint not in counts:
            continue
        seconds = time_primfunc(func.with_attr("global_symbol", "main"), target)
        scheduled = bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))
        rows.append((seconds * counts[gv.name_hint], gv.name_hint, counts[gv.name_hint], seconds, conv_flops(func),
                     scheduled, conv_shape(func)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--input-shape", default=None, help="e.g. 1,3,224,224 (models with dynamic dims)")
    ap.add_argument("--cpu-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a CpuOptions setting, as `edgec compile --cpu-option` (repeatable): a per-kernel A/B")
    a = ap.parse_args()
    path = Path(a.model)
    if not path.exists():
        import models

        path = models.onnx_path(a.model)
    from edgec.targets.cpu.options import CpuOptions

    options = CpuOptions().with_settings(a.cpu_option) if a.cpu_option else None
    rows = kernel_times(path, a.target, options, input_shapes=a.input_shape)
    total = sum(r[0] for r in rows)
    rows.sort(reverse=True)
    print(f"{'kernel':<48} {'calls':>5} {'ms each':>8} {'ms total':>8} {'share':>6} {'GFLOP/s':>8} sched  conv")
    for tot, name, calls, each, flops, sched, shape in rows[:a.top]:
        gflops = f"{flops / each / 1e9:.0f}" if flops else ""
        print(f"{name[:48]:<48} {calls:>5} {each * 1e3:>8.4f} {tot * 1e3:>8.4f} {tot / total:>6.1%} {gflops:>8} "
              f"{'yes' if sched else 'NO ':<5} {shape}")
    print(f"{'TOTAL':<48} {'':>5} {'':>8} {total * 1e3:>8.4f}")


if __name__ == "__main__":
    main()
