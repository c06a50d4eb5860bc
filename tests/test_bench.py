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
