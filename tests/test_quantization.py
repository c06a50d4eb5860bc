"""Quantization: arithmetic, observers, calibration sources, the QDQ pass in onnxruntime, the embedded model's
accuracy on its real test split, and the CLI's contract on bad input (one line, exit 2, no output file)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.calibration.observers import OBSERVERS, HistogramObserver, get_observer
from edgec.calibration.sources import ArraySource, SyntheticSource, batches, input_specs, open_source
from edgec.models import MNIST_MEAN, MNIST_STD, default_model_path, mnist_split
from edgec.quantization import collect
from edgec.quantization.api import quantize_model
from edgec.quantization.qmath import activation_qparams, dequantize, quantize, quantize_weight
from edgec.toolchain.load import load_model

from helpers import assert_user_error as _assert_user_error
from edgec.pruning.calib import spread  # the MNIST file is sorted by digit: spread samples


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> dict[str, Path]:
    """64 real training digits for calibration and the real 1,000-image test split, as the CLI takes them."""
    split = mnist_split()
    folder = tmp_path_factory.mktemp("mnist")
    np.save(folder / "calib.npy", spread(split["train"][0], 64))
    np.savez(folder / "test.npz", x=split["test"][0], y=split["test"][1])
    return {"calib": folder / "calib.npy", "test": folder / "test.npz", "folder": folder}


def _ort(model: onnx.ModelProto, feed: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    return collect.session(model, optimize=optimize).run(None, feed)


# ---------------------------------------------------------------------------------------------- arithmetic

def test_activation_round_trip_error_is_at_most_half_a_step_and_zero_is_exact():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.7, 3.1, size=10_000).astype(np.float32)
    for dtype in ("uint8", "int8"):
        qp = activation_qparams(float(x.min()), float(x.max()), dtype)
        back = dequantize(quantize(x, qp.scale, qp.zero_point, dtype), qp.scale, qp.zero_point)
        assert np.max(np.abs(back - x)) <= qp.scale / 2 * (1 + 1e-4)
        zero = dequantize(quantize(np.zeros(1, np.float32), qp.scale, qp.zero_point, dtype), qp.scale, qp.zero_point)
        assert zero[0] == 0.0
    # a range that excludes 0 is widened to include it (ReLU/padding need an exact zero)
    qp = activation_qparams(2.0, 5.0, "uint8")
    assert qp.zero_point == 0 and abs(qp.scale - 5.0 / 255) < 1e-7
    # codes on the grid survive a round trip exactly
    q = np.arange(256, dtype=np.uint8)
    assert np.array_equal(quantize(dequantize(q, 0.05, 17), 0.05, 17, "uint8"), q)


@pytest.mark.parametrize("dtype,granularity", [("int8", "tensor"), ("int8", "channel"), ("int4", "channel"),
                                               ("int4", "group:4"), ("int8", "group:8")])
def test_weight_round_trip(dtype, granularity):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((6, 10, 3, 3)) * rng.uniform(0.1, 2.0, size=(6, 1, 1, 1))).astype(np.float32)
    wq = quantize_weight(w, dtype, granularity, out_axis=0, in_axis=1, search=False)
    qmax = 7 if dtype == "int4" else 127
    assert wq.q.min() >= -qmax and wq.q.max() <= qmax
    scale_full = np.asarray(wq.dequantized() / np.where(wq.q == 0, 1, wq.q))  # per-element scale where q != 0
    assert np.max(np.abs(wq.dequantized() - w)) <= np.max(scale_full) / 2 * (1 + 1e-5)
    if granularity == "channel":
        assert wq.scale.shape == (6,)
        per_channel_err = np.abs(wq.dequantized() - w).reshape(6, -1).max(axis=1)
        assert np.all(per_channel_err <= wq.scale / 2 * (1 + 1e-5))
    if granularity.startswith("group:"):
        block = int(granularity.split(":")[1])
        assert wq.axis == 1 and wq.block == block and wq.scale.shape == (6, -(-10 // block), 3, 3)
    # the stored size: int4 packs two values per byte
    assert wq.nbytes() == -(-w.size * wq.bits // 8) + 4 * np.asarray(wq.scale).size


def test_int4_search_clips_outliers_and_lowers_error():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    w[:, 0] = 8.0  # one outlier per channel
    plain = quantize_weight(w, "int4", "channel", 0, 1, search=False)
    searched = quantize_weight(w, "int4", "channel", 0, 1, search=True)
    err = lambda wq: float(np.sum((wq.dequantized() - w) ** 2))  # noqa: E731
    assert err(searched) < 0.8 * err(plain)


# ---------------------------------------------------------------------------------------------- observers

def test_histogram_observer_rescales_exactly_and_keeps_every_count():
    rng = np.random.default_rng(3)
    chunks = [rng.standard_normal(4000) * (1 + i) + i for i in range(20)]  # the range keeps growing
    obs = get_observer("mse")
    for c in chunks:
        obs.update(c)
    data = np.concatenate(chunks)
    assert obs.counts.sum() == data.size and obs.min == data.min() and obs.max == data.max()
    edges = obs.lo + np.arange(obs.bins + 1) * obs.width
    reference, _ = np.histogram(data, bins=edges)
    assert np.abs(reference - obs.counts).sum() <= 4  # only values on a bin edge may land one bin off


def test_percentile_and_entropy_clip_an_outlier_that_minmax_keeps():
    rng = np.random.default_rng(4)
    obs = {name: get_observer(name) for name in ("minmax", "percentile", "entropy")}
    for _ in range(20):
        x = np.maximum(rng.standard_normal(5000), 0.0)  # ReLU-like: many exact zeros
        for o in obs.values():
            o.update(x)
    for o in obs.values():
        o.update(np.array([60.0]))
    assert obs["minmax"].compute_range() == (0.0, 60.0)
    for name in ("percentile", "entropy"):
        lo, hi = obs[name].compute_range()
        assert lo == 0.0 and 2.0 < hi < 20.0, (name, lo, hi)
    pct = obs["percentile"].compute_range()[1]
    exact = np.percentile(np.maximum(np.random.default_rng(4).standard_normal(100_000), 0.0), 99.99)
    assert abs(pct - exact) < 0.2


def test_mse_range_has_the_lowest_real_quantization_error():
    """On heavy-tailed data, the histogram estimate picks a range as good as a brute-force search on the data."""
    data = np.random.default_rng(8).standard_t(3, size=100_000)
    obs = {name: get_observer(name) for name in ("minmax", "mse")}
    for chunk in np.array_split(data, 50):
        for o in obs.values():
            o.update(chunk)

    def real_mse(lo: float, hi: float) -> float:
        qp = activation_qparams(lo, hi, "uint8")
        return float(np.mean((dequantize(quantize(data, qp.scale, qp.zero_point, "uint8"), qp.scale,
                                          qp.zero_point) - data) ** 2))

    lo, hi = obs["mse"].compute_range()
    best = min(real_mse(data.min() * f, data.max() * f) for f in np.linspace(0.02, 1.0, 99))
    assert real_mse(lo, hi) <= 1.1 * best
    assert real_mse(lo, hi) < 0.9 * real_mse(*obs["minmax"].compute_range())


def test_observer_state_does_not_grow_with_samples():
    """The state is bounded by the observer's settings: 1,000 batches whose range keeps growing (11×) stay within
    the same bound as 64, and the bound is the histogram's (GROWTH × bins) plus the tracked spikes."""
    rng = np.random.default_rng(5)
    sizes, bounds = {}, {}
    for n in (64, 1000):
        obs = {name: get_observer(name) for name in OBSERVERS}
        for i in range(n):
            x = rng.standard_normal(784) * (1 + i / 100)
            for o in obs.values():
                o.update(x)
        sizes[n] = {name: o.state_nbytes() for name, o in obs.items()}
        bounds[n] = {name: o.max_state_nbytes() for name, o in obs.items()}
    assert bounds[64] == bounds[1000]
    assert all(sizes[n][name] <= bounds[n][name] for n in sizes for name in sizes[n])
    cap = 2048 * HistogramObserver.GROWTH * 8 + 16 * HistogramObserver.MAX_SPIKES
    assert max(bounds[1000].values()) <= cap


def test_calibrating_1000_samples_takes_about_the_memory_of_64():
    """The whole collection path (source → onnxruntime with every activation exposed → observers) streams."""
    model = load_model(default_model_path())
    proto = ir.serde.serialize_model(model)
    names = [n.outputs[0].name for n in model.graph if n.op_type in ("Conv", "Relu", "Add")]
    peaks = {}
    for n in (64, 1000):
        source = SyntheticSource(model, input_specs(model), n)
        observers = {name: get_observer("entropy") for name in names}
        tracemalloc.start()
        collect.observe(proto, observers, batches(source))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert observers[names[0]].count == n * 16 * 28 * 28
    assert peaks[1000] < 1.25 * peaks[64] + 256 * 1024, peaks


# ---------------------------------------------------------------------------------------------- sources

def test_image_folder_gives_the_same_inputs_as_the_normalized_arrays(tmp_path):
    """Real digits written as 8-bit PGM images, read back through resize/normalize, equal the model's inputs."""
    x = spread(mnist_split()["train"][0], 6)
    pixels = np.clip(np.rint((x * MNIST_STD + MNIST_MEAN) * 255), 0, 255).astype(np.uint8)
    for i, img in enumerate(pixels):
        (tmp_path / f"digit{i}.pgm").write_bytes(b"P5\n# a digit\n28 28\n255\n" + img[0].tobytes())
    model = load_model(default_model_path())
    source = open_source(tmp_path, model, 64, mean=[MNIST_MEAN], std=[MNIST_STD])
    got = np.stack([s["input"] for s in source])
    assert got.shape == (6, 1, 28, 28) and source.notes  # fewer images than asked for: said so
    for sample in got:  # seeded random order: match each to its source digit
        assert np.min(np.abs(x - sample).reshape(6, -1).max(axis=1)) < 1e-5
    # a 56×56 colour image is converted to gray and resized (antialiased) to 28×28
    big = np.repeat(np.repeat(pixels[0, 0], 2, axis=0), 2, axis=1)
    rgb = np.repeat(big[:, :, None], 3, axis=2)
    only = tmp_path / "rgb"
    only.mkdir()
    (only / "a.ppm").write_bytes(b"P6 56 56 255\n" + rgb.tobytes())
    sample = next(iter(open_source(only, model, 1, mean=[MNIST_MEAN], std=[MNIST_STD])))["input"]
    assert np.abs(sample - x[0]).mean() < 0.15  # a 2× down/up sample of a digit: close, not exact


def test_synthetic_inputs_match_the_first_batchnorm_statistics():
    model = load_model(default_model_path())
    source = SyntheticSource(model, input_specs(model), 32)
    bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
    conv_out = bn.inputs[0].name
    proto = ir.serde.serialize_model(model)
    values = []
    collect.run_exposed(proto, [conv_out], batches(source), lambda i, v: values.append(v[0][:, :, 1:-1, 1:-1]))
    y = np.concatenate(values)  # interior pixels: the padding border is not what BN saw
    mean, var = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))
    bn_mean, bn_var = bn.inputs[3].const_value.numpy(), bn.inputs[4].const_value.numpy()
    assert np.all(np.abs(mean - bn_mean) < 0.05 * np.sqrt(bn_var))  # means: a small fraction of a std off
    assert np.all((var > 0.6 * bn_var) & (var < 1.6 * bn_var))       # variances: each channel's own, roughly
    assert np.corrcoef(var, bn_var)[0, 1] > 0.8
    assert source.sigma > 0  # one input channel: only spatially correlated noise can fit 16 variances
    assert list(source)[0]["input"].shape == (1, 28, 28) and len(list(source)) == 32
    assert np.array_equal(next(iter(source))["input"], next(iter(source))["input"])  # re-iterable, same samples


# ---------------------------------------------------------------------------------------------- the QDQ pass

def _gemm_model(opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(6)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w, b, numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_qdq_model_runs_in_onnxruntime_and_equals_a_numpy_reference(tmp_path):
    """Opset 11 model, per-channel int8: upgraded to 13, QDQ semantics reproduced exactly with numpy."""
    path = tmp_path / "gemm.onnx"
    onnx.save(_gemm_model(11), str(path))
    x = np.random.default_rng(7).standard_normal((32, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    result = quantize_model(path, None, tmp_path / "calib.npy", 32)
    q = result.model
    assert q.opset_import[0].version == 13 and any("opset 11 → 13" in n for n in result.notes)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == 2 and "Gemm" in ops and "MatMul" in ops
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    layers = {layer["op"]: layer for layer in result.report["layers"]}
    acts = result.report["activations"]
    xq_p, rq_p = acts["x"], acts["r"]
    w_q, w_s = inits["w_quantized"], inits["w_scale"]
    b_q, b_s = inits["b_quantized"], inits["b_scale"]
    assert w_q.dtype == np.int8 and w_s.shape == (16,) and b_q.dtype == np.int32
    np.testing.assert_allclose(b_s, np.float32(xq_p["scale"]) * w_s, rtol=1e-7)  # int32 bias: sx·sw
    assert layers["Gemm"]["bias"] == "int32" and layers["MatMul"]["input"]["zero_point"] == 0  # ReLU output: zp 0
    w2_q, w2_s = inits["w2_quantized"], inits["w2_scale"]
    for sample in x[:8, None]:
        xd = dequantize(quantize(sample, xq_p["scale"], xq_p["zero_point"], "uint8"), xq_p["scale"],
                        xq_p["zero_point"])
        h = xd @ dequantize(w_q, w_s, 0, axis=0).T + dequantize(b_q, b_s, 0, axis=0)
        r = np.maximum(h, 0)
        rd = dequantize(quantize(r, rq_p["scale"], rq_p["zero_point"], "uint8"), rq_p["scale"], rq_p["zero_point"])
        ref = rd @ dequantize(w2_q, w2_s, 0, axis=1)
        got = _ort(q, {"x": sample}, optimize=False)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        fused = _ort(q, {"x": sample})[0]  # onnxruntime's integer kernels (QDQ fusion): within a step of it
        assert np.max(np.abs(fused - got)) <= 2 * rq_p["scale"] * np.abs(dequantize(w2_q, w2_s, 0, axis=1)).sum(0).max()


def test_embedded_model_int8_per_channel_keeps_accuracy_on_the_real_test_split(mnist):
    result = quantize_model(default_model_path(), None, mnist["calib"], 64, weights="int8", granularity="channel",
                            eval_path=mnist["test"])
    ev = result.report["eval"]
    assert ev["samples"] == 1000 and abs(ev["float_accuracy"] - 0.987) < 1e-9
    assert ev["drop_pt"] <= 0.3, ev
    sizes = result.report["sizes"]
    assert sizes["float_weight_bytes"] / sizes["quant_weight_bytes"] >= 3.9
    for layer in result.report["layers"]:
        assert layer["bits"] == 8 and layer["weight_sqnr_db"] > 35 and layer["output_sqnr_db"] > 25
    assert result.model.opset_import[0].version == 17  # already ≥ 13: left alone


def test_int4_weights_are_stored_packed_and_group_wise_uses_block_size(mnist):
    result = quantize_model(default_model_path(), None, mnist["calib"], 16, weights="int4", granularity="group:8")
    q = result.model
    assert q.opset_import[0].version == 21
    int4 = [t for t in q.graph.initializer if t.data_type == TensorProto.INT4]
    assert len(int4) == 7
    for t in int4:
        assert len(t.raw_data) == -(-int(np.prod(t.dims)) // 2)  # two values per byte
    blocked = [n for n in q.graph.node if n.op_type == "DequantizeLinear"
               and any(a.name == "block_size" and a.i == 8 for a in n.attribute)]
    assert len(blocked) == 7
    per_channel = quantize_model(default_model_path(), None, None, 1, weights="int4", activations="fp32")
    sizes = per_channel.report["sizes"]
    assert sizes["float_weight_bytes"] / sizes["quant_weight_bytes"] >= 7.0
    assert not any(n.op_type == "QuantizeLinear" for n in per_channel.model.graph.node)  # weight-only


def test_bias_correction_removes_the_mean_shift_of_layer_outputs(mnist):
    feeds = lambda: batches(ArraySource(mnist["calib"], input_specs(load_model(default_model_path())), 64))  # noqa
    shifts = {}
    for bc in (False, True):
        r = quantize_model(default_model_path(), None, mnist["calib"], 64, weights="int4", bias_correction=bc)
        names = [layer["layer"] for layer in r.report["layers"]]
        outs = [n.output[0] for n in r.float_model.graph.node if n.op_type in ("Conv", "Gemm")]
        f = collect.channel_means(r.float_model, outs, feeds())
        q = collect.channel_means(r.model, outs, feeds())
        shifts[bc] = np.mean([np.abs(f[o] - q[o]).mean() for o in outs])
        assert len(names) == 7
    assert shifts[True] < 0.5 * shifts[False], shifts


def test_data_free_int8_mostly_agrees_with_the_float_model(mnist):
    result = quantize_model(default_model_path(), None, "none", 64, eval_path=mnist["test"])
    assert "synthetic" in result.report["calibration"]
    assert result.report["eval"]["agreement"] >= 0.9, result.report["eval"]


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_quantize_writes_a_model_and_prints_the_report(cli, mnist, tmp_path):
    out = tmp_path / "q.onnx"
    np.savez(tmp_path / "unlabelled.npz", x=spread(mnist_split()["test"][0], 100))
    code, stdout, err = cli("quantize", "-o", out, "--calib", mnist["calib"], "--samples", 32, "--method", "entropy",
                            "--bias-correction", "--eval", tmp_path / "unlabelled.npz")
    assert code == 0, err
    assert "int8 weights (channel), uint8 activations (entropy), bias correction" in stdout
    assert stdout.count(" Conv ") == 6 and "Gemm" in stdout and "dB" in stdout
    assert "x smaller" in stdout and "top-1 agreement with the float model (100 samples, no labels)" in stdout
    assert out.is_file() and not list(tmp_path.glob(".*tmp"))
    x = spread(mnist_split()["test"][0], 1)
    assert _ort(onnx.load(str(out)), {"input": x})[0].shape == (1, 10)


def test_cli_bad_calibration_folders(cli, tmp_path):
    out = tmp_path / "q.onnx"
    (tmp_path / "empty").mkdir()
    code, _, err = cli("quantize", "-o", out, "--calib", tmp_path / "empty")
    _assert_user_error(code, err, "has no images")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.pgm").write_bytes(b"P5\n28 28\n255\n" + b"\x00" * 10)
    code, _, err = cli("quantize", "-o", out, "--calib", tmp_path / "broken")
    _assert_user_error(code, err, "cannot read image", "a.pgm")
    code, _, err = cli("quantize", "-o", out, "--calib", tmp_path / "missing")
    _assert_user_error(code, err, "does not exist")
    assert not out.exists()


def test_cli_wrong_shape_and_wrong_dtype_calibration_data(cli, tmp_path):
    out = tmp_path / "q.onnx"
    np.save(tmp_path / "flat.npy", np.zeros((8, 28, 28), np.float32))  # no channel dim
    code, _, err = cli("quantize", "-o", out, "--calib", tmp_path / "flat.npy")
    _assert_user_error(code, err, "shape (28, 28)", "(1, 28, 28)")
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "folder" / "a.npy", np.zeros((3, 28, 28), np.float32))
    code, _, err = cli("quantize", "-o", out, "--calib", tmp_path / "folder")
    _assert_user_error(code, err, "shape (3, 28, 28)")
    np.save(tmp_path / "raw.npy", np.zeros((8, 1, 28, 28), np.uint8))
    code, _, err = cli("quantize", "-o", out, "--calib", tmp_path / "raw.npy")
    _assert_user_error(code, err, "uint8", "float32")
    assert not out.exists()


def test_cli_nan_inputs_and_infinite_activations(cli, tmp_path):
    out = tmp_path / "q.onnx"
    x = np.zeros((4, 1, 28, 28), np.float32)
    x[2, 0, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    code, _, err = cli("quantize", "-o", out, "--calib", tmp_path / "nan.npy")
    _assert_user_error(code, err, "NaN or infinite")
    np.save(tmp_path / "huge.npy", np.full((4, 1, 28, 28), 3e38, np.float32))  # finite inputs, conv overflows
    code, _, err = cli("quantize", "-o", out, "--calib", tmp_path / "huge.npy")
    _assert_user_error(code, err, "activation", "NaN or infinite values on calibration batch 0")
    assert not out.exists()


def test_cli_refuses_an_already_quantized_model_and_bad_options(cli, mnist, tmp_path):
    first = tmp_path / "w8.onnx"
    assert cli("quantize", "-o", first, "--activations", "fp32")[0] == 0  # weight-only: DQ nodes only
    for model in (first,):
        code, _, err = cli("quantize", model, "-o", tmp_path / "again.onnx", "--calib", mnist["calib"])
        _assert_user_error(code, err, "already quantized", "DequantizeLinear")
    code, _, err = cli("quantize", "-o", tmp_path / "g.onnx", "--calib", mnist["calib"], "--granularity", "group:x")
    _assert_user_error(code, err, "granularity")
    code, _, err = cli("quantize", "-o", tmp_path / "n.onnx")
    _assert_user_error(code, err, "need calibration data")
    code, _, err = cli("quantize", "-o", tmp_path / "nope" / "q.onnx", "--calib", mnist["calib"])
    _assert_user_error(code, err, "does not exist")
    assert not list(tmp_path.glob("again*")) and not (tmp_path / "g.onnx").exists()


# ---------------------------------------------------------------------------------------------- AdaRound

@pytest.fixture(scope="module")
def w4_nearest_and_adaround(mnist):
    """The embedded model W4A8 per-channel, 64 real calibration digits: round-to-nearest and AdaRound."""
    return {ada: quantize_model(default_model_path(), None, mnist["calib"], 64, weights="int4", adaround=ada,
                                eval_path=mnist["test"]) for ada in (False, True)}


def _int_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.int64) for t in model.graph.initializer
            if t.data_type in (TensorProto.INT4, TensorProto.INT8)}


def test_adaround_lowers_layer_output_error_on_held_out_digits(w4_nearest_and_adaround):
    """The real claim: on 256 *test* digits (not the calibration ones), every layer's output is closer to the float
    model's with AdaRound's rounding than with nearest rounding (end to end: each layer sees the earlier ones)."""
    test_x = spread(mnist_split()["test"][0], 256)
    feeds = lambda: ({"input": test_x[i:i + 1]} for i in range(len(test_x)))  # noqa: E731
    noise = {}
    for ada, r in w4_nearest_and_adaround.items():
        outs = [n.output[0] for n in r.float_model.graph.node if n.op_type in ("Conv", "Gemm")]
        energy = collect.output_sqnr(r.float_model, r.model, outs, feeds())
        noise[ada] = np.array([energy[o][1] / energy[o][0] for o in outs])  # relative MSE per layer
    assert len(noise[True]) == 7
    assert np.all(noise[True] < noise[False]), noise
    assert np.mean(noise[True] / noise[False]) < 0.7, noise  # a real reduction, not noise
    for layer in w4_nearest_and_adaround[True].report["layers"]:  # and the report says so on the fitted rows
        a = layer["adaround"]
        assert a["mse_adaround"] < a["mse_nearest"] and 0 < a["changed"] < 0.5 and a["rows"] >= 64


def test_adaround_changes_each_weight_by_at_most_one_step_and_runs_in_onnxruntime(w4_nearest_and_adaround):
    near, ada = w4_nearest_and_adaround[False], w4_nearest_and_adaround[True]
    q_near, q_ada = _int_weights(near.model), _int_weights(ada.model)
    assert q_near.keys() == q_ada.keys() and len(q_ada) == 7
    changed = 0
    for name, q in q_ada.items():
        assert q.shape == q_near[name].shape
        assert np.max(np.abs(q - q_near[name])) <= 1, name
        assert q.min() >= -7 and q.max() <= 7
        changed += int(np.sum(q != q_near[name]))
    assert changed > 0
    scales = lambda m: {t.name: numpy_helper.to_array(t) for t in m.graph.initializer  # noqa: E731
                        if t.name.endswith("_scale")}
    s_near, s_ada = scales(near.model), scales(ada.model)
    assert s_near.keys() == s_ada.keys() and all(np.array_equal(s_near[k], s_ada[k]) for k in s_near)  # same scales
    x = spread(mnist_split()["test"][0], 1)
    assert _ort(ada.model, {"input": x})[0].shape == (1, 10)
    assert ada.report["config"]["adaround"] is True
    ev = ada.report["eval"]
    assert ev["drop_pt"] <= 1.0 and ev["quant_accuracy"] >= near.report["eval"]["quant_accuracy"] - 0.002, ev


def test_cli_adaround_prints_the_per_layer_reduction(cli, mnist, tmp_path):
    out = tmp_path / "w4.onnx"
    code, stdout, err = cli("quantize", "-o", out, "--calib", mnist["calib"], "--samples", 16, "--weights", "int4",
                            "--adaround")
    assert code == 0, err
    assert "int4 weights (channel)" in stdout and ", AdaRound;" in stdout
    assert "AdaRound (16 samples, 1000 iterations/layer)" in stdout and stdout.count("rounded the other way") == 7
    assert out.is_file()
    code, _, err = cli("quantize", "-o", tmp_path / "x.onnx", "--activations", "fp32", "--adaround")
    _assert_user_error(code, err, "--adaround needs calibration data")
