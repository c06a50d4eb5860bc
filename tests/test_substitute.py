"""``edgec substitute --to binary|adder`` on the embedded MNIST model: the written model runs in onnxruntime,
compiles for x86 and verifies against it; bad input is one line, exit 2 (issue 19)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import assert_user_error
from onnx import TensorProto, helper

from edgec.models import default_model_path
from edgec.ops import reference as ref
from edgec.ops.packing import unpack_signs


@pytest.fixture(scope="session")
def substituted(tmp_path_factory):
    """Both substitutions of the embedded model, made once through the CLI."""
    from click.testing import CliRunner

    from edgec.toolchain.cli import main

    folder = tmp_path_factory.mktemp("substitute")
    out = {}
    for to in ("binary", "adder"):
        path = folder / f"{to}.onnx"
        result = CliRunner().invoke(main, ["substitute", "--to", to, "--skip", "first,last", "-o", str(path)],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        out[to] = (path, result.stdout)
    return out


def test_binary_substitution_rows_and_sizes(substituted):
    path, stdout = substituted["binary"]
    model = onnx.load(str(path))
    calls = [n for n in model.graph.node if n.domain == "edgec"]
    assert [n.op_type for n in calls] == ["BinaryConv"] * 5
    assert {f.name for f in model.functions} == {"BinaryConv"}
    assert [n.op_type for n in model.graph.node if n.op_type in ("Conv", "Gemm")] == ["Conv", "Gemm"]  # first, last
    assert "kept float: /stem/stem.0/stem.0.0/Conv, /fc/Gemm" in stdout
    assert "/block2/conv1/conv1.0/Conv: BinaryConv, 9,216 weights  36,864 B fp32 -> 1,152 B bits (32.0x)" in stdout
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    source = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(default_model_path())).graph.initializer}
    for node in calls:
        bits = inits[node.input[1]]
        assert bits.dtype == np.uint8
        original = next(v for v in source.values() if v.ndim == 4 and v.shape[0] == bits.shape[0]
                        and np.array_equal(unpack_signs(bits, v.shape[1]), np.where(v < 0, -1.0, 1.0)))
        assert original.nbytes >= 25 * bits.nbytes  # 1 bit per weight
        np.testing.assert_allclose(inits[node.input[2]], np.abs(original).mean(axis=(1, 2, 3)), rtol=1e-6)


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_substituted_models_run_in_onnxruntime(substituted):
    """The binary model's first binary layer in onnxruntime equals the numpy reference on the captured input."""
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    for to in ("binary", "adder"):
        y = _run(substituted[to][0], x)
        assert y.shape == (1, 10) and np.isfinite(y).all()
    model = onnx.load(str(substituted["binary"][0]))
    node = next(n for n in model.graph.node if n.domain == "edgec")
    model.graph.output.append(helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None))
    model.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _, act, got = session.run(None, {"input": x})
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    w = unpack_signs(inits[node.input[1]], act.shape[1])
    want = ref.binary_conv(act, w, inits[node.input[2]], inits[node.input[3]], inits[node.input[4]], 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("to", ["binary", "adder"])
def test_substituted_model_compiles_for_x86_and_verifies(substituted, to, tmp_path):
    import edgec

    result = edgec.compile(substituted[to][0], target="x86", output=tmp_path / "out", verify=True)
    assert result.verification.passed
    optimized = onnx.load(str(tmp_path / "out" / "optimized.onnx"))
    assert any(n.domain == "edgec" for n in optimized.graph.node)  # the artifact keeps the function form
    # the report's per-layer record (layers.json) lists each edgec layer with the bytes it stores and its MACs
    import json

    record = json.loads((tmp_path / "out" / "layers.json").read_text())
    assert "error" not in record, record.get("error")
    rows = {r[0]: r for r in record["stages"][-1]["layers"]}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in optimized.graph.initializer}
    calls = [n for n in optimized.graph.node if n.domain == "edgec"]
    assert len(calls) == (5 if to == "binary" else 4)
    for node in calls:
        name, op, nbytes, macs = rows[node.name]
        assert op == f"edgec.{node.op_type}"
        assert nbytes == sum(inits[i].nbytes for i in node.input[1:] if i in inits)
        w = inits[node.input[1]]
        cin = w.shape[1] * 8 if to == "binary" else w.shape[1]  # bits packed 8 per byte (channels 16 and 32)
        assert macs == w.shape[0] * cin * w.shape[2] * w.shape[3] * (28 * 28 if w.shape[0] == 16 else 14 * 14)


def test_bad_input_one_line(cli, tmp_path):
    code, _, err = cli("substitute", "--to", "ternary", "-o", tmp_path / "t.onnx")
    assert_user_error(code, err, "--to ternary", "binary, adder")
    code, _, err = cli("substitute", "--to", "binary", "--skip", "first,nope", "-o", tmp_path / "t.onnx")
    assert_user_error(code, err, "'nope'", "/fc/Gemm")
    code, _, err = cli("substitute", "--to", "adder", "--skip", "first,last,/block1/conv1/conv1.0/Conv,"
                       "/block1/conv2/conv2.0/Conv,/down/down.0/down.0.0/Conv,/block2/conv1/conv1.0/Conv",
                       "-o", tmp_path / "t.onnx")
    assert_user_error(code, err, "leaves no layer")
    relu = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(relu, str(tmp_path / "relu.onnx"))
    code, _, err = cli("substitute", tmp_path / "relu.onnx", "--to", "binary", "-o", tmp_path / "t.onnx")
    assert_user_error(code, err, "no layer that converts to binary")
    assert not (tmp_path / "t.onnx").exists()
