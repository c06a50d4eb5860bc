"""x86-64 presets. ``x86`` means *this* host's CPU with all its features (``mcpu: host`` is resolved by LLVM at
build time); the others pin an ISA level for deploying to another machine. The PyPI wheel's default triple is
conda's, so every preset names the triple."""

from __future__ import annotations

from edgec.targets.base import TargetPreset, register_preset

_TRIPLE = "x86_64-linux-gnu"

for _name, _mcpu, _desc in [
    ("x86", "host", "this host's x86-64 CPU, all its features (detected by LLVM)"),
    ("x86:avx2", "haswell", "x86-64 with AVX2 + FMA (Haswell and newer, Zen)"),
    ("x86:avx512", "skylake-avx512", "x86-64 with AVX-512 (Skylake-SP and newer)"),
    ("x86:avx512-vnni", "cascadelake", "x86-64 with AVX-512 VNNI int8 dot products (Cascade Lake, Zen 4+)"),
]:
    register_preset(TargetPreset(name=_name, family="cpu", arch="x86_64", device="cpu", description=_desc,
                                 tvm={"kind": "llvm", "mtriple": _TRIPLE, "mcpu": _mcpu}))
