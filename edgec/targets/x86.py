"""x86-64 presets. ``x86`` means *this* host's CPU with all its features (``mcpu: host`` is resolved by LLVM at
build time, and features the host reports beyond LLVM's name for it are added: cpu/isa.host_mattr); the others pin
an ISA class for deploying to another machine: a library built for one runs on every CPU of its class, and its
kernels follow the class's features (cpu/isa.py), never its name. The PyPI wheel's default triple is conda's, so
every preset names the triple."""

from __future__ import annotations

from edgec.targets.base import TargetPreset, register_preset

_TRIPLE = "x86_64-linux-gnu"

for _name, _mcpu, _desc in [
    ("x86", "host", "this host's x86-64 CPU, all its features (detected by LLVM)"),
    ("x86:avx2", "haswell", "x86-64 with AVX2 + FMA (Haswell and newer, Zen)"),
    ("x86:avx512", "skylake-avx512", "x86-64 with AVX-512 (Skylake-SP and newer)"),
    ("x86:avx512-vnni", "cascadelake", "x86-64 with AVX-512 VNNI int8 dot products (Cascade Lake, Ice Lake, "
                                        "Zen 4+)"),
    ("x86:spr", "sapphirerapids", "Intel Xeon with AMX (Sapphire/Emerald/Granite Rapids): AVX-512, VNNI, AMX-INT8/BF16"),
    ("x86:zen4", "znver4", "AMD Zen 4 (EPYC 9004, Ryzen 7000): AVX-512, VNNI, BF16"),
    ("x86:zen5", "znver5", "AMD Zen 5 (EPYC 9005, Ryzen 9000): AVX-512 with full-width datapath, VNNI, AVX-VNNI"),
]:
    register_preset(TargetPreset(name=_name, family="cpu", arch="x86_64", device="cpu", description=_desc,
                                 tvm={"kind": "llvm", "mtriple": _TRIPLE, "mcpu": _mcpu}))
