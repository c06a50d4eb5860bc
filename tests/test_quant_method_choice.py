"""``--method auto`` (edgec/quantization/method_choice.py): the range method is chosen per model by the output SQNR
of each candidate on the calibration data. Two small nets built so that each candidate must win (outliers the
output carries linearly: min/max; outliers a Tanh saturates away: the 99.99th percentile), the figures checked
against independent quantizations with each method, and the choice recorded by the CLI and the compiled
artifact's manifest."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.quantization import collect
from edgec.quantization.api import quantize_model
from edgec.quantization.method_choice import mean_output_sqnr_db

C, H = 4, 32


def two_convs(path, between: str | None) -> None:
    """x → 1×1 Conv (identity) → [between] → 1×1 Conv → y."""
    rng = np.random.default_rng(0)
    w1 = np.eye(C, dtype=np.float32).reshape(C, C, 1, 1)
    w2 = (rng.standard_normal((C, C, 1, 1)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1")]
    if between:
        nodes.append(helper.make_node(between, ["a"], ["b"], name="act"))
    nodes.append(helper.make_node("Conv", ["b" if between else "a", "w2"], ["y"], name="conv2"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, H, H])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def calibration(path, outliers: int = 6) -> None:
    """32 samples of N(0, 0.5) with ``outliers`` values of ±60 among their 131 072: fewer than the 0.01 % the
    percentile clips."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((32, C, H, H)) * 0.5).astype(np.float32)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, outliers, replace=False)] = rng.choice([-60.0, 60.0], outliers)
    np.save(path, x)


@pytest.mark.parametrize("between,expected", [(None, "minmax"), ("Tanh", "percentile")])
def test_auto_chooses_the_candidate_whose_outputs_stay_closer(tmp_path, between, expected):
    model, calib = tmp_path / "m.onnx", tmp_path / "calib.npy"
    two_convs(model, between)
    calibration(calib)
    auto = quantize_model(model, None, calib, samples=32)
    choice = auto.report["method_choice"]
    assert choice["chosen"] == expected and auto.report["config"]["method"] == expected
    feeds = [{"x": x[None]} for x in np.load(calib)]
    for method in ("minmax", "percentile"):  # each figure is that method's own quantization, measured again
        alone = quantize_model(model, None, calib, samples=32, method=method)
        assert "method_choice" not in alone.report and alone.report["config"]["method"] == method
        measured = mean_output_sqnr_db(collect.output_sqnr(alone.float_model, alone.model, ["y"], feeds))
        assert choice["output_sqnr_db"][method] == pytest.approx(measured, abs=0.01)
        if method == expected:  # the written model is that method's: the same activation ranges
            assert auto.report["activations"] == alone.report["activations"]
    figures = choice["output_sqnr_db"]
    assert figures[expected] > figures[({"minmax", "percentile"} - {expected}).pop()] + 3.0  # a clear margin


def test_cli_quantize_and_compile_say_what_auto_chose(cli, tmp_path):
    model, calib = tmp_path / "m.onnx", tmp_path / "calib.npy"
    two_convs(model, "Tanh")
    calibration(calib)
    code, out, err = cli("quantize", model, "--calib", calib, "-o", tmp_path / "q.onnx")
    assert code == 0, err
    assert "uint8 activations (percentile, chosen by --method auto: output SQNR on the calibration data minmax" in out
    code, out, err = cli("quantize", model, "--calib", calib, "--method", "minmax", "-o", tmp_path / "q2.onnx")
    assert code == 0 and "uint8 activations (minmax)" in out, out + err
    code, out, err = cli("compile", model, "--quantize", "int8", "--calib", calib, "-o", tmp_path / "art")
    assert code == 0 and "verify: PASS" in out, out + err
    quantization = json.loads((tmp_path / "art" / "manifest.json").read_text())["quantization"]
    assert quantization["config"]["method"] == "percentile"
    assert quantization["method_choice"]["chosen"] == "percentile"
