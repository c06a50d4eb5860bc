"""Dynamic dims as real exporters write them (issue 17): -1 (paddle2onnx), '?', names. compile assumes batch 1
where only the batch is dynamic and says so; quantize and prune keep the dynamic batch where the graph allows."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import assert_user_error


@pytest.fixture(scope="module")
def dyn_models(tmp_path_factory):
    """A CNN exported with a dynamic batch, twice: flattening with Flatten (batch-agnostic once folded), and with
    x.view(x.size(0), -1) (a shape computed from the batch); calibration data for it."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self, view: bool) -> None:
            super().__init__()
            self.view = view
            self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 8 * 8, 4)

        def forward(self, x):
            y = torch.nn.functional.max_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 2)
            return self.fc(y.view(y.size(0), -1) if self.view else y.flatten(1))

    folder = tmp_path_factory.mktemp("dyn")
    torch.manual_seed(0)
    for view in (False, True):
        path = folder / f"{'view' if view else 'flat'}.onnx"
        torch.onnx.export(Net(view).eval(), (torch.randn(1, 1, 16, 16),), str(path), input_names=["input"],
                          output_names=["y"], dynamo=False, dynamic_axes={"input": {0: "batch"}, "y": {0: "batch"}})
    np.save(folder / "calib.npy", np.random.default_rng(0).standard_normal((32, 1, 16, 16)).astype(np.float32))
    return folder


def minus_one_model(path) -> None:
    """A conv whose input declares every dynamic dim as -1 or '?', as paddle2onnx writes them."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", -1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4, "?", -1])
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def batch8(path) -> tuple:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    x = np.random.default_rng(1).standard_normal((8, 1, 16, 16)).astype(np.float32)
    return spec.shape, session.run(None, {spec.name: x})[0].shape


def test_minus_one_dims_are_dynamic(cli, tmp_path):
    minus_one_model(tmp_path / "m.onnx")
    code, _, err = cli("compile", tmp_path / "m.onnx", "-o", tmp_path / "out")
    assert_user_error(code, err, "dynamic dimensions", "dims 0, 2, 3", "--input-shape x:1,3,N,N")
    code, out, err = cli("compile", tmp_path / "m.onnx", "--input-shape", "2,3,20,24", "-o", tmp_path / "out")
    assert code == 0, err
    assert "verify: PASS" in out


def test_compile_assumes_batch_1_and_says_so(cli, dyn_models, tmp_path):
    code, out, err = cli("compile", dyn_models / "flat.onnx", "-o", tmp_path / "out")
    assert code == 0, err
    assert "note: input 'input' has a dynamic batch dim (batch, 1, 16, 16): compiled for batch 1" in out
    assert "verify: PASS" in out


@pytest.mark.parametrize("command", [["quantize", "--calib", "CALIB"], ["prune", "--ratio", "0.3"]])
def test_quantize_and_prune_keep_the_dynamic_batch(cli, dyn_models, tmp_path, command, capfd):
    args = [str(dyn_models / "calib.npy") if a == "CALIB" else a for a in command]
    code, out, err = cli(args[0], dyn_models / "flat.onnx", "-o", tmp_path / "o.onnx", *args[1:])
    assert code == 0, err
    shape, out_shape = batch8(tmp_path / "o.onnx")
    assert shape[0] == "batch" and out_shape == (8, 4)
    # a shape computed from the batch was folded at batch 1: the model stays at batch 1, and says so
    code, out, err = cli(args[0], dyn_models / "view.onnx", "-o", tmp_path / "v.onnx", *args[1:])
    assert code == 0, err
    assert "note: the written model keeps batch 1" in out
    assert "onnxruntime" not in capfd.readouterr().err  # the batch-8 probe's failure is the note, not a log line
    assert [d.dim_value for d in onnx.load(tmp_path / "v.onnx").graph.input[0].type.tensor_type.shape.dim][0] == 1
