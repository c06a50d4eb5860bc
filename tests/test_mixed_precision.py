"""Mixed precision: per-layer overrides in the QDQ pass, the sensitivity scan, and ``edgec quantize --max-drop``
(the bound is met on the embedded model with layers promoted; an unreachable bound exits 2 and still leaves the best
model; the best model so far is on disk even when the search is interrupted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.errors import EdgecError
from edgec.models import default_model_path, mnist_split
from edgec.quantization import collect
from edgec.quantization import sensitivity
from edgec.quantization.method_choice import CANDIDATES
from edgec.quantization.api import quantize_model

from helpers import assert_user_error as _assert_user_error
from edgec.pruning.calib import spread  # the MNIST file is sorted by digit: spread samples

CONV_WEIGHTS = ["stem.0.0.weight", "block1.conv1.0.weight", "block1.conv2.0.weight", "down.0.0.weight",
                "block2.conv1.0.weight", "block2.conv2.0.weight"]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> dict[str, Path]:
    split = mnist_split()
    folder = tmp_path_factory.mktemp("mixed")
    np.save(folder / "calib.npy", spread(split["train"][0], 64))
    np.savez(folder / "test.npz", x=split["test"][0], y=split["test"][1])
    np.savez(folder / "unlabelled.npz", x=spread(split["test"][0], 200))
    return {"calib": folder / "calib.npy", "test": folder / "test.npz", "unlabelled": folder / "unlabelled.npz"}


def _weight_source(model: onnx.ModelProto, op_type: str, index: int = 0) -> tuple[str, int, str]:
    """(the layer's data input name, the stored dtype of its weight, the weight initializer's name)."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    node = [n for n in model.graph.node if n.op_type == op_type][index]
    w = node.input[1]
    if w in inits:
        return node.input[0], inits[w].data_type, w
    dq = producer[w]
    assert dq.op_type == "DequantizeLinear"
    return node.input[0], inits[dq.input[0]].data_type, dq.input[0]


def _top1(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = collect.session(model)
    return np.array([int(np.argmax(sess.run(None, {"input": x[i:i + 1]})[0])) for i in range(len(x))])


# ---------------------------------------------------------------------------------------------- overrides

def test_overrides_keep_a_layer_float_or_int8_in_a_valid_qdq_graph(mnist):
    r = quantize_model(default_model_path(), None, mnist["calib"], 16, weights="int4",
                       overrides={"stem.0.0": "float", "fc.weight": "int8", "node_Conv_2": "int8"})
    q = r.model
    onnx.checker.check_model(q)
    # the float stem reads the graph input itself (no Q/DQ) and its float weight
    x_in, dtype, name = _weight_source(q, "Conv", 0)
    assert x_in == "input" and dtype == TensorProto.FLOAT and name == "stem.0.0.weight"
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "input" for n in q.graph.node)
    # block1.conv1 (int4, the default) reads the stem's output through Q/DQ: it is quantized as *its* input
    x_in, dtype, _ = _weight_source(q, "Conv", 1)
    assert x_in.endswith("_dequantized") and dtype == TensorProto.INT4
    assert _weight_source(q, "Conv", 2)[1] == TensorProto.INT8  # by node name
    assert _weight_source(q, "Gemm")[1] == TensorProto.INT8     # by weight name
    for i in (3, 4, 5):
        assert _weight_source(q, "Conv", i)[1] == TensorProto.INT4
    by_weight = {layer["weight"]: layer for layer in r.report["layers"]}
    assert by_weight["stem.0.0.weight"]["precision"] == "float" and by_weight["stem.0.0.weight"]["bits"] == 32
    assert by_weight["fc.weight"]["bits"] == 8 and by_weight["block2.conv2.0.weight"]["bits"] == 4
    assert by_weight["stem.0.0.weight"]["quantized_bytes"] == by_weight["stem.0.0.weight"]["float_bytes"] == 576
    x = spread(mnist_split()["test"][0], 64)
    agree = np.mean(_top1(q, x) == _top1(r.float_model, x))
    assert agree >= 0.95


def test_every_layer_float_is_the_float_model_and_bad_overrides_are_user_errors(mnist):
    names = [w.removesuffix(".weight") for w in CONV_WEIGHTS] + ["fc"]
    r = quantize_model(default_model_path(), None, mnist["calib"], 8, overrides={n: "float" for n in names})
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in r.model.graph.node)
    x = spread(mnist_split()["test"][0], 4)
    for i in range(len(x)):
        a = collect.session(r.model).run(None, {"input": x[i:i + 1]})[0]
        b = collect.session(r.float_model).run(None, {"input": x[i:i + 1]})[0]
        np.testing.assert_array_equal(a, b)
    with pytest.raises(EdgecError, match="no quantizable layer named 'nope'.*block2.conv1.0"):
        quantize_model(default_model_path(), None, mnist["calib"], 8, overrides={"nope": "int8"})
    with pytest.raises(EdgecError, match="unknown precision 'int2'"):
        quantize_model(default_model_path(), None, mnist["calib"], 8, overrides={"fc": "int2"})


# ---------------------------------------------------------------------------------------------- scan

def test_sensitivity_scan_ranks_every_quantized_layer_once_calibrating_once(mnist, monkeypatch):
    calls = []
    observe = collect.observe
    monkeypatch.setattr(collect, "observe", lambda *a, **k: calls.append(1) or observe(*a, **k))
    r = quantize_model(default_model_path(), None, mnist["calib"], 64, weights="int4", scan=True,
                       eval_path=mnist["test"])
    # activation ranges: one calibration pass per range method --method auto weighs, shared by every candidate
    assert len(calls) == len(CANDIDATES)
    assert r.report["method_choice"]["chosen"] == r.report["config"]["method"]
    mp = r.report["mixed_precision"]
    scan = mp["scan"]
    assert sorted(e["weight"] for e in scan) == sorted(CONV_WEIGHTS + ["fc.weight"])
    assert [e["rank"] for e in scan] == list(range(1, 8))
    keys = [(-e["drop_pt"], e["output_sqnr_db"]) for e in scan]
    assert keys == sorted(keys)  # most sensitive first: higher drop, then lower output SQNR
    assert all(e["precision"] == "int4" and -1 < e["drop_pt"] < 2 and 10 < e["output_sqnr_db"] < 40 for e in scan)
    assert mp["metric"] == "top-1 drop (pt)" and mp["max_drop"] is None and mp["met"] is None
    # one layer alone is much closer to the float model than all of them together
    assert min(e["output_sqnr_db"] for e in scan) > mp["final_output_sqnr_db"]
    # without evaluation data: ranked by output SQNR on the calibration data
    r2 = quantize_model(default_model_path(), None, mnist["calib"], 16, weights="int4", scan=True)
    scan2 = r2.report["mixed_precision"]["scan"]
    assert len(scan2) == 7 and all(e["drop_pt"] is None for e in scan2)
    sq = [e["output_sqnr_db"] for e in scan2]
    assert sq == sorted(sq)


# ---------------------------------------------------------------------------------------------- --max-drop

def test_cli_max_drop_w4_promotes_layers_until_the_measured_drop_holds(cli, mnist, tmp_path):
    out = tmp_path / "mixed.onnx"
    # minmax: all-int4 misses the bound with it (the search has layers to promote; auto's percentile meets it)
    code, stdout, err = cli("quantize", "-o", out, "--calib", mnist["calib"], "--weights", "int4",
                            "--eval", mnist["test"], "--max-drop", "0.1", "--method", "minmax")
    assert code == 0, err
    assert "sensitivity: int4 one layer at a time" in stdout and "drop alone pt" in stdout
    assert "search: max drop 0.10 pt, ladder int4 → int8 → float" in stdout
    assert ": met; promoted: " in stdout and "promoted: none" not in stdout
    q = onnx.load(str(out))
    onnx.checker.check_model(q)
    dtypes = [_weight_source(q, "Conv", i)[1] for i in range(6)] + [_weight_source(q, "Gemm")[1]]
    assert TensorProto.INT4 in dtypes and any(d != TensorProto.INT4 for d in dtypes)  # mixed
    # the drop, recomputed here with onnxruntime on the real test split, against the float model
    split = mnist_split()
    x, y = split["test"]
    float_model = quantize_model(default_model_path(), None, mnist["calib"], 8, scan=False,
                                 overrides={w: "float" for w in CONV_WEIGHTS + ["fc.weight"]}).model
    drop = 100 * (np.mean(_top1(float_model, x) == y) - np.mean(_top1(q, x) == y))
    assert drop <= 0.1 + 1e-9
    all_int4 = quantize_model(default_model_path(), None, mnist["calib"], 64, weights="int4", eval_path=mnist["test"],
                              method="minmax")
    assert all_int4.report["eval"]["drop_pt"] > 0.1  # so the bound really needed promotions


def _flip_model(path: Path) -> None:
    """x @ W with two classes 0.007 apart: both int8 and int4 per-channel rounding flip the top-1 of x = [0, 1]."""
    w = np.array([[1.0, 1.6972877979278564], [0.6556532979011536, 0.6488518118858337]], np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["logits"], name="head")], "flip",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_cli_unreachable_bound_exits_2_and_keeps_the_best_model(cli, tmp_path):
    model, out = tmp_path / "flip.onnx", tmp_path / "best.onnx"
    _flip_model(model)
    np.savez(tmp_path / "e.npz", x=np.array([[0.0, 1.0]], np.float32), y=np.array([0]))
    args = ("quantize", model, "-o", out, "--activations", "fp32", "--weights", "int4", "--eval", tmp_path / "e.npz",
            "--max-drop", "50")
    code, stdout, err = cli(*args, "--promote-to", "int8")
    _assert_user_error(code, err, "--max-drop 50 not reached: the best drop is 100.00 pt",
                       f"the best model was saved at {out}")
    assert "NOT met" in stdout
    q = onnx.load(str(out))
    onnx.checker.check_model(q)
    assert _weight_source(q, "MatMul")[1] == TensorProto.INT4  # all drops tie: the smallest model is the best
    assert collect.session(q).run(None, {"input": np.array([[0.0, 1.0]], np.float32)})[0].shape == (1, 2)
    assert not list(tmp_path.glob(".*tmp"))
    # allowed to keep the layer float, the same search meets the bound
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "promoted: head → float" in stdout or "promoted: w → float" in stdout
    assert _weight_source(onnx.load(str(out)), "MatMul")[1] == TensorProto.FLOAT


def test_an_interrupted_search_leaves_the_best_model_so_far(mnist, tmp_path, monkeypatch):
    out = tmp_path / "q.onnx"
    measure, count = sensitivity.Evaluator.measure, []

    def flaky(self, proto):
        count.append(1)
        if len(count) == 4:  # all-int4, then two scan entries, then "Ctrl-C"
            raise KeyboardInterrupt
        return measure(self, proto)

    monkeypatch.setattr(sensitivity.Evaluator, "measure", flaky)
    with pytest.raises(KeyboardInterrupt):
        quantize_model(default_model_path(), out, mnist["calib"], 64, weights="int4", eval_path=mnist["test"],
                       max_drop=0.0)  # all-int4 drops 0.2 pt here: a scan and a search follow
    q = onnx.load(str(out))  # the all-int4 model, the best (only) search candidate so far
    assert all(_weight_source(q, "Conv", i)[1] == TensorProto.INT4 for i in range(6))
    assert not list(tmp_path.glob(".*tmp"))


def test_cli_max_drop_option_errors(cli, mnist, tmp_path):
    out = tmp_path / "q.onnx"
    code, _, err = cli("quantize", "-o", out, "--calib", mnist["calib"], "--max-drop", "0.5")
    _assert_user_error(code, err, "--max-drop needs evaluation data", "--eval")
    code, _, err = cli("quantize", "-o", out, "--calib", mnist["calib"], "--eval", mnist["test"], "--max-drop", "-1")
    _assert_user_error(code, err, "--max-drop", "x>=0")
    code, _, err = cli("quantize", "-o", out, "--calib", mnist["calib"], "--override", "fc")
    _assert_user_error(code, err, "cannot read --override 'fc'")
    code, _, err = cli("quantize", "-o", out, "--calib", mnist["calib"], "--eval", mnist["test"], "--max-drop", "1",
                       "--promote-to", "int8")
    _assert_user_error(code, err, "nothing to promote int8 weights to")
    assert not out.exists()
