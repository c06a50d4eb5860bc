"""TFLite in (edgec/toolchain/tflite): MediaPipe's real .tflite models, as its pinned wheel ships them, read into
ONNX and checked against the TFLite interpreter (ai-edge-litert), through the CLI as a user runs it.

The models (bench/zoo_models.py, fetched by scripts/setup.sh; a test skips, naming the reason, only when the fetch
is impossible): BlazeFace short range (CONV/DEPTHWISE with SAME padding, channel PAD, MAX_POOL, RESHAPE and
CONCATENATION of NHWC heads, float16 weights), the full-range sparse face detector (DENSIFY weights,
RESIZE_BILINEAR, DEPTH_TO_SPACE), the holistic hand re-crop (PRELU, STRIDED_SLICE), the selfie segmenter
(HARD_SWISH, AVERAGE_POOL, squeeze-excite MUL, MediaPipe's custom Convolution2DTransposeBias) and the attention
face mesh with one custom op renamed (an operator edgec does not read: the refusal; its real custom ops are
test_tflite_mediapipe_ops.py's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from zoo_models import FetchError, fetch  # noqa: E402

from edgec.errors import EdgecError  # noqa: E402
from edgec.toolchain.tflite import interpreter_outputs, tflite_to_onnx  # noqa: E402
from edgec.toolchain.tflite.reader import read_tflite  # noqa: E402
from edgec.toolchain.tflite.reference import interpreter  # noqa: E402

CONVERTED = ("tfl_face_short", "tfl_face_sparse", "tfl_hand_recrop", "tfl_selfie")


def fetched(name: str) -> Path:
    try:
        return fetch(name)
    except FetchError as exc:
        pytest.skip(f"zoo model {name} cannot be fetched here ({exc}); run scripts/setup.sh with network access")


def seeded(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {d["name"]: rng.standard_normal(d["shape"]).astype(d["dtype"])
            for d in interpreter(path).get_input_details()}


@pytest.mark.parametrize("name", CONVERTED)
def test_converted_onnx_equals_the_interpreter_and_keeps_its_interface(name):
    path = fetched(name)
    model = tflite_to_onnx(path)
    onnx.checker.check_model(model, full_check=True)
    it = interpreter(path)
    # the interface as the interpreter has it: names, NHWC shapes, dtypes, in order
    for value, detail in zip(model.graph.input, it.get_input_details(), strict=True):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        assert (value.name, dims) == (detail["name"], list(detail["shape"]))
        assert onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) == detail["dtype"]
    for value, detail in zip(model.graph.output, it.get_output_details(), strict=True):
        assert [d.dim_value for d in value.type.tensor_type.shape.dim] == list(detail["shape"])
    # the layout handled once: a few Transposes (entry, heads read as NHWC), not one around every op
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Transpose") <= 2 + len(model.graph.output) * 2, ops.count("Transpose")
    assert ops.count("Conv") + ops.count("ConvTranspose") >= 10

    feed = seeded(path)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    for value, ref in zip(got, interpreter_outputs(path, feed), strict=True):
        assert value.shape == ref.shape
        # verify's rule: 1e-4 × max(1, max |reference|)
        np.testing.assert_allclose(value, ref, rtol=0, atol=1e-4 * max(1.0, float(np.max(np.abs(ref)))))


def test_stored_weights_resolved_exactly_as_the_interpreter_does():
    """float16 DEQUANTIZE and sparse DENSIFY constants equal what the interpreter computes for those tensors."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = fetched("tfl_face_sparse")
    graph = read_tflite(path)
    assert "DENSIFY" not in graph.histogram() and "DEQUANTIZE" not in graph.histogram()
    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    raw = tflite_model_ops(path)
    resolved = [t for t in graph.tensors if t.data is not None
                and t.index in raw["outputs_of_storage_ops"]]
    assert len(resolved) == raw["storage_ops"] > 100
    for t in resolved:
        np.testing.assert_array_equal(t.data, it.get_tensor(t.index))


def tflite_model_ops(path: Path) -> dict:
    """The storage ops (DEQUANTIZE, DENSIFY) of the raw flatbuffer, read with the tflite package directly."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    g = model.Subgraphs(0)
    outs = set()
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) in (BuiltinOperator.DEQUANTIZE,
                                                                      BuiltinOperator.DENSIFY):
            outs.add(int(op.Outputs(0)))
    return {"outputs_of_storage_ops": outs, "storage_ops": len(outs)}


def test_an_operator_edgec_lacks_is_one_line_with_the_histogram(cli, tmp_path):
    path = tmp_path / "renamed.tflite"  # the attention face mesh, its TransformLandmarks op renamed to one nobody has
    data = fetched("tfl_face_attn").read_bytes()
    assert data.count(b"TransformLandmarks") == 1
    path.write_bytes(data.replace(b"TransformLandmarks", b"TransformLandmarkZ"))
    with pytest.raises(EdgecError) as info:
        tflite_to_onnx(path)
    message = str(info.value)
    assert "CUSTOM:TransformLandmarkZ" in message and "CONV_2D ×80" in message
    assert "CUSTOM:TransformTensorBilinear ×3" in message  # the histogram lists every operator, read or not
    code, stdout, stderr = cli("compile", path, "--target", "x86", "-o", tmp_path / "out")
    assert code == 2
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("edgec: ") and "CUSTOM:TransformLandmarkZ" in lines[0], stderr
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


def test_not_a_tflite_file_is_refused(cli, tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    code, _, stderr = cli("inspect", bad)
    assert code == 2 and "not a TFLite model" in stderr


def test_cli_inspect_compile_verify_against_the_interpreter(cli, tmp_path):
    path = fetched("tfl_face_short")
    code, stdout, stderr = cli("inspect", path)
    assert code == 0, stderr
    assert "ops: Conv x37," in stdout  # 21 CONV_2D + 16 DEPTHWISE_CONV_2D
    assert "Transpose x5" in stdout  # the entry, and the 4 heads read NHWC by their RESHAPE
    out = tmp_path / "art"
    code, stdout, stderr = cli("compile", path, "--target", "x86", "-o", out)
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 128, 128, 3]}]
    assert [o["shape"] for o in manifest["outputs"]] == [[1, 896, 16], [1, 896, 1]]
    assert manifest["verification"]["runtime"] == "TFLite interpreter" and manifest["verification"]["passed"]
    code, stdout, stderr = cli("verify", out)
    assert code == 0, stderr + stdout
    assert "PASS: max |edgec - TFLite interpreter|" in stdout and "on the source model" in stdout

    # the artifact's outputs, run on a seeded input, equal the interpreter's
    feed = seeded(path, seed=3)
    x = tmp_path / "x.npy"
    np.save(x, feed["input"])
    code, _, stderr = cli("run", out, "--input", x, "--save", tmp_path / "y.npz")
    assert code == 0, stderr
    reference = interpreter_outputs(path, feed)
    with np.load(tmp_path / "y.npz") as got:
        for spec, ref in zip(manifest["outputs"], reference, strict=True):
            np.testing.assert_allclose(got[spec["name"]], ref, rtol=0,
                                       atol=1e-4 * max(1.0, float(np.max(np.abs(ref)))))


def test_a_quantized_model_edgec_cannot_read_is_refused_not_misread(cli, tmp_path):
    """int16 activations with quantization parameters (16x8 quantization; edgec reads int8/uint8 ones as QDQ,
    tests/test_tflite_quantized.py): refused in one line, never run as if the integers were floats. The model is
    BlazeFace with its input made int16."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    source = fetched("tfl_face_short")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(source.read_bytes(), 0))
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.inputs[0]]
    tensor.type = schema.TensorType.INT16
    tensor.quantization = schema.QuantizationParametersT()
    tensor.quantization.scale, tensor.quantization.zeroPoint = [1 / 128], [0]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    crafted = tmp_path / "int16_input.tflite"
    crafted.write_bytes(builder.Output())
    code, _, stderr = cli("inspect", crafted)
    assert code == 2, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "quantized TFLite model with int16 activations, which edgec does not read" in lines[0], stderr
    assert "'input'" in lines[0] and "Traceback" not in stderr
