"""CpuOptions: every switch and threshold of the CPU backend, passed in (never module globals set from outside).

Why one object: the kernel choices were ten module-level flags that benchmarks and tests set with ``setattr``, so a
build's behaviour depended on who had imported and poked what before it. Now the build, the tuner and every rule
take the same frozen object; ``bench/kernel_ab.py`` compares two of them. Thresholds measured on one host are
defaults here, each with where it came from; the one that depends on a cache size is derived from the target's
caches (:func:`l2_bytes`) unless given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence


@dataclasses.dataclass(frozen=True)
class CpuOptions:
    """The CPU backend's options. Defaults are what edgec ships; see each kernel module for the measurements.

    - ``winograd``: 3×3 stride-1 convs with enough channels as Winograd F(2,3)/F(4,3) (kernels/winograd.py).
    - ``widen``: convs with half-vector output blocks computed in full vectors (kernels/widened.py).
    - ``spatial``: convs with fewer outputs than lanes vectorized along rows (kernels/spatial.py).
    - ``dw_pointwise``: depthwise → 1×1 pairs as one kernel when the depthwise output is at least
      ``dw_pointwise_min_bytes`` (None: the target's L2 size up to 1 MiB, 1 MiB where unknown;
      kernels/dw_pointwise.py).
    - ``k_split``: the direct conv reduces over chunks of input channels where its tile's weights outgrow L1
      (kernels/direct.k_split_tile; 16-register targets).
    - ``prefetch``: the direct conv asks for the next tile's weights when they are ≥ ``prefetch_min_bytes``.
    - ``gemv``: batch-1 matmuls read their weights in storage order (kernels/matmul.py).
    - ``int8_matmul_vnni``: int8 matmuls with constant weights as vpdpbusd blocks on VNNI targets
      (kernels/int8_matmul_vnni.py); off: the generic matmul rule (the A/B of bench/int8_matmul.py).
    - ``short_reduction``: on 32-register targets a direct conv reducing over at most this many products per
      output (input channels × window) keeps 4 vector registers free of its register tile, for the epilogue
      (kernels/direct.tile_reserve); 0: never.
    - ``dw_row_tile``: most output vectors a depthwise tile accumulates along a row (kernels/depthwise.py).
    - ``padded_f4_min_width``: maps that do not divide into 4×4 tiles take F(4,3) from this width.
    - ``small_conv_macs``: up to this many MACs a conv reads its padding bounds-checked (sched.inline_padding).
    - ``parallel_min_ns``: a kernel whose estimated 1-thread time is under this many nanoseconds runs its parallel
      loops serially (serial_small.py: a parallel launch on 2+ threads costs about a microsecond); 0: never.
    - ``exec_mode``: how the Relax VM runs ``main``: "compiled" (machine code) or "bytecode" (TVM's default).
    - ``bounds_check``: every buffer access checked at run time (TVM's ``tir.instrument_bound_checkers``): an
      out-of-bounds read raises instead of reading memory. Slow; for tests and debugging.
    - ``amx``: int8 convs and matmuls on AMX tiles (kernels/int8_amx.py, int8_amx_matmul.py) where the target has
      AMX (never by CPU name). On by default since the tile state is held across a conv's taps (amx_state.py):
      on an Intel Xeon with AMX (1 thread, bench/int8_speed.py) ResNet-18 int8 took 3.53 ms with them, 7.60 ms
      with the VNNI kernels (onnxruntime int8 10.66 ms), outputs equal; before, calls that configured the tiles
      and moved C through memory per tap made them 1.68× slower than VNNI. Off: AMX CPUs get the VNNI kernels.
    - ``amx_emulate``: the AMX int8 conv kernel (kernels/int8_amx.py) with its tile block computed by plain loops
      of the same intrinsic description, on any target: how its tiling, packing and epilogue are checked on a
      host without AMX. Slow; for tests.
    """

    winograd: bool = True
    widen: bool = True
    spatial: bool = True
    dw_pointwise: bool = True
    dw_pointwise_min_bytes: int | None = None
    prefetch: bool = True
    k_split: bool = True
    prefetch_min_bytes: int = 64 * 1024
    gemv: bool = True
    int8_matmul_vnni: bool = True
    short_reduction: int = 64
    dw_row_tile: int = 8
    padded_f4_min_width: int = 14
    small_conv_macs: int = 4_000_000
    parallel_min_ns: int = 2000
    exec_mode: str = "compiled"
    bounds_check: bool = False
    amx: bool = True
    amx_emulate: bool = False

    def replace(self, **changes: Any) -> "CpuOptions":
        return dataclasses.replace(self, **changes)

    def with_settings(self, settings: Sequence[str]) -> "CpuOptions":
        """These options with ``KEY=VALUE`` settings applied (``edgec compile --cpu-option``), each value read as
        its field's type (bools: true/false/on/off/1/0; ``none`` for an optional number). A/B checks of one
        kernel switch from the command line need no Python. Raises ValueError naming the bad key or value."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for setting in settings:
            key, sep, text = setting.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in fields:
                raise ValueError(f"--cpu-option {setting!r}: expected KEY=VALUE with KEY one of "
                                 f"{', '.join(sorted(fields))}")
            changes[key] = _parse_value(key, str(fields[key].type), text.strip())
        return dataclasses.replace(self, **changes)

    def pair_min_bytes(self, l2: int | None = None) -> int:
        """The depthwise → 1×1 fusion threshold: the option, else the target's L2 size ``l2`` (build.target_l2:
        this host's for a host preset) capped at 1 MiB, else 1 MiB.

        Why capped: the crossover was measured on a 1 MiB-L2 core (Zen 5: pairs up to 753 KB of depthwise output
        faster apart, from 1.2 MB faster fused). On a 2 MiB-L2 Intel Xeon the uncapped threshold left the
        1.2–1.8 MB pairs of MobileNetV2 / EfficientNet-Lite0 apart, and fused they ran the whole model 3–4 %
        faster (bench/kernel_ab.py small-pairs --values 0,none; 1 thread, interleaved): the depthwise input
        (the expanded 6× activation) and its output together outgrow that L2 too. There, fusing every pair or
        only those ≥ 256 KiB or ≥ 1 MiB timed the same (--values 0,262144 and 0,1048576). A smaller L2 (Zen 3's
        512 KiB) keeps its own size."""
        if self.dw_pointwise_min_bytes is not None:
            return self.dw_pointwise_min_bytes
        return min(l2, FALLBACK_L2) if l2 is not None else FALLBACK_L2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_value(key: str, kind: str, text: str) -> Any:
    lowered = text.lower()
    if "None" in kind and lowered == "none":
        return None
    try:
        if kind == "bool":
            return {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}[lowered]
        if kind.startswith("int"):
            return int(text.replace("_", ""))
    except (KeyError, ValueError):
        raise ValueError(f"--cpu-option {key}={text!r}: not a {kind}") from None
    return text


DEFAULT = CpuOptions()
FALLBACK_L2 = 1 << 20  # what the pair threshold was measured against (Zen 5: 1 MiB of L2 per core)


def l2_bytes(sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """This machine's per-core L2 size in bytes (Linux sysfs), or 1 MiB where it cannot be read."""
    try:
        for index in sorted(sysfs.glob("index*")):
            if (index / "level").read_text().strip() == "2" and \
                    (index / "type").read_text().strip() in ("Unified", "Data"):
                text = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
                return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return FALLBACK_L2
