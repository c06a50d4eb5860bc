"""``edgec bench``: an artifact timed on its device, next to its peers on the same inputs, in one JSON schema.

The figures are the anchors' (TFLite's benchmark_model, onnxruntime_perf_test): load + init, the first run, then
after a warm-up min / mean / std / p50 / p90 / p95 / p99 / max of N runs (or what a time cap allows), throughput,
and the peak resident memory of the process that ran the artifact. The runs are timed on the device by the
runner (device_main's ``--bench``: local in a child process, the emulated aarch64 device, a board behind a TVM RPC
tracker), the one timing path every edgec timing goes through.

Peers (``--compare onnxruntime[,tflite=model.tflite]``) run here on the same inputs with the same thread count, and
their runs are interleaved with the artifact's in rounds (a host's speed drifts within minutes): each round times
a share of the runs of every contender in turn. Ratios (artifact / peer) are per percentile.

The JSON schema is ``edgec.bench/1`` (docs/bench-schema.md); ``check`` and ``report`` read it.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgec.devices.base import BenchSpec, Runner
from edgec.devices.inputs import random_inputs
from edgec.errors import EdgecError

SCHEMA = "edgec.bench/1"
PERCENTILES = (50, 90, 95, 99)
PEERS = ("onnxruntime", "tflite")


PROFILE_LINES = 15  # kernels ``edgec bench --profile`` prints; the JSON holds them all


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    runs: int = 100
    warmup: int = 10
    threads: int = 1
    max_seconds: float = 60.0
    rounds: int = 5  # interleaved rounds when peers are compared
    compare: tuple[tuple[str, str | None], ...] = ()  # (peer, model path or None: the artifact's source)
    profile: bool = False  # every kernel timed alone on the device, after the first round


def parse_compare(text: str | None) -> tuple[tuple[str, str | None], ...]:
    """``onnxruntime,tflite=model.tflite`` → (("onnxruntime", None), ("tflite", "model.tflite"))."""
    peers = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, _, path = item.strip().partition("=")
        if name not in PEERS:
            raise EdgecError(f"unknown --compare peer '{name}'", f"use {', '.join(PEERS)} (tflite=MODEL.tflite)")
        if name == "tflite" and not path:
            raise EdgecError("--compare tflite needs the model", "write tflite=model.tflite")
        if path and not Path(path).is_file():
            raise EdgecError(f"--compare {name}: no file {path}", "name an existing model file")
        peers.append((name, path or None))
    return tuple(peers)


def stats(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    out = {"min": float(a.min()), "mean": float(a.mean()), "std": float(a.std()),
           **{f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}, "max": float(a.max())}
    return {k: round(v, 6) for k, v in out.items()}


def host() -> dict[str, Any]:
    """The machine the bench ran on (the device's, when it is this one): CPU name and ISA features."""
    from edgec.targets.base import host_arch
    from edgec.targets.cpu.isa import host_features

    name = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    arch = host_arch()
    return {"cpu": name, "arch": arch, "features": sorted(host_features(arch))}


def _peer_timer(name: str, path: Path, inputs: dict[str, np.ndarray], threads: int) -> Callable[[], None]:
    """One call of the peer on ``inputs``, ready to time (sessions built and warmed here)."""
    if name == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {i.name: inputs[i.name] for i in session.get_inputs() if i.name in inputs}
        session.run(None, feed)
        return lambda: session.run(None, feed)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise EdgecError("--compare tflite needs the TFLite interpreter", "pip install ai-edge-litert") from e
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    details = interp.get_input_details()
    values = list(inputs.values())
    for i, d in enumerate(details):
        value = inputs.get(d["name"], values[i] if i < len(values) else None)
        if value is None or tuple(value.shape) != tuple(d["shape"]):
            raise EdgecError(f"--compare tflite: input {d['name']} {tuple(d['shape'])} does not match the "
                             "artifact's inputs", "compare against the .tflite the artifact was compiled from")
        interp.set_tensor(d["index"], value.astype(d["dtype"]))

    def call() -> None:
        interp.invoke()
    call()
    return call


def _source_model(manifest: dict[str, Any], artifact_dir: Path) -> Path:
    source = Path(manifest.get("source", {}).get("path") or "")
    if source.suffix == ".onnx" and source.is_file():
        return source
    optimized = artifact_dir / "optimized.onnx"
    if optimized.is_file():
        return optimized
    raise EdgecError("--compare onnxruntime: the artifact's source model is not at its recorded path",
                     "run the bench where the source model is")


def bench(artifact_dir: str | Path, options: BenchOptions, runner: Runner, device: dict[str, Any],
          inputs: dict[str, np.ndarray] | None = None, progress: Callable[[int, int], None] | None = None
          ) -> dict[str, Any]:
    """Time the artifact on ``runner`` (and the peers here, interleaved); the ``edgec.bench/1`` record."""
    from edgec.devices.device_main import sha256_file
    from edgec.toolchain.artifact import open_artifact

    artifact = open_artifact(artifact_dir)
    manifest = artifact.manifest
    feed = inputs if inputs is not None else random_inputs(manifest["inputs"], 0)
    peers = {}
    for name, path in options.compare:
        model = Path(path) if path else _source_model(manifest, artifact.path)
        peers[name] = _peer_timer(name, model, feed, options.threads)
    rounds = options.rounds if peers else 1
    per_round = max(1, -(-options.runs // rounds))
    samples: list[float] = []
    peer_samples: dict[str, list[float]] = {name: [] for name in peers}
    details: dict[str, Any] = {}
    emulated = False
    started = time.monotonic()
    for r in range(rounds):
        spec = BenchSpec(runs=per_round, warmup=options.warmup if r == 0 else 1,
                         max_seconds=max(0.05, options.max_seconds / rounds), threads=options.threads,
                         profile=options.profile and r == 0)
        result = runner.bench(artifact.path, feed, spec)
        emulated = emulated or result.emulated
        samples += result.latencies_ms
        if r == 0:
            details = result.details
        else:  # the first round's load and first run are the cold ones; memory is the peak over the rounds
            peak = [v for v in (details.get("peak_rss_bytes"), result.details.get("peak_rss_bytes")) if v]
            details["peak_rss_bytes"] = max(peak) if peak else None
        for name, call in peers.items():
            for _ in range(min(per_round, max(1, len(result.latencies_ms)))):
                t0 = time.perf_counter()
                call()
                peer_samples[name].append((time.perf_counter() - t0) * 1e3)
        if progress is not None:
            progress(r + 1, rounds)
        if time.monotonic() - started > options.max_seconds:
            break
    latency = stats(samples)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "edgec_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "artifact": {"path": str(artifact.path), "manifest_sha256": sha256_file(artifact.path / "manifest.json"),
                     "target": manifest["target"], "model": Path(manifest.get("source", {}).get("path") or "").name},
        "device": {**device, "emulated": emulated},
        "host": host(),
        "threads": options.threads, "warmup": options.warmup, "runs": len(samples),
        "max_seconds": options.max_seconds,
        "load_ms": details.get("load_ms"), "first_run_ms": details.get("first_run_ms"),
        "latency_ms": latency,
        "samples_ms": [round(v, 6) for v in samples],
        "throughput_per_s": round(1e3 / latency["mean"], 3) if latency["mean"] > 0 else None,
        "peak_rss_bytes": details.get("peak_rss_bytes"),
        "profile": details.get("profile"),
        "compare": {},
    }
    for name, values in peer_samples.items():
        peer = stats(values)
        record["compare"][name] = {"latency_ms": peer, "samples_ms": [round(v, 6) for v in values],
                                   "ratio": {k: round(latency[k] / peer[k], 4) if peer[k] > 0 else None
                                             for k in ("min", "mean", *(f"p{p}" for p in PERCENTILES))}}
    return record


def bench_all(artifacts: list[Path], options: BenchOptions,
              runner_for: Callable[[Path], tuple[Runner, dict[str, Any]]], workers: int = 1,
              inputs: dict[str, np.ndarray] | None = None, done: Callable[[Path], None] | None = None
              ) -> list[dict[str, Any]]:
    """:func:`bench` of every artifact, in their order, each on the runner ``runner_for`` gives it (a fresh one
    per artifact). ``workers`` > 1 benches that many at once: on a farm, one free server of the key each, which
    the tracker hands out. Peers time on this machine, so with ``--compare`` artifacts go one at a time (two at
    once would share its cores)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(path: Path) -> dict[str, Any]:
        runner, device = runner_for(path)
        record = bench(path, options, runner, device, inputs=inputs)
        if done is not None:
            done(path)
        return record

    workers = 1 if options.compare else max(1, min(workers, len(artifacts)))
    if workers == 1:
        return [one(p) for p in artifacts]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, artifacts))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgec")
    except PackageNotFoundError:
        return "unknown"


def summary(record: dict[str, Any]) -> list[str]:
    """The lines ``edgec bench`` prints."""
    lat, dev = record["latency_ms"], record["device"]
    where = dev["name"] + (f" {dev['key']}@{dev['tracker']}" if dev.get("key") else "")
    note = " (emulated device: proves the timing path, not a performance figure)" if dev["emulated"] else ""
    lines = [f"host {record['host']['cpu']} ({record['host']['arch']}); device {where}{note}; "
             f"{record['threads']} thread(s)",
             f"load {_ms(record['load_ms'])}, first run {_ms(record['first_run_ms'])}, {record['runs']} runs after "
             f"{record['warmup']} warm-up",
             "latency ms: " + ", ".join(f"{k} {lat[k]:.4f}" for k in ("min", "mean", "std", "p50", "p90", "p95",
                                                                        "p99", "max")),
             f"throughput {record['throughput_per_s']} /s"
             + (f", peak memory {record['peak_rss_bytes'] / 2**20:.1f} MiB" if record["peak_rss_bytes"] else "")]
    for name, peer in record["compare"].items():
        ratio = peer["ratio"]
        lines.append(f"{name}: p50 {peer['latency_ms']['p50']:.4f} ms vs edgec {lat['p50']:.4f} ms; edgec/"
                     f"{name} p50 {ratio['p50']:.3f}x, p90 {ratio['p90']:.3f}x, p99 {ratio['p99']:.3f}x")
    profile = record.get("profile")
    if profile:
        lines.append("kernels (each timed alone on the device, x calls per inference):")
        lines.append(f"  {'ms':>9}  {'%':>5}  {'cum %':>5}  {'calls':>5}  kernel")
        for row in profile[:PROFILE_LINES]:
            if row["time_ms"] is None:
                continue
            calls = "" if row["calls"] is None else str(row["calls"])
            lines.append(f"  {row['time_ms']:9.4f}  {row['percent']:5.1f}  {row['cumulative_percent']:5.1f}  "
                         f"{calls:>5}  {row['op']}")
        if len(profile) > PROFILE_LINES:
            lines.append(f"  ... {len(profile) - PROFILE_LINES} more in --json")
    return lines


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} ms"
