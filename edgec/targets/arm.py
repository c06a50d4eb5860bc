"""64-bit Arm (aarch64, Cortex-A) presets: libraries cross-linked with Debian's aarch64-linux-gnu-g++."""

from __future__ import annotations

from edgec.targets.base import TargetPreset, register_preset

_TRIPLE = "aarch64-linux-gnu"
_CC = "aarch64-linux-gnu-g++"

for _name, _mcpu, _desc in [
    ("arm", None, "generic aarch64 with NEON (any Cortex-A of ARMv8-A)"),
    ("arm:cortex-a53", "cortex-a53", "Cortex-A53 (Raspberry Pi 3, many SoCs' little cores)"),
    ("arm:cortex-a72", "cortex-a72", "Cortex-A72 (Raspberry Pi 4)"),
    ("arm:cortex-a76", "cortex-a76", "Cortex-A76, ARMv8.2 with dot product (Raspberry Pi 5)"),
]:
    _tvm = {"kind": "llvm", "mtriple": _TRIPLE, "mattr": ["+neon"]}
    if _mcpu:
        _tvm["mcpu"] = _mcpu
    register_preset(TargetPreset(name=_name, family="cpu", arch="aarch64", device="cpu", description=_desc,
                                 tvm=_tvm, cc=_CC))
