"""What a CPU target can execute, read from its LLVM feature set — never from its name.

Why: a list of CPU names decided AVX-512 before, and every CPU missing from it (rocketlake, graniterapids, znver6,
whatever comes next) fell back to 8-lane blocks and lost its int8 VNNI kernel: edgec ran 1.1–1.4× onnxruntime's
latency instead of 0.6–0.8× there, and int8 5× slower than fp32. LLVM knows the features of every CPU it can name
(``tvm.target.codegen.target_has_features`` asks it, ``mattr`` included), so each kernel decision asks for the
feature it needs. For ``mcpu: host`` the CPU LLVM detects may be one it only half knows (a newer part named after
an older one, or ``generic``): :func:`host_mattr` adds what the running kernel reports and the named CPU lacks.

Nothing else in edgec tests a CPU name: kernel rules take an :class:`Isa`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

# Features worth knowing for kernel choice, by LLVM name (the manifest records which of them a build had).
X86_FEATURES = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd",
                "avx512vnni", "avxvnni", "avx512bf16", "avx512fp16", "avx512vpopcntdq", "avx512bitalg",
                "amx-tile", "amx-int8", "amx-bf16", "amx-fp16")
ARM_FEATURES = ("neon", "fp-armv8", "fullfp16", "dotprod", "i8mm", "bf16", "sve", "sve2")

# Linux /proc/cpuinfo flag → LLVM feature, for the features above (used only for ``mcpu: host``).
_CPUINFO_X86 = {"sse4_2": "sse4.2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f",
                "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512cd": "avx512cd",
                "avx512_vnni": "avx512vnni", "avx_vnni": "avxvnni", "avx512_bf16": "avx512bf16",
                "avx512_fp16": "avx512fp16", "avx512_vpopcntdq": "avx512vpopcntdq",
                "avx512_bitalg": "avx512bitalg", "amx_tile": "amx-tile", "amx_int8": "amx-int8",
                "amx_bf16": "amx-bf16", "amx_fp16": "amx-fp16"}
_CPUINFO_ARM = {"asimd": "neon", "fphp": "fullfp16", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16",
                "sve": "sve", "sve2": "sve2"}


@dataclasses.dataclass(frozen=True)
class Isa:
    """The instruction-set facts kernel rules decide by.

    ``lanes``: float32 lanes of the widest vector register (16 with AVX-512F, 8 with AVX/AVX2, 4 with NEON or
    plain SSE). ``vector_registers``: architectural vector registers at that width (32 with AVX-512 and on AArch64,
    16 otherwise): a register tile must fit in them or it spills. ``fma_units``: FMA pipes per core where LLVM
    states it — it does not, so this stays None and no rule depends on it."""

    arch: str
    mcpu: str
    features: frozenset[str]
    lanes: int
    vector_registers: int
    fma_units: int | None = None

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def fma(self) -> bool:
        return self.arch == "aarch64" or self.has("fma")

    @property
    def avx512(self) -> bool:
        return self.has("avx512f")

    @property
    def vnni(self) -> bool:
        """AVX-512 VNNI (vpdpbusd on zmm): the 16-lane int8 conv kernel."""
        return self.has("avx512vnni")

    @property
    def int8_pairs(self) -> bool:
        """x86 with AVX2 or AVX-512F and no AVX-512 VNNI: the int8 conv kernel on vpmaddwd pairs
        (kernels/int8_avx2.py)."""
        return self.arch == "x86_64" and (self.has("avx2") or self.avx512) and not self.vnni

    @property
    def avx_vnni(self) -> bool:
        """AVX-VNNI (vpdpbusd on ymm, VEX-encoded: Alder Lake and newer, Zen 5)."""
        return self.has("avxvnni")

    @property
    def amx_int8(self) -> bool:
        return self.has("amx-int8") and self.has("amx-tile")

    @property
    def amx_bf16(self) -> bool:
        return self.has("amx-bf16") and self.has("amx-tile")

    @property
    def vpopcntdq(self) -> bool:
        return self.has("avx512vpopcntdq")

    @property
    def dotprod(self) -> bool:
        """NEON sdot/udot (ARMv8.2-A dot product)."""
        return self.has("dotprod")

    @property
    def sve(self) -> bool:
        return self.has("sve")

    def summary(self) -> dict[str, Any]:
        """What the manifest and the benches record: the resolved CPU and the features the build used."""
        return {"arch": self.arch, "mcpu": self.mcpu, "lanes": self.lanes, "vector_registers": self.vector_registers,
                "features": sorted(self.features)}


def isa_of(target) -> Isa:
    """The :class:`Isa` of a TVM LLVM target (a ``tvm.target.Target``)."""
    attrs = target.attrs
    mtriple = str(attrs.get("mtriple", "") or "")
    arch = "aarch64" if mtriple.startswith("aarch64") or "arm_cpu" in set(target.keys) else "x86_64"
    mattr = tuple(str(a) for a in (attrs.get("mattr") or ()))
    return _isa(str(attrs.get("kind", target.kind.name)), mtriple, str(attrs.get("mcpu", "") or ""), mattr, arch)


@functools.lru_cache(maxsize=64)
def _isa(kind: str, mtriple: str, mcpu: str, mattr: tuple[str, ...], arch: str) -> Isa:
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target({"kind": kind, "mtriple": mtriple, **({"mcpu": mcpu} if mcpu else {}),
                                **({"mattr": list(mattr)} if mattr else {})})
    wanted = ARM_FEATURES if arch == "aarch64" else X86_FEATURES
    features = frozenset(f for f in wanted if bool(codegen.target_has_features([f], target)))
    if arch == "aarch64":
        lanes, registers = 4, 32  # NEON: 128-bit, v0-v31 (SVE code is not generated: fixed-width NEON vectors)
    elif "avx512f" in features:
        lanes, registers = 16, 32
    elif "avx" in features:
        lanes, registers = 8, 16
    else:
        lanes, registers = 4, 16
    return Isa(arch=arch, mcpu=mcpu or "generic", features=features, lanes=lanes, vector_registers=registers)


def host_features(arch: str, cpuinfo: str | None = None) -> frozenset[str]:
    """The ISA features the running kernel reports for this ``arch`` ("x86_64" or "aarch64") machine, as LLVM
    names (``/proc/cpuinfo``; empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    table, key = (_CPUINFO_ARM, "features") if arch == "aarch64" else (_CPUINFO_X86, "flags")
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == key:
            return frozenset(table[flag] for flag in value.split() if flag in table)
    return frozenset()


def missing_on_host(features, arch: str, reported: frozenset[str] | None = None) -> list[str]:
    """The ISA ``features`` (LLVM names: a manifest's ``target.build.isa.features``) that this ``arch`` machine
    does not report: code built for them would stop on an illegal instruction here (an ``x86:avx512`` artifact
    on an AVX2 CPU). Only features ``/proc/cpuinfo`` can tell are judged; none where it cannot be read."""
    reported = host_features(arch) if reported is None else reported
    if not reported:
        return []
    readable = set((_CPUINFO_ARM if arch == "aarch64" else _CPUINFO_X86).values())
    return sorted(f for f in features if f in readable and f not in reported)


def host_mattr(mcpu: str, mtriple: str, reported: frozenset[str] | None = None) -> list[str]:
    """``mattr`` entries that make LLVM's ``mcpu`` agree with what this machine reports: ``+f`` for a feature the
    host has and the named CPU lacks (an unknown newer CPU that LLVM names after an older one, or ``generic``), so
    ``mcpu: host`` never builds for less than the machine has; ``-f`` for one the name implies and the host lacks
    (a hypervisor that hides AVX-512 or AMX), so it never builds an instruction the machine would fault on.
    Nothing is changed where the host's features cannot be read."""
    arch = "aarch64" if mtriple.startswith("aarch64") else "x86_64"
    reported = host_features(arch) if reported is None else reported
    if not reported:
        return []
    readable = set((_CPUINFO_ARM if arch == "aarch64" else _CPUINFO_X86).values())
    named = _isa("llvm", mtriple, mcpu, (), arch).features
    return [f"+{f}" for f in sorted(reported - named)] + [f"-{f}" for f in sorted((named & readable) - reported)]
