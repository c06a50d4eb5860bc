"""Validation up front (issue 16): a broken or oversized model is refused right after it is read, by every
command, in one line naming the problem — never a traceback, never gigabytes allocated, never a half-written -o.

The table covers the graphs found to crash or to pass `inspect` silently; the fuzzer runs ~200 seeded mutations
of two real models (the embedded MNIST ResNet from torch's TorchScript exporter, a BN CNN from its dynamo
exporter) through `inspect` and `compile` in one child under a 4 GiB address-space cap.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from helpers import assert_user_error
from edgec.limits import Limits
from edgec.models import default_model_path

HERE = Path(__file__).resolve().parent
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])


def _model(nodes, inputs=(X,), outputs=(Y,), inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", list(inputs), list(outputs), list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _external(location: str) -> onnx.ModelProto:
    model = _model([helper.make_node("Add", ["x", "w"], ["y"], name="a")],
                   inits=[numpy_helper.from_array(np.ones((1, 4), np.float32), "w")])
    tensor = model.graph.initializer[0]
    set_external_data(tensor, location)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    return model


def _expand_huge() -> onnx.ModelProto:
    """181 bytes that ask constant folding for a 20000×20000×4 float tensor (6 GiB)."""
    inits = [numpy_helper.from_array(np.array([20000, 20000, 4], np.int64), "shape"),
             numpy_helper.from_array(np.ones((1,), np.float32), "one")]
    nodes = [helper.make_node("Expand", ["one", "shape"], ["e"], name="ex"),
             helper.make_node("ReduceSum", ["e"], ["s"], name="r", keepdims=0),
             helper.make_node("Add", ["x", "s"], ["y"], name="a")]
    return _model(nodes, inits=inits)


REEXPORT = "re-export the model"
# name: (model, needles of the one error line). Each is refused by inspect and compile alike.
BAD = {
    "duplicate output": (lambda: _model([helper.make_node("Relu", ["x"], ["y"], name="a"),
                                         helper.make_node("Sigmoid", ["x"], ["y"], name="b")]),
                         ["'y' is produced twice", "node 'a' (Relu)", "node 'b' (Sigmoid)", REEXPORT]),
    "cycle": (lambda: _model([helper.make_node("Add", ["x", "z"], ["y"], name="a"),
                              helper.make_node("Relu", ["y"], ["z"], name="b")]),
              ["the graph has a cycle through node 'a' (Add)"]),
    "dangling input": (lambda: _model([helper.make_node("Add", ["x", "nothere"], ["y"], name="a")]),
                       ["node 'a' (Add) reads 'nothere', which no node, input or initializer provides"]),
    "unknown op": (lambda: _model([helper.make_node("Frobnicate", ["x"], ["y"], name="f")]),
                   ["node 'f' uses op 'Frobnicate'", "opset 17 defines no op"]),
    "opset 99": (lambda: _model([helper.make_node("Relu", ["x"], ["y"])], opset=99),
                 ["needs ONNX opset 99", "opset_version"]),
    "zero-sized dim": (lambda: _model([helper.make_node("Relu", ["x"], ["y"])],
                                      inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 0])],
                                      outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 0])]),
                       ["input 'x' has a dimension of size 0", "--input-shape"]),
    "initializer short of its dims": (
        lambda: _model([helper.make_node("Add", ["x", "big"], ["y"])],
                       inits=[TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[100000, 100000],
                                          raw_data=b"\0" * 16)]),
        ["initializer 'big' declares shape (100000, 100000) = 10000000000 values", "holds 16", REEXPORT]),
    "unknown element type": (
        lambda: _model([helper.make_node("Add", ["x", "w"], ["y"])],
                       inits=[TensorProto(name="w", data_type=99, dims=[1, 4], raw_data=b"\0" * 16)]),
        ["initializer 'w' has an unknown element type (99)"]),
    "constant folding too big": (_expand_huge, ["tensor 'e' (output of Expand node 'ex') of shape (20000, 20000, 4)",
                                                "6.0 GiB", "EDGEC_MAX_TENSOR_MB"]),
    "external data outside the folder": (lambda: _external("../outside.data"),
                                         ["external data of initializer 'w' points outside the model's folder"]),
    "external data missing": (lambda: _external("gone.data"),
                              ["external data file gone.data of initializer 'w' is missing", "next to the .onnx"]),
    "spec violation found by onnx's checker": (
        lambda: _model([helper.make_node("Relu", ["x", "x"], ["y"], name="r")]),
        ["the model is not valid ONNX", REEXPORT]),
    "conv channels": (
        lambda: _model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")],
                       inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                       outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
                       inits=[numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")]),
        ["Conv node 'c' gets 3 input channels", "expect 2"]),
}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("command", ["inspect", "compile"])
def test_broken_model_is_one_line(cli, tmp_path, case, command):
    make, needles = BAD[case]
    folder = tmp_path / "user"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(make(), str(path))
    (tmp_path / "outside.data").write_bytes(b"\0" * 16)  # what the escaping location would read
    before = _digest(tmp_path)
    args = ["inspect", path] if command == "inspect" else ["compile", path, "--target", "x86", "-o",
                                                           tmp_path / "out"]
    code, _, err = cli(*args)
    assert_user_error(code, err, *needles)
    assert _digest(tmp_path) == before  # nothing written, nothing changed
    assert not (tmp_path / "out").exists()


def test_unsorted_nodes_are_sorted_and_compile(cli, tmp_path):
    """Nodes out of topological order (the format forbids it, some exporters do it) are put in order, not
    refused: the compiled model equals onnxruntime on the sorted graph."""
    path = tmp_path / "unsorted.onnx"
    onnx.save(_model([helper.make_node("Sigmoid", ["t"], ["y"], name="b"),
                      helper.make_node("Relu", ["x"], ["t"], name="a")]), str(path))
    code, out, err = cli("compile", path, "--target", "x86", "-o", tmp_path / "out")
    assert code == 0, err
    assert "verify: PASS" in out


def _gemm_model(path: Path, rows: int) -> None:
    w = numpy_helper.from_array(np.zeros((rows, 1024), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_tensor_limit_is_configurable(cli, tmp_path, monkeypatch):
    """A 16 MiB weight passes the default bound, and is refused, naming it, under EDGEC_MAX_TENSOR_MB=8."""
    path = tmp_path / "m.onnx"
    _gemm_model(path, 4096)
    code, out, err = cli("inspect", path)
    assert code == 0, err
    monkeypatch.setenv("EDGEC_MAX_TENSOR_MB", "8")
    code, _, err = cli("inspect", path)
    assert_user_error(code, err, "initializer 'w' of shape (4096, 1024) would take 16.0 MiB",
                      "limit of 8.0 MiB per tensor", "EDGEC_MAX_TENSOR_MB")
    monkeypatch.setenv("EDGEC_MAX_TENSOR_MB", "lots")
    code, _, err = cli("inspect", path)
    assert_user_error(code, err, "EDGEC_MAX_TENSOR_MB='lots' is not a positive number of megabytes")


def test_huge_input_shape_is_refused_before_allocating(cli, tmp_path, shape_subgraph_onnx):
    """--input-shape 1,3,100000,100000 asked verify for 112 GiB of inputs; now load refuses it."""
    code, _, err = cli("compile", shape_subgraph_onnx, "--input-shape", "1,3,100000,100000", "-o", tmp_path / "out",
                       "--target", "x86")
    assert_user_error(code, err, "input 'x' of shape (1, 3, 100000, 100000) would take 111.8 GiB")
    assert not (tmp_path / "out").exists()


def test_limits_arithmetic():
    assert Limits(max_tensor_bytes=100).fits([5, 5], 4)
    assert not Limits(max_tensor_bytes=99).fits([5, 5], 4)
    assert Limits().fits([1 << 20], 0.5)  # 4-bit values: half a byte each
    assert not Limits().fits([1 << 40, 1 << 40], 4)  # no overflow


def _limit_memory() -> None:
    cap = 4 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_fuzzed_real_models_end_in_exit_0_or_2(tmp_path, bn_cnn_onnx):
    """~200 seeded mutations of two real models through inspect and compile, in one child capped at 4 GiB of
    address space: every run ends with exit 0 or 2 and at most one stderr line (native output included), and
    leaves no staging folder. Exit 1 would be a bug reported as 'internal error'; a crash or the cap would
    show as a signal or MemoryError."""
    results = tmp_path / "fuzz.json"
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "EDGEC_MAX_TENSOR_MB": "256"}
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_models.py"), "--model", str(default_model_path()),
                           "--model", str(bn_cnn_onnx), "--count", "200", "--seed", "16", "--compiles", "6",
                           "--out", str(results)], env=env, preexec_fn=_limit_memory, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(results.read_text())
    bad = [r for r in records if r["exit"] not in (0, 2) or len(r["stderr"]) > (1 if r["exit"] else 0)
           or r.get("hidden") or any("Traceback" in ln or "internal error" in ln for ln in r["stderr"])]
    assert not bad, json.dumps(bad[:5], indent=1)
    outcomes = collections.Counter((r["command"], r["exit"]) for r in records)
    # The fuzzer is meaningful: most mutants are refused, some survive and compile (a flipped weight bit).
    assert outcomes["inspect", 2] >= 100 and outcomes["inspect", 0] >= 10 and outcomes["compile", 0] >= 3, outcomes
    assert len({r["mutation"] for r in records}) >= 15
    assert all(not r["output_exists"] for r in records if r["command"] == "compile" and r["exit"] == 2)
