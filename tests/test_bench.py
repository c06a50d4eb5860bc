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
