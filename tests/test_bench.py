"""edgec bench on this machine: the edgec.bench/1 record (docs/bench-schema.md) of the embedded model, next to
onnxruntime on the same inputs; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

KEYS = {"schema", "edgec_version", "created", "artifact", "device", "host", "threads", "warmup", "runs", "max_seconds",
        "load_ms", "first_run_ms", "latency_ms", "samples_ms", "throughput_per_s", "peak_rss_bytes", "profile",
        "compare"}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from edgec.toolchain.api import compile as do_compile

    out = tmp_path_factory.mktemp("bench") / "out"
    do_compile(None, target="x86", output=out, verify=False)
    return out


def test_record_with_onnxruntime(artifact, cli, tmp_path):
    from edgec.devices.device_main import sha256_file

    code, out, err = cli("bench", artifact, "--runs", "40", "--warmup", "2", "--compare", "onnxruntime",
                         "--rounds", "2", "--json", tmp_path / "b.json")
    assert code == 0, err
    record = json.loads((tmp_path / "b.json").read_text())
    assert set(record) == KEYS and record["schema"] == "edgec.bench/1"
    assert record["artifact"]["manifest_sha256"] == sha256_file(artifact / "manifest.json")
    assert record["device"] == {"name": "local", "tracker": None, "key": None, "emulated": False}
    assert record["runs"] == len(record["samples_ms"]) == 40 and record["threads"] == 1
    lat = record["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert record["load_ms"] > 0 and record["first_run_ms"] > 0 and record["peak_rss_bytes"] > 10 * 2**20
    assert record["host"]["arch"] == "x86_64" and "avx2" in record["host"]["features"]
    ort = record["compare"]["onnxruntime"]
    assert len(ort["samples_ms"]) == 40
    assert ort["ratio"]["p50"] == pytest.approx(lat["p50"] / ort["latency_ms"]["p50"], rel=1e-3)
    assert "edgec/onnxruntime p50" in out and "onnxruntime: p50" in out


@pytest.mark.parametrize("args,needle", [
    (["--compare", "tensorrt"], "unknown --compare peer 'tensorrt'"),
    (["--compare", "tflite"], "--compare tflite needs the model"),
    (["--runs", "0"], "--runs"),
    (["--device", "rpc://host-only"], "rpc://host:port/KEY"),
])
def test_bad_input_is_one_line(artifact, cli, args, needle):
    code, _, err = cli("bench", artifact, *args)
    assert code == 2 and err.strip().count("\n") == 0 and needle in err, err


def test_json_never_overwrites_an_input(artifact, cli):
    code, _, err = cli("bench", artifact, "--json", artifact / "manifest.json")
    assert code == 2 and err.strip().count("\n") == 0


def test_profile_times_every_kernel_the_build_recorded(artifact, cli, tmp_path):
    """--profile: the kernels the manifest lists (recorded at build time: the compiled VM has no profiler hook)
    are each timed on the device, × their calls; rows by time with % and cumulative % of the whole, a row for
    what lies between kernels when the end-to-end p50 exceeds their sum, and the table printed."""
    code, out, err = cli("bench", artifact, "--runs", "20", "--warmup", "2", "--profile", "--json", tmp_path / "p.json")
    assert code == 0, err
    record = json.loads((tmp_path / "p.json").read_text())
    kernels = json.loads((artifact / "manifest.json").read_text())["target"]["build"]["kernels"]
    assert {k["name"] for k in kernels} >= {"fused_matmul_add4"} and all(k["calls"] >= 1 for k in kernels)
    rows = {r["op"]: r for r in record["profile"]}
    assert {k["name"] for k in kernels} <= set(rows)
    for k in kernels:
        row = rows[k["name"]]
        assert row["calls"] == k["calls"] and row["time_ms"] == pytest.approx(row["per_call_ms"] * k["calls"])
        assert row["time_ms"] > 0
    assert set(rows) - {k["name"] for k in kernels} <= {"(between kernels: VM, allocation, copies)"}
    times = [r["time_ms"] for r in record["profile"]]
    assert times == sorted(times, reverse=True)
    assert sum(r["percent"] for r in record["profile"]) == pytest.approx(100.0)
    cumulative = [r["cumulative_percent"] for r in record["profile"]]
    assert cumulative == sorted(cumulative) and cumulative[-1] == pytest.approx(100.0)
    assert "kernels (each timed alone on the device" in out and record["profile"][0]["op"] in out


def test_profile_without_a_kernel_list_says_why():
    """An artifact built by an older edgec (no kernel list in its manifest) is told to recompile."""
    from edgec.devices.device_main import ArtifactError, manifest_kernels

    with pytest.raises(ArtifactError, match="recompile it"):
        manifest_kernels({"target": {"family": "cpu", "build": {}}})
    with pytest.raises(ArtifactError, match="recompile it"):
        manifest_kernels({"target": {"family": "cuda", "build": {"cubin_arch": "sm_90"}}})


def test_bench_all_runs_artifacts_on_parallel_runners_in_order(artifact):
    """Several artifacts on a farm: as many at once as workers (one runner each), records in the artifacts'
    order; with --compare (peers time on this machine) one at a time."""
    import threading
    import time

    from edgec.devices.base import RunResult
    from edgec.devices.bench import BenchOptions, bench_all

    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    class SlowRunner:
        name = "fake"

        def bench(self, artifact_dir, inputs, spec):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.3)
            with lock:
                state["now"] -= 1
            return RunResult({}, [0.5] * spec.runs, details={"load_ms": 1.0})

    paths = [artifact] * 4
    records = bench_all(paths, BenchOptions(runs=3, warmup=0), lambda p: (SlowRunner(), {"name": "fake"}),
                        workers=2)
    assert len(records) == 4 and state["most"] == 2 and all(r["runs"] == 3 for r in records)
    state["most"] = 0
    bench_all(paths[:2], BenchOptions(runs=3, warmup=0, compare=(("onnxruntime", None),), rounds=1),
              lambda p: (SlowRunner(), {"name": "fake"}), workers=2)
    assert state["most"] == 1


def test_several_artifacts_write_one_record_each_into_a_new_folder(artifact, cli, tmp_path):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(artifact, twin)
    code, out, err = cli("bench", artifact, twin, "--runs", "5", "--warmup", "1", "--json", tmp_path / "b")
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files == sorted([f"{artifact.name}.json", "twin.json"])
    assert out.count("== ") == 2 and "written:" in out
    code, _, err = cli("bench", artifact, twin, "--runs", "5", "--json", tmp_path / "b")
    assert code == 2 and "exists" in err and err.strip().count("\n") == 0


def test_device_program_and_bench_run_on_the_tvm_runtime_alone(artifact, tmp_path):
    """What a device without TVM's compiler has (bench/device_check.py carries only the runtime to the device
    machine): with ``TVM_USE_RUNTIME_LIB=1`` the compiler library is never loaded, and `edgec bench` and `edgec
    run` still load, run and time the artifact, with the outputs of the full TVM."""
    import os
    import subprocess
    import sys

    import numpy as np

    from edgec.devices.device_main import run_artifact

    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    cli_main = "from edgec.toolchain.cli import main; main()"
    probe = subprocess.run([sys.executable, "-c", "import tvm.base as b; print(sorted(b._LOADED_LIBS))"],
                           env=env, capture_output=True, text=True)
    assert "tvm_compiler" not in probe.stdout and "tvm_runtime" in probe.stdout, probe.stdout + probe.stderr
    for args in (["run", str(artifact), "--input", str(tmp_path / "in.npz"), "--save", str(tmp_path / "out.npz")],
                 ["bench", str(artifact), "--runs", "5", "--warmup", "1", "--json", str(tmp_path / "b.json")]):
        proc = subprocess.run([sys.executable, "-c", cli_main, *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    expected, _ = run_artifact(artifact, {"input": x})
    got = np.load(tmp_path / "out.npz")
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)
    assert json.loads((tmp_path / "b.json").read_text())["runs"] == 5
