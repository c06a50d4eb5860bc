"""The committed default model: a valid ONNX graph with BN and residual Adds, as accurate as its json says."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from edgec.errors import EdgecError  # noqa: E402
from edgec.models import (DEFAULT_INPUT_SHAPE, MNIST_MEAN, MNIST_STD, default_model_info_path,  # noqa: E402
                          default_model_path, mnist_split)


@pytest.fixture(scope="module")
def info() -> dict:
    return json.loads(default_model_info_path().read_text())


@pytest.fixture(scope="module")
def split() -> dict:
    try:
        return mnist_split()
    except EdgecError as e:  # the data comes from a PyPI package that may be absent
        pytest.skip(str(e))


def test_onnx_is_valid_and_keeps_batchnorm():
    path = default_model_path()
    assert path.is_file()
    assert path.stat().st_size < 1_000_000
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" in ops
    assert "Add" in ops
    assert "Conv" in ops
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    assert dims == DEFAULT_INPUT_SHAPE
    assert {o.domain: o.version for o in model.opset_import}.get("") == 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_json_matches_code(info):
    assert info["input_shape"] == list(DEFAULT_INPUT_SHAPE)
    assert info["mean"] == MNIST_MEAN and info["std"] == MNIST_STD
    assert info["train_samples"] == 4000 and info["test_samples"] == 1000


def test_split_is_fixed_and_stratified(split):
    (xtr, ytr), (xte, yte) = split["train"], split["test"]
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert np.bincount(yte, minlength=10).tolist() == [100] * 10
    assert np.bincount(ytr, minlength=10).tolist() == [400] * 10


def test_onnxruntime_accuracy_matches_json(info, split):
    ort = pytest.importorskip("onnxruntime")
    x, y = split["test"]
    sess = ort.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"])
    pred = np.array([sess.run(["logits"], {"input": x[i:i + 1]})[0].argmax() for i in range(len(x))])
    acc = float((pred == y).mean())
    assert abs(acc - info["test_accuracy"]) <= 0.001
    assert acc >= 0.95
