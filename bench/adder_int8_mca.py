#!/usr/bin/env python
"""Static throughput of edgec's adder conv kernels on x86 cores this host is not, from LLVM's machine-code
analyzer: the 8-bit kernel (``vpsadbw``, kernels/adder_int8.py) and the float one (``vmaxps`` + FMA,
kernels/adder_conv.py), compiled for each ``-mcpu`` and their inner loop handed to ``llvm-mca -mcpu``.

    .venv/bin/python bench/adder_int8_mca.py [--mcpus znver3,sapphirerapids,icelake-server,skylake-avx512,haswell,cortex-a76]

Terms per cycle = |x − w| terms of the loop's instructions (vpsadbw: 32 on ymm, 64 on zmm; vmaxps: 8 or 16; on
Arm cores with the dot product udot: 16, fmaxnm: 4) / cycles per iteration. An estimate of the loop alone (caches warm, no padding phase, no epilogue), never a latency:
the timed figures are bench/adder_conv.py's, on the host that runs it.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arm_int8_mca import hot_loop, mca_cycles  # noqa: E402

SHAPES = ((256, 14), (128, 28), (64, 56))  # 3×3, channels → channels, stride 1, pad 1


def loop_rate(kind: str, channels: int, side: int, mcpu: str) -> tuple[float, str]:
    """(terms per cycle of the kernel's hot loop, its tile) for ``kind`` "int8" or "float" on ``mcpu``."""
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import adder_conv, adder_int8
    from edgec.targets.cpu.kernels.op_kernel import ConvShape

    arm = mcpu.startswith("cortex") or mcpu.startswith("neoverse")
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu" if arm else "x86_64-linux-gnu",
                                "mcpu": mcpu, **({"mattr": ["+neon"]} if arm else {})})
    isa = isa_of(target)
    shape = ConvShape(n=1, c=channels, h=side, w=side, o=channels, kh=3, kw=3, pads=(1, 1, 1, 1))
    if kind == "int8":
        tiling = adder_int8.Tiling.for_isa(isa, shape.o, shape.ow)
        func = adder_int8.conv_func(adder_int8.Plan(shape, tiling), 7, False)
        mac, terms, tile = ("udot" if arm else "vpsadbw"), tiling.bytes, f"{tiling.vectors}x{tiling.positions}"
    else:
        tiling = adder_conv.Tiling.for_isa(isa, shape.o, shape.ow)
        func = adder_conv.conv_func(adder_conv.Plan(shape, tiling))
        mac, terms, tile = ("fmaxnm" if arm else "vmaxps"), tiling.lanes, f"{tiling.vectors}x{tiling.positions}"
    asm = tvm.compile(tvm.IRModule({"conv": func}), target=target).mod.inspect_source("asm")
    loop = hot_loop(asm, mac)
    count = collections.Counter(ins.split()[0] for ins in loop)[mac]
    return (count * terms / mca_cycles(loop, mcpu, "aarch64" if arm else "x86_64") if count else 0.0), tile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mcpus", default="znver3,sapphirerapids,icelake-server,skylake-avx512,haswell,cortex-a76,cortex-a55")
    args = ap.parse_args(argv)
    if shutil.which("llvm-mca") is None:
        raise SystemExit("llvm-mca not found: apt-get install llvm")
    print("figures: llvm-mca's static estimate of each kernel's inner loop (|x - w| terms a cycle), not latencies")
    print("(llvm-mca 14 has no Zen 4/5 model; TVM emits zmm code for them, checked in tests/test_adder_int8.py)")
    print(f"{'mcpu':>16} {'conv 3x3':>10} {'int8 kernel':>16} {'float kernel':>16}")
    for mcpu in args.mcpus.split(","):
        for channels, side in SHAPES:
            (r8, t8), (rf, tf) = loop_rate("int8", channels, side, mcpu), loop_rate("float", channels, side, mcpu)
            print(f"{mcpu:>16} {channels:>4}x{side:<5} {r8:>9.1f} ({t8:>4}) {rf:>9.1f} ({tf:>4})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
