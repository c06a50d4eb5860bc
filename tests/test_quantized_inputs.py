"""Models someone else already quantized (issue 17): onnxruntime's QDQ output compiles and verifies; its
QOperator and dynamic formats end in one line saying what the model is and what to compile instead."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from edgec.models import default_model_path
from helpers import assert_user_error


@pytest.fixture(scope="module")
def ort_quantized(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    folder = tmp_path_factory.mktemp("ortq")
    src = folder / "float.onnx"
    shutil.copy(default_model_path(), src)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.items = iter([{"input": rng.standard_normal((1, 1, 28, 28)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    quantize_dynamic(str(src), str(folder / "dynamic.onnx"))
    quantize_static(str(src), str(folder / "qoperator.onnx"), Reader(), quant_format=QuantFormat.QOperator)
    quantize_static(str(src), str(folder / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    return folder


@pytest.mark.parametrize("name,op,words", [("dynamic", "ConvInteger", "dynamically quantized"),
                                           ("qoperator", "QLinearConv", "QOperator format")])
def test_other_quantized_formats_are_one_line(cli, ort_quantized, tmp_path, name, op, words):
    model = ort_quantized / f"{name}.onnx"
    assert op in {n.op_type for n in onnx.load(model).graph.node}
    code, _, err = cli("compile", model, "-o", tmp_path / "out")
    assert_user_error(code, err, op, words, "--quantize int8")
    assert not (tmp_path / "out").exists()


def test_onnxruntime_qdq_model_compiles_and_verifies(cli, ort_quantized, tmp_path):
    code, out, err = cli("compile", ort_quantized / "qdq.onnx", "-o", tmp_path / "out")
    assert code == 0, err
    assert "verify: PASS" in out
