"""``edgec check``: evaluate budget files (and a baseline) against artifacts, the CI gate. One row per budget per
artifact; a metric is one row of :data:`METRICS` (how to read it, its unit, how to measure it when missing)."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from xml.etree import ElementTree as ET

from edgec.errors import EdgecError
from edgec.toolchain.artifact import open_artifact
from edgec.toolchain.budget import Budget, LatencyLimit

__all__ = ["Row", "Facts", "Metric", "METRICS", "CheckOptions", "resolve_artifacts", "evaluate", "run_check",
           "format_table", "junit_xml", "benchmark_json", "measure_bench", "NotMeasured"]


class NotMeasured(EdgecError):
    """A budget names a metric this run has no figure for (exit 2, with how to measure it)."""


@dataclass
class Facts:
    """What is known about one artifact (or a baseline): its manifest and, when given or measured, its bench JSON."""
    path: Path
    manifest: dict[str, Any]
    bench: dict[str, Any] | None = None


@dataclass
class Row:
    """One budget on one artifact."""
    artifact: str
    metric: str
    value: float
    limit: float
    unit: str
    passed: bool
    source: str  # file:line of the budget, or "baseline"

    @property
    def margin(self) -> float:
        """How far below the limit (negative: over it)."""
        return self.limit - self.value

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin": self.margin}


def _artifact_bytes(f: Facts, _limit: Any) -> float:
    return float(sum(int(v["bytes"]) for v in f.manifest["files"].values()))


def _weight_bytes(f: Facts, _limit: Any) -> float | None:
    sizes = f.manifest.get("sizes", {})
    value = sizes.get("artifact_weights_bytes")
    return float(value if value is not None else sizes.get("weights_bytes")) \
        if (value is not None or sizes.get("weights_bytes") is not None) else None


def _peak_memory(f: Facts, _limit: Any) -> float | None:
    return None if f.bench is None or f.bench.get("peak_rss_bytes") is None else float(f.bench["peak_rss_bytes"])


def _latency(f: Facts, limit: LatencyLimit) -> float | None:
    if f.bench is None:
        return None
    device = (f.bench.get("device") or {}).get("name")
    if device != limit.device:
        raise NotMeasured(f"{f.path}: the bench JSON is from device '{device}', the budget asks for "
                          f"'{limit.device}'", f"run `edgec bench {f.path} --device {limit.device} --json "
                          f"b.json` and pass --bench b.json")
    if (f.bench.get("device") or {}).get("emulated"):
        raise NotMeasured(f"{f.path}: the bench JSON is from an emulated device; its times are not figures",
                          "bench on the real device")
    return float(f.bench["latency_ms"][limit.percentile])


def _accuracy_drop(f: Facts, _limit: Any) -> float | None:
    m = f.manifest
    q = m.get("quantization") or {}
    for record in (q.get("mixed_precision"), q.get("eval"), m.get("pruning")):
        if isinstance(record, dict):
            for key in ("final_drop_pt", "drop_pt"):
                if record.get(key) is not None:
                    return float(record[key])
    return None


@dataclass(frozen=True)
class Metric:
    """How to read one budget key's figure (None: not measured) and how a user gets it measured."""
    unit: str
    read: Callable[[Facts, Any], float | None]
    how: str


METRICS: dict[str, Metric] = {
    "max_artifact_bytes": Metric("bytes", _artifact_bytes, "recompile with `edgec compile`"),
    "max_weight_bytes": Metric("bytes", _weight_bytes, "recompile with `edgec compile` (the manifest records sizes)"),
    "max_peak_memory_bytes": Metric("bytes", _peak_memory,
                                    "run `edgec bench ARTIFACT --json b.json` and pass `--bench b.json`"),
    "max_latency_ms": Metric("ms", _latency, "run `edgec bench ARTIFACT --json b.json` and pass `--bench b.json` "
                                              "(or pass --measure to time it now)"),
    "max_accuracy_drop": Metric("pt", _accuracy_drop,
                                "compile with `--quantize mode=int8,max_drop=X,eval=EVAL.npz` so the manifest "
                                "records the drop on the eval set"),
}


@dataclass
class CheckOptions:
    """Inputs of one ``edgec check``."""
    artifacts: list[str]
    budgets: list[Budget]
    benches: list[Path] = field(default_factory=list)
    baseline: Path | None = None
    max_growth_pct: float | None = None
    measure: bool = False
    runs: int = 50
    warmup: int = 5
    cwd: Path = field(default_factory=Path.cwd)


def _expand(pattern: str, base: Path) -> list[Path]:
    full = pattern if os.path.isabs(pattern) else str(base / pattern)
    return [Path(p) for p in sorted(glob.glob(full)) if (Path(p) / "manifest.json").is_file()]


def _budget_matches(budget: Budget, cwd: Path) -> set[Path]:
    """The budget's globs, relative to the budget file's folder; when that matches nothing, to the working
    directory (the file's folder wins: a checked-in edgec.toml means the same wherever CI runs it from)."""
    found: set[Path] = set()
    for pattern in budget.patterns:
        hits = _expand(pattern, budget.base_dir) or _expand(pattern, cwd)
        found |= {p.resolve() for p in hits}
    return found


def resolve_artifacts(args: list[str], cwd: Path) -> list[Path]:
    """Artifact folders from the command line (folders or globs); a missing one is an EdgecError."""
    out: list[Path] = []
    for arg in args:
        if glob.has_magic(arg):
            hits = _expand(arg, cwd)
            if not hits:
                raise EdgecError(f"no artifact folder matches '{arg}'", "compile one with `edgec compile -o DIR`")
            out += hits
        else:
            p = Path(arg) if os.path.isabs(arg) else cwd / arg
            if not (p / "manifest.json").is_file():
                raise EdgecError(f"{arg} is not an artifact folder (no manifest.json)",
                                 "pass the folder `edgec compile -o` wrote")
            out.append(p)
    return out


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise EdgecError(f"{what} {path} cannot be read: {e.strerror}", "pass an existing file") from None
    except json.JSONDecodeError as e:
        raise EdgecError(f"{what} {path} is not JSON: {e}", "pass the file edgec wrote") from None
    if not isinstance(data, dict):
        raise EdgecError(f"{what} {path} is not a JSON object", "pass the file edgec wrote")
    return data


def _load_bench(path: Path) -> dict[str, Any]:
    data = _load_json(path, "bench JSON")
    if data.get("schema") != "edgec.bench/1":
        raise EdgecError(f"bench JSON {path} has schema {data.get('schema')!r}, not 'edgec.bench/1'",
                         "write it with `edgec bench ARTIFACT --json FILE`")
    return data


def measure_bench(path: Path, runs: int, warmup: int, device: str = "local") -> dict[str, Any]:
    """Time the artifact now on ``device`` with bench's runners (the one timing path)."""
    from edgec.devices.bench import BenchOptions, bench
    from edgec.toolchain.api import bench_runner

    runner, where = bench_runner(path, None if device == "local" else device)
    return bench(Path(path), BenchOptions(runs=runs, warmup=warmup, threads=1), runner, where)


def _growth_rows(name: str, facts: Facts, base_manifest: dict | None, base_bench: dict | None,
                 pct: float) -> list[Row]:
    rows = []
    base_facts_sizes = (base_manifest or {}).get("sizes", {})
    if base_manifest is not None:
        base = Facts(Path("baseline"), base_manifest)
        for key, label in (("max_artifact_bytes", "growth.artifact_bytes"), ("max_weight_bytes", "growth.weight_bytes")):
            if key == "max_artifact_bytes" and "files" not in base_manifest:
                continue
            if key == "max_weight_bytes" and not base_facts_sizes:
                continue
            before = METRICS[key].read(base, None)
            now = METRICS[key].read(facts, None)
            if before is None or now is None:
                continue
            limit = before * (1 + pct / 100)
            rows.append(Row(name, label, now, limit, "bytes", now <= limit, f"baseline +{pct:g}%"))
    if base_bench is not None:
        if facts.bench is None:
            raise NotMeasured(f"{name}: a bench baseline needs this artifact's bench too",
                              "pass --bench b.json from `edgec bench ARTIFACT --json b.json`")
        for p in ("p50", "p90"):
            before, now = float(base_bench["latency_ms"][p]), float(facts.bench["latency_ms"][p])
            limit = before * (1 + pct / 100)
            rows.append(Row(name, f"growth.latency_{p}", now, limit, "ms", now <= limit, f"baseline +{pct:g}%"))
    return rows


def evaluate(opts: CheckOptions) -> list[Row]:
    """All rows: every matching budget's limits on every artifact, then baseline growth. NotMeasured/EdgecError on
    bad input (the CLI exits 2)."""
    paths = resolve_artifacts(opts.artifacts, opts.cwd) if opts.artifacts else sorted(
        set().union(*(_budget_matches(b, opts.cwd) for b in opts.budgets)))
    if not paths:
        raise EdgecError("no artifact to check", "pass artifact folders, or set artifacts = \"out/*\" in a budget")
    benches = [_load_bench(p) for p in opts.benches]
    by_hash = {b["artifact"]["manifest_sha256"]: b for b in benches}
    base_manifest = base_bench = None
    if opts.baseline is not None:
        data = _load_json(opts.baseline, "baseline")
        base_bench, base_manifest = (data, None) if data.get("schema") == "edgec.bench/1" else (None, data)
        if opts.max_growth_pct is None:
            raise EdgecError("--baseline needs --max-growth", "e.g. --max-growth 5%")
    rows: list[Row] = []
    matched_any = False
    for path in paths:
        art = open_artifact(path)
        name = os.path.relpath(path, opts.cwd)
        facts = Facts(path, art.manifest, by_hash.get(art.manifest_sha256))
        budgets = [b for b in opts.budgets if path.resolve() in _budget_matches(b, opts.cwd)]
        matched_any |= bool(budgets)
        needs_bench = any(k in ("max_latency_ms", "max_peak_memory_bytes") for b in budgets for k in b.limits)
        if facts.bench is None and opts.measure and (needs_bench or base_bench is not None):
            devices = {b.limits["max_latency_ms"].device for b in budgets if "max_latency_ms" in b.limits}
            facts.bench = measure_bench(path, opts.runs, opts.warmup, devices.pop() if len(devices) == 1 else "local")
        for budget in budgets:
            for key, limit in budget.limits.items():
                metric = METRICS[key]
                value = metric.read(facts, limit)
                if value is None:
                    raise NotMeasured(f"{name}: '{key}' ({budget.lines.get(key, budget.source)}) was not measured for this artifact",
                                      metric.how)
                bound = limit.limit_ms if isinstance(limit, LatencyLimit) else float(limit)
                label = f"{key}.{limit.percentile}@{limit.device}" if isinstance(limit, LatencyLimit) else key
                rows.append(Row(name, label, value, bound, metric.unit, value <= bound,
                                budget.lines.get(key, budget.source)))
        if opts.baseline is not None:
            rows += _growth_rows(name, facts, base_manifest, base_bench, float(opts.max_growth_pct))
    if opts.budgets and not matched_any:
        raise EdgecError("no budget's artifacts glob matches any artifact checked",
                         "fix artifacts = \"...\" (relative to the budget file's folder, else the working directory)")
    return rows


def _fmt(v: float, unit: str) -> str:
    return f"{v:,.0f}" if unit == "bytes" else f"{v:.3f}"


def format_table(rows: list[Row]) -> str:
    """The table the CLI prints: every row with value, limit, margin and PASS/FAIL."""
    head = ("artifact", "metric", "value", "limit", "margin", "unit", "result")
    body = [(r.artifact, r.metric, _fmt(r.value, r.unit), _fmt(r.limit, r.unit), _fmt(r.margin, r.unit), r.unit,
             "pass" if r.passed else "FAIL") for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


def junit_xml(rows: list[Row]) -> bytes:
    """JUnit XML: one testcase per row, failures counted, so CI systems show each budget."""
    failures = sum(not r.passed for r in rows)
    suite = ET.Element("testsuite", name="edgec check", tests=str(len(rows)), failures=str(failures), errors="0")
    for r in rows:
        case = ET.SubElement(suite, "testcase", classname=r.artifact, name=r.metric)
        if not r.passed:
            ET.SubElement(case, "failure", message=f"{r.metric} = {_fmt(r.value, r.unit)} {r.unit} > limit "
                          f"{_fmt(r.limit, r.unit)} ({r.source})")
    root = ET.Element("testsuites", tests=str(len(rows)), failures=str(failures))
    root.append(suite)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def benchmark_json(rows: list[Row]) -> list[dict[str, Any]]:
    """github-action-benchmark's ``customSmallerIsBetter`` entries: one per row (value measured, smaller wins)."""
    return [{"name": f"{r.artifact} {r.metric}", "unit": r.unit, "value": r.value} for r in rows]


def run_check(opts: CheckOptions) -> tuple[list[Row], bool]:
    """Rows and whether every one holds."""
    rows = evaluate(opts)
    return rows, all(r.passed for r in rows)
