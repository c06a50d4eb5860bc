"""`edgec report` and the report.html that `edgec compile` writes: per-layer figures recorded per stage, the page
self-contained (no URL), opened in headless Chromium without console messages, its images decodable and drawn.

Chromium is Debian's `chromium` (scripts/setup.sh installs it); without it the browser tests skip and say so.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgec.toolchain.artifact import open_artifact

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                    "(scripts/setup.sh installs it): cannot open the HTML report in a browser")
BAR_BLUE = (0x4C, 0x72, 0xB0)  # the first series colour of edgec.toolchain.plots


@pytest.fixture(scope="session")
def report_artifacts(tmp_path_factory):
    """The embedded model compiled float and int8 (32 real training digits as calibration), not verified."""
    from edgec.models import mnist_split
    from edgec.pruning.calib import spread
    from edgec.toolchain.api import compile

    root = tmp_path_factory.mktemp("html_report")
    calib = root / "calib.npy"
    np.save(calib, spread(mnist_split()["train"][0], 32))
    compile(output=root / "float", verify=False)
    compile(output=root / "int8", verify=False, quantize={"mode": "int8", "calib": str(calib), "samples": 32})
    return root


def _bench(path: Path, manifest_sha256: str) -> Path:
    rng = np.random.default_rng(0)
    samples = (0.5 + rng.gamma(4.0, 0.02, 200)).tolist()
    q = np.percentile(samples, [50, 90, 95, 99])
    lat = {"min": min(samples), "mean": float(np.mean(samples)), "std": float(np.std(samples)), "p50": q[0],
           "p90": q[1], "p95": q[2], "p99": q[3], "max": max(samples)}
    data = {"schema": "edgec.bench/1", "edgec_version": "0.1.0", "created": "2026-12-04T03:00:00Z",
            "artifact": {"path": "x", "manifest_sha256": manifest_sha256, "target": {}, "model": "m"},
            "device": {"name": "local", "key": None, "tracker": None, "emulated": False},
            "host": {"cpu": "test cpu", "arch": "x86_64", "features": []}, "threads": 1, "warmup": 10, "runs": 200,
            "max_seconds": 60.0, "load_ms": 12.3, "first_run_ms": 4.5, "latency_ms": lat, "samples_ms": samples,
            "throughput_per_s": 1000 / lat["mean"], "peak_rss_bytes": 123456789,
            "profile": [{"op": "fused_conv2d_add_relu_unique_op", "calls": 6, "time_ms": 0.4, "percent": 80.0,
                         "cumulative_percent": 80.0},
                        {"op": "fused_matmul_add", "calls": 1, "time_ms": 0.1, "percent": 20.0,
                         "cumulative_percent": 100.0}],
            "compare": {"onnxruntime": {"latency_ms": {k: v * 1.2 for k, v in lat.items()}, "samples_ms": [],
                                        "ratio": {k: 1 / 1.2 for k in lat}}}}
    path.write_text(json.dumps(data))
    return path


def _assert_self_contained(page: str) -> None:
    """No URL anywhere (base64 has no ':'), every src/href inline, no CSS url() or @import."""
    assert not re.search(r"(https?|ftp|file):", page, re.I), "the page references a URL"
    links = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page, re.I)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "url(" not in page and "@import" not in page


def _images(page: str) -> list:
    from PIL import Image

    found = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    images = []
    for b64 in found:
        img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        img.load()  # decodes every pixel: a truncated PNG fails here
        images.append(img)
    assert len(images) == page.count("<img "), "an <img> that is not an inline PNG"
    return images


def _open_in_chromium(page: Path, shot: Path, profile: Path) -> list[str]:
    """Screenshot ``page`` in headless Chromium; return the console lines it logged (errors, uncaught ...)."""
    proc = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,2000",
                           "--hide-scrollbars", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=90)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-800:]}"
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _blue_pixels(shot: Path) -> tuple[float, int]:
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    blue = np.all(np.abs(pixels - np.array(BAR_BLUE)) <= 6, axis=-1)
    return float(pixels.std()), int(blue.sum())


def test_compile_records_layers_and_hashes_the_report(report_artifacts):
    from edgec.toolchain.inspect import inspect_model

    float_art = open_artifact(report_artifacts / "float")  # hash-checked, report.html and layers.json included
    q_art = open_artifact(report_artifacts / "int8")
    for art in (float_art, q_art):
        assert {"report.html", "layers.json", "report.md"} <= set(art.manifest["files"])
    layers = json.loads((report_artifacts / "float" / "layers.json").read_text())
    stages = layers["stages"]
    assert [s["after"] for s in stages] == ["source", "pipeline: fold_batchnorm"]
    # the source row totals are `edgec inspect`'s totals of the source model
    import onnx

    from edgec.toolchain.api import default_model

    stats = inspect_model(onnx.load(str(default_model())))
    assert stages[0]["weight_bytes"] == stats.total_weight_bytes and stages[0]["macs"] == stats.total_macs
    # BN folding: BatchNormalization rows gone, the convs' MACs unchanged, the convs gained a bias
    assert not any(r[1] == "BatchNormalization" for r in stages[1]["layers"])
    assert [r[3] for r in stages[0]["layers"] if r[3]] == [r[3] for r in stages[1]["layers"] if r[3]]
    q_stages = json.loads((report_artifacts / "int8" / "layers.json").read_text())["stages"]
    assert q_stages[-1]["after"] == "quantize: int8"
    float_convs = [r[2] for r in q_stages[-2]["layers"] if r[1] == "Conv"]
    int8_convs = [r[2] for r in q_stages[-1]["layers"] if r[1] == "Conv"]
    # int8 weights (+ per-channel scales, zero points and int32 biases): 3.5 to 4 times smaller than float32 in
    # all, less for the 144-weight stem whose 16 channels' scales and biases weigh as much as its weights
    assert len(float_convs) == len(int8_convs) == 6 and all(f > 1.8 * q for f, q in zip(float_convs, int8_convs))
    assert 3.5 < sum(float_convs) / sum(int8_convs) < 4


def test_report_sections_follow_the_data(report_artifacts):
    float_page = (report_artifacts / "float" / "report.html").read_text()
    q_page = (report_artifacts / "int8" / "report.html").read_text()
    for page in (float_page, q_page):
        _assert_self_contained(page)
        assert "Not pruned" in page and "No bench results given" in page
    assert "Not quantized" in float_page and "Not quantized" not in q_page
    # one SQNR table row per quantized layer: 6 convs and the fc layer, all int8
    sqnr_table = q_page.split("Quantization: SQNR per layer")[1].split("<h2>")[0]
    assert sqnr_table.count("<td>int8</td>") == 7
    assert len(_images(float_page)) == 3 and len(_images(q_page)) == 4  # totals, bytes, MACs (+ SQNR)


@needs_chromium
def test_report_command_opens_in_chromium_with_its_images(report_artifacts, cli, tmp_path):
    q_dir = report_artifacts / "int8"
    bench = _bench(tmp_path / "b.json", open_artifact(q_dir).manifest_sha256)
    out = tmp_path / "r" / "report.html"
    code, stdout, stderr = cli("report", q_dir, "-o", out, "--bench", bench)
    assert code == 0, stderr
    page = out.read_text()
    _assert_self_contained(page)
    assert "fused_conv2d_add_relu_unique_op" in page and "ratio edgec/onnxruntime" in page
    assert "Measured on another artifact" not in page
    images = _images(page)
    assert len(images) == 5 and all(img.width > 100 and img.height > 100 for img in images)  # + latency histogram
    console = _open_in_chromium(out, tmp_path / "shot.png", tmp_path / "profile")
    assert console == []
    std, blue = _blue_pixels(tmp_path / "shot.png")
    # not blank, and the charts' bars are drawn (a broken image draws no bar colour)
    assert std > 20 and blue > 5000, (std, blue)


@needs_chromium
def test_the_browser_check_sees_console_errors_and_missing_images(tmp_path):
    """The checks above can fail: a page with a script error and a broken image is caught by both."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><h1>x</h1><img src="data:image/png;base64,AAAA">'
                    "<script>undefinedFunction();</script></body></html>")
    console = _open_in_chromium(page, tmp_path / "shot.png", tmp_path / "profile")
    assert any("Uncaught ReferenceError" in line for line in console)
    assert _blue_pixels(tmp_path / "shot.png")[1] == 0
    with pytest.raises(Exception):
        _images(page.read_text())


def test_report_refuses_bad_outputs_and_bench_files(report_artifacts, cli, tmp_path):
    art = report_artifacts / "float"
    before = (art / "report.html").read_bytes()
    code, _, err = cli("report", art, "-o", art / "report.html")
    assert code == 2 and "is inside the input" in err and (art / "report.html").read_bytes() == before
    folder = tmp_path / "somefolder"
    folder.mkdir()
    code, _, err = cli("report", art, "-o", folder)
    assert code == 2 and "is a folder" in err
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps({"schema": "other/9"}))
    code, _, err = cli("report", art, "-o", bench, "--bench", bench)
    assert code == 2 and "is the input" in err and json.loads(bench.read_text()) == {"schema": "other/9"}
    code, _, err = cli("report", art, "-o", tmp_path / "r.html", "--bench", bench)
    assert code == 2 and "has schema 'other/9', not 'edgec.bench/1'" in err
    assert not (tmp_path / "r.html").exists()
    code, _, err = cli("report", tmp_path / "missing", "-o", tmp_path / "r.html")
    assert code == 2 and "does not exist" in err


def test_pruning_and_accuracy_sections_from_real_records():
    """Pruning (the embedded model at half its MACs, no TVM build) and a mixed-precision search record render
    their charts and rows; the layer record sees the MACs drop at the prune stage."""
    from edgec.passes.prune_channels import PruneChannels
    from edgec.toolchain.api import default_model
    from edgec.toolchain.html_report import render_html
    from edgec.toolchain.layer_record import LayerRecorder
    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    model = load_model(default_model(), {})
    layers = LayerRecorder()
    layers.add("source", model)
    model, log = run_pipeline(model, [PruneChannels(macs=0.5, round_to=8)],
                              observe=lambda name, m: layers.add(f"prune: {name}", m))
    record = layers.to_dict()
    assert [s["after"] for s in record["stages"]] == ["source", "prune: prune_channels"]
    assert record["stages"][1]["macs"] <= 0.5 * record["stages"][0]["macs"]
    steps = [{"step": "all int8", "drop_pt": 1.5, "weight_bytes": 30000, "best": False},
             {"step": "fc float", "drop_pt": 0.3, "weight_bytes": 34000, "best": True}]
    manifest = {"source": {"path": "m.onnx"}, "target": {"name": "x86"}, "sizes": {},
                "passes": [{"stage": "prune", **e} for e in log],
                "quantization": {"mode": "int8", "mixed_precision": {"steps": steps, "metric": "top-1",
                                                                     "measured_on": "val.npz", "max_drop": 0.5}}}
    page = render_html(manifest, record)
    _assert_self_contained(page)
    pruned = page.split("Pruning: channels per layer")[1].split("<h2>")[0]
    assert pruned.count("<tr>") == 1 + len(log[0]["report"]["layers"]) and "Not pruned" not in pruned
    accuracy = page.split("Accuracy vs size")[1].split("<h2>")[0]
    assert "fc float" in accuracy and "+0.30" in accuracy and "<img" in accuracy
    assert len(_images(page)) == 5  # totals, bytes, MACs, channels, accuracy vs size
