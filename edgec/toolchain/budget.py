"""Budget files (``edgec.toml``) for ``edgec check``: parsed strictly, because a typo in a CI gate that is silently
ignored is a gate that never closes. Every error names file:line and the valid keys."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgec.errors import EdgecError

__all__ = ["Budget", "LatencyLimit", "BUDGET_KEYS", "load_budgets"]

# key -> accepted python types (bool is excluded from numbers explicitly below)
BUDGET_KEYS: dict[str, tuple[type, ...]] = {
    "artifacts": (str, list),
    "max_artifact_bytes": (int,),
    "max_weight_bytes": (int,),
    "max_peak_memory_bytes": (int,),
    "max_latency_ms": (dict,),
    "max_accuracy_drop": (int, float),
}
LATENCY_KEYS = ("p50", "p90", "device")
PERCENTILES = ("p50", "p90")


@dataclass(frozen=True)
class LatencyLimit:
    """A latency bound: one percentile on one device."""
    percentile: str
    limit_ms: float
    device: str = "local"


@dataclass
class Budget:
    """One ``[[budget]]`` table: which artifacts (globs) it covers, and its limits by metric name."""
    patterns: list[str]
    limits: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # file:line of the table, for messages
    base_dir: Path = Path(".")
    lines: dict[str, str] = field(default_factory=dict)  # key -> file:line, so a row or error points at its key


def _line_of(text: str, key: str, nth_table: int) -> int:
    """The 1-based line of ``key`` inside the nth ``[[budget]]`` table (tomllib gives no positions)."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if re.match(r"\s*\[\[\s*budget\s*\]\]", ln)]
    lo = starts[nth_table] if nth_table < len(starts) else 0
    hi = starts[nth_table + 1] if nth_table + 1 < len(starts) else len(lines)
    pat = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=|[{{,]\s*{re.escape(key)}\s*=")
    for i in range(lo, hi):
        if pat.search(lines[i]):
            return i + 1
    return lo + 1


def _valid(keys) -> str:
    return ", ".join(keys)


def load_budgets(path: Path) -> list[Budget]:
    """Parse ``path``; unknown keys, wrong types and missing ``artifacts`` are EdgecErrors naming file:line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise EdgecError(f"budget file {path} cannot be read: {e.strerror}", "pass an existing edgec.toml") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EdgecError(f"{path}: not valid TOML: {e}", "fix the syntax (see docs/ci-gating.md)") from None
    for key in data:
        if key != "budget":
            raise EdgecError(f"{path}:{_line_of(text, key, 0)}: unknown top-level key '{key}'",
                             "the file holds [[budget]] tables only")
    tables = data.get("budget")
    if not isinstance(tables, list) or not tables:
        raise EdgecError(f"{path}: no [[budget]] table", "add one: [[budget]] artifacts = \"out/*\" ...")
    budgets = []
    for n, table in enumerate(tables):
        where = f"{path}:{_line_of(text, 'artifacts', n)}"
        limits: dict[str, Any] = {}
        lines: dict[str, str] = {}
        for key, value in table.items():
            line = f"{path}:{_line_of(text, key, n)}"
            lines[key] = line
            if key not in BUDGET_KEYS:
                raise EdgecError(f"{line}: unknown budget key '{key}'", f"valid keys: {_valid(BUDGET_KEYS)}")
            types = BUDGET_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise EdgecError(f"{line}: '{key}' must be {' or '.join(t.__name__ for t in types)}, "
                                 f"not {type(value).__name__}", f"valid keys: {_valid(BUDGET_KEYS)}")
            if key == "max_latency_ms":
                value = _latency(value, f"{path}", text, n)
            elif key != "artifacts":
                if value < 0:
                    raise EdgecError(f"{line}: '{key}' must be >= 0", "limits are non-negative")
            limits[key] = value
        if "artifacts" not in limits:
            raise EdgecError(f"{where}: [[budget]] #{n + 1} has no 'artifacts' glob",
                             "add artifacts = \"out/*\" (relative to the budget file's folder)")
        patterns = limits.pop("artifacts")
        patterns = [patterns] if isinstance(patterns, str) else patterns
        if not all(isinstance(p, str) for p in patterns):
            raise EdgecError(f"{where}: 'artifacts' must be a glob string or a list of them", "e.g. \"out/*\"")
        if not limits:
            raise EdgecError(f"{where}: [[budget]] #{n + 1} sets no limit", f"valid keys: {_valid(BUDGET_KEYS)}")
        budgets.append(Budget(patterns, limits, where, path.parent, lines))
    return budgets


def _latency(value: dict, path: str, text: str, n: int) -> LatencyLimit:
    for key, v in value.items():
        line = f"{path}:{_line_of(text, key, n)}"
        if key not in LATENCY_KEYS:
            raise EdgecError(f"{line}: unknown max_latency_ms key '{key}'", f"valid keys: {_valid(LATENCY_KEYS)}")
        if key == "device" and not isinstance(v, str):
            raise EdgecError(f"{line}: max_latency_ms.device must be a string", "e.g. device = \"local\"")
        if key != "device" and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise EdgecError(f"{line}: max_latency_ms.{key} must be a number", "e.g. p90 = 1.5")
    pcts = [k for k in PERCENTILES if k in value]
    if len(pcts) != 1:
        raise EdgecError(f"{path}:{_line_of(text, 'max_latency_ms', n)}: max_latency_ms needs exactly one of "
                         f"{_valid(PERCENTILES)}", "e.g. max_latency_ms = { p90 = 1.5, device = \"local\" }")
    return LatencyLimit(pcts[0], float(value[pcts[0]]), value.get("device", "local"))
