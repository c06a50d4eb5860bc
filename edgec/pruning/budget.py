"""How many channels each group keeps: one global ratio, per-layer ratios from a file, or a MACs target.

A MACs target is met greedily and globally: every prunable group offers its channels in order of importance
(normalised within the group, so groups are comparable), and the globally least important step is taken until
the estimated MACs are low enough. MACs are estimated from the Conv/Gemm/MatMul layers' kept input and output
fractions (exact for those ops, which is also all that ``edgec inspect`` counts). ``round_to`` keeps channel counts
a multiple of the SIMD width: a 13-channel conv runs no faster than a 16-channel one on 8-wide vector units, so
the greedy steps are whole multiples. No group loses more than ``max_group_ratio`` of its channels, so a budget
never deletes a layer outright.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgec.errors import EdgecError
from edgec.pruning.groups import Analysis, ChannelGroup

__all__ = ["Budget", "LatencyTimer", "estimate_macs", "select", "load_layer_ratios"]


class LatencyTimer(Protocol):
    """What a latency budget measures with, passed in by the caller (pruning neither compiles nor runs models):
    :class:`edgec.toolchain.latency_timer.CompileTimer` compiles with edgec and times on a device."""

    target: str   # the edgec target the models are timed for
    device: str | None
    channel_multiple: int  # channel counts that fill the target's vectors (the default ``round_to``)

    @property
    def where(self) -> str:
        """Cache key of a timing: the target, and the device when it is not this machine."""
        ...

    def __call__(self, protos: dict[str, Any]) -> dict[str, float]:
        """``{name: median ms}`` of every ONNX model, timed in the same minutes (interleaved rounds)."""
        ...


@dataclasses.dataclass
class Budget:
    ratio: float | None = None                    # share of each prunable group's channels to remove
    macs: float | None = None                     # share of the model's MACs to remove
    layer_ratios: dict[str, float] | None = None  # layer (producer node) name -> share to remove
    round_to: int = 1
    max_group_ratio: float = 0.9
    allocation: str = "score"                     # MACs target: "score" (global ranking) or "sensitivity"
    latency_ms: float | None = None               # latency target, measured by ``timer`` (see pruning.latency)
    timer: LatencyTimer | None = None             # what compiles and times models for the latency budget
    latency_cache: str | None = None              # JSON file caching the per-layer latency table

    @property
    def target(self) -> str | None:
        """The target a latency budget is measured on (the timer's)."""
        return self.timer.target if self.timer is not None else None

    def validate(self) -> None:
        given = [k for k in ("ratio", "macs", "layer_ratios", "latency_ms") if getattr(self, k) is not None]
        if not given:
            raise EdgecError("no pruning budget given",
                             "pass --ratio R, --macs M, --latency-ms MS --target T or --layer-ratios FILE")
        if self.latency_ms is not None:
            if len(given) > 1:
                raise EdgecError(f"--latency-ms and --{given[0].replace('_', '-')} both given", "pass one budget")
            if not self.latency_ms > 0:
                raise EdgecError(f"--latency-ms {self.latency_ms:g} must be > 0", "e.g. --latency-ms 0.5")
            if self.timer is None:
                raise EdgecError("--latency-ms needs --target", "pass the target to measure on, e.g. --target x86 "
                                 "(from Python: Budget(timer=edgec.toolchain.latency_timer.CompileTimer('x86')))")
        if self.ratio is not None and self.macs is not None:
            raise EdgecError("--ratio and --macs both given", "pass one budget")
        for key in ("ratio", "macs"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value < 1.0:
                raise EdgecError(f"--{key} {value:g} is outside (0, 1)",
                                 f"give the share to remove, e.g. --{key} 0.5 for half")
        for name, value in (self.layer_ratios or {}).items():
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise EdgecError(f"ratio {value!r} for layer '{name}' is outside [0, 1)",
                                 "give each layer the share of its channels to remove, e.g. 0.5")
        if self.allocation not in ("score", "sensitivity"):
            raise EdgecError(f"unknown budget allocation '{self.allocation}'", "use score or sensitivity")
        if self.round_to < 1:
            raise EdgecError(f"--round-to {self.round_to} must be ≥ 1", "pass the SIMD width, e.g. 8")


def load_layer_ratios(path: str | Path) -> dict[str, float]:
    """Read ``{layer name: ratio}`` from .toml, .json or a flat ``name: ratio`` .yaml/.yml file."""
    path = Path(path)
    if not path.is_file():
        raise EdgecError(f"layer ratio file {path} does not exist", "check the path")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = _flat_yaml(text)
        else:
            raise EdgecError(f"cannot read layer ratios from {path.name}", "use a .toml, .json or .yaml file")
    except EdgecError:
        raise
    except Exception as exc:
        raise EdgecError(f"{path} is not valid {path.suffix[1:]}: {exc}", "write one 'layer = ratio' per line")
    if isinstance(data.get("layers"), dict):
        data = data["layers"]
    try:
        return {str(k): float(v) for k, v in data.items()}
    except (TypeError, ValueError):
        raise EdgecError(f"{path}: every value must be a number", "write one 'layer = ratio' per line") from None


def _flat_yaml(text: str) -> dict[str, str]:
    """The subset of YAML a ratio file needs (``"name": 0.5`` lines, comments); no PyYAML dependency."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#") or line == "layers:":
            continue
        key, sep, value = line.rpartition(":")
        if not sep:
            raise ValueError(f"line {lineno}: expected 'name: ratio'")
        out[key.strip().strip("\"'")] = value.strip()
    return out


def _fractions(layer_segments: tuple[tuple[int, int], ...], kept: dict[int, int], size: dict[int, int]) -> float:
    if not layer_segments:
        return 1.0
    total = sum(n for _, n in layer_segments)
    return sum(n * kept[g] / size[g] for g, n in layer_segments) / total


def estimate_macs(analysis: Analysis, kept: dict[int, int]) -> int:
    """MACs of the Conv/Gemm/MatMul layers when group ``g`` keeps ``kept[g]`` channels."""
    size = {g.id: g.size for g in analysis.groups}
    full = {**size, **kept}
    return int(round(sum(layer.macs * _fractions(layer.out, full, size) * _fractions(layer.inp, full, size)
                         for layer in analysis.mac_layers)))


def min_keep(group: ChannelGroup, budget: Budget) -> int:
    floor = max(1, math.ceil(group.size * (1.0 - budget.max_group_ratio)))
    if budget.round_to > 1:
        floor = max(budget.round_to, math.ceil(floor / budget.round_to) * budget.round_to)
    return min(group.size, floor)


def _rounded(keep: int, group: ChannelGroup, budget: Budget) -> int:
    keep = max(keep, min_keep(group, budget))
    if budget.round_to > 1:
        keep = max(budget.round_to, int(round(keep / budget.round_to)) * budget.round_to)
    return min(group.size, keep)


def _resolve_names(analysis: Analysis, ratios: dict[str, float]) -> dict[int, float]:
    by_name: dict[str, ChannelGroup] = {}
    for g in analysis.groups:
        for name in [g.name, *g.producers]:
            by_name.setdefault(name, g)
    out: dict[int, float] = {}
    for name, ratio in ratios.items():
        group = by_name.get(name)
        if group is None:
            known = [g.name for g in analysis.prunable()]
            raise EdgecError(f"no prunable layer named '{name}' in the model",
                             f"prunable layers: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}")
        if not group.prunable:
            raise EdgecError(f"layer '{name}' cannot be pruned: {'; '.join(group.reasons) or 'one channel'}",
                             "leave it out of the ratio file")
        out[group.id] = ratio
    return out


def select(analysis: Analysis, scores: dict[int, np.ndarray], budget: Budget) -> dict[int, np.ndarray]:
    """Indices (ascending) of the channels every prunable group keeps; groups left whole are omitted."""
    budget.validate()
    groups = {g.id: g for g in analysis.prunable()}
    if budget.macs is not None:
        kept = _greedy_macs(analysis, scores, budget)
    else:
        ratios = {gid: budget.ratio or 0.0 for gid in groups}
        ratios.update(_resolve_names(analysis, budget.layer_ratios or {}))
        kept = {gid: _rounded(groups[gid].size - int(math.floor(groups[gid].size * r)), groups[gid], budget)
                for gid, r in ratios.items() if r > 0}
    out = {}
    for gid, k in kept.items():
        if k < groups[gid].size:
            order = np.argsort(-scores[gid], kind="stable")
            out[gid] = np.sort(order[:k])
    return out


def _greedy_macs(analysis: Analysis, scores: dict[int, np.ndarray], budget: Budget) -> dict[int, int]:
    groups = {g.id: g for g in analysis.prunable()}
    total = estimate_macs(analysis, {})
    target = total * (1.0 - budget.macs)
    kept = {gid: g.size for gid, g in groups.items()}
    ascending = {}
    heap: list[tuple[float, int, int]] = []

    def push(gid: int) -> None:
        g, k = groups[gid], kept[gid]
        step = k - (math.ceil(k / budget.round_to) - 1) * budget.round_to if budget.round_to > 1 else 1
        if k - step < min_keep(g, budget):
            return
        removed = ascending[gid][g.size - k: g.size - k + step]
        heapq.heappush(heap, (float(np.mean(removed)), gid, step))

    for gid, g in groups.items():
        s = scores[gid]
        mean = float(np.mean(s))
        ascending[gid] = np.sort(s / mean if mean > 0 else s)
        push(gid)
    macs = total
    while macs > target and heap:
        _, gid, step = heapq.heappop(heap)
        kept[gid] -= step
        macs = estimate_macs(analysis, kept)
        push(gid)
    if macs > target:
        reached = 1.0 - macs / total
        raise EdgecError(f"cannot remove {budget.macs:.0%} of MACs: the most this model allows is {reached:.1%} "
                         f"(prunable groups cut to their floor of {1 - budget.max_group_ratio:.0%} of channels"
                         f"{f', multiples of {budget.round_to}' if budget.round_to > 1 else ''}; "
                         f"{len(analysis.groups) - len(groups)} of {len(analysis.groups)} groups cannot be pruned)",
                         f"ask for at most {math.floor(reached * 100) / 100:g}")
    return kept
