"""Shared fixtures. Models are built once per test session (torch export is slow) into a session temp folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgec.toolchain.cli import main


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def bn_cnn_onnx(models_dir) -> Path:
    """A conv-BN-ReLU residual CNN exported by torch's dynamo exporter (BatchNormalization nodes kept)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.b1 = torch.nn.BatchNorm2d(8)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.b2 = torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = torch.relu(y + self.b2(self.c2(y)))
            return self.fc(y.mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding them is really tested
        for bn in (net.b1, net.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    path = models_dir / "bn_cnn.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=True, opset_version=17, optimize=False)
    return path


def _to_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store every initializer as a Constant node, as many real models do."""
    nodes = [helper.make_node("Constant", [], [init.name], value=init) for init in model.graph.initializer]
    rest = list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes + rest)
    return model


@pytest.fixture(scope="session")
def shape_subgraph_onnx(models_dir) -> Path:
    """Constant-node weights, a Reshape to a computed shape and a Pad with computed amounts, dynamic input dims.

    TVM's importer rejects this as shipped ("Reshape requires the input new shape to be Shape", "Dynamic pads").
    """
    import torch
    import torch.nn.functional as F

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4 * 10 * 10, 5)

        def forward(self, x):
            x = F.pad(x, [0, 12 - x.shape[3], 0, 12 - x.shape[2]])
            y = self.conv(x)
            return self.fc(y.reshape(y.shape[0], -1))

    torch.manual_seed(1)
    path = models_dir / "shape_subgraph.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 12, 12),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, do_constant_folding=False, opset_version=17,
                      dynamo=False)
    model = _to_constant_nodes(onnx.load(str(path)))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def unsupported_op_onnx(models_dir) -> Path:
    """A valid ONNX model with an operator TVM's importer does not have (a custom-domain op)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu0"),
             helper.make_node("FancyActivation", ["h"], ["y"], name="fancy_node", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)], ir_version=10)
    path = models_dir / "unsupported.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def external_data_onnx(models_dir) -> Path:
    """A Gemm model whose weights live in an external .data file next to the .onnx."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    folder = models_dir / "external"
    folder.mkdir()
    path = folder / "gemm.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="gemm.data",
              size_threshold=0)
    assert (folder / "gemm.data").stat().st_size == (64 * 32 + 64) * 4
    return path


@pytest.fixture
def cli():
    """Invoke the real click entry point in-process; returns (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke
