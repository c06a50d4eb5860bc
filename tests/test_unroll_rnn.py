"""unroll_rnn: LSTM / GRU / RNN become plain ops with onnxruntime's numbers, and such models compile and verify.

onnxruntime runs the original RNN node, so every case is checked against an independent implementation; the
compile tests then check TVM's build of the unrolled graph against that same reference (edgec.compile verifies).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.errors import EdgecError
from edgec.passes import get_pass
from edgec.toolchain.pipeline import DEFAULT_PASSES

from helpers import assert_user_error

# torch's legacy exporter (the one that writes LSTM/GRU/RNN nodes) warns about itself and about batch > 1
pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export",
                                        "ignore:Exporting a model to ONNX with a batch_size other than 1")

RNN_OPS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SEQ, BATCH, INPUT, HIDDEN = 5, 2, 3, 4


def _rnn_model(op: str, direction: str = "forward", layout: int = 0, lbr: int = 0, bias: bool = True,
               init: str = "none", outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c"), opset: int = 14,
               attrs: dict | None = None, peepholes: bool = False, seq_lens: str | None = None) -> onnx.ModelProto:
    """One RNN node on seeded random weights. ``init``: no initial state, graph inputs, or nonzero constants;
    ``seq_lens``: None, "full" (a constant equal to the sequence length), "short" (constant) or "input"."""
    rng = np.random.default_rng(0)
    dirs, gates = (2 if direction == "bidirectional" else 1), GATES[op]
    inits = [numpy_helper.from_array(rng.standard_normal((dirs, gates * HIDDEN, INPUT)).astype(np.float32), "W"),
             numpy_helper.from_array(0.5 * rng.standard_normal((dirs, gates * HIDDEN, HIDDEN)).astype(np.float32),
                                     "R")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 2 * gates * HIDDEN)).astype(np.float32),
                                             "B"))
    x_shape = [BATCH, SEQ, INPUT] if layout else [SEQ, BATCH, INPUT]
    state_shape = [BATCH, dirs, HIDDEN] if layout else [dirs, BATCH, HIDDEN]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    names = ["x", "W", "R", "B" if bias else "", ""]
    if seq_lens == "input":
        names[4] = "lens"
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [BATCH]))
    elif seq_lens is not None:
        names[4] = "lens"
        inits.append(numpy_helper.from_array(np.array([SEQ, SEQ if seq_lens == "full" else SEQ - 2], np.int32),
                                             "lens"))
    states = ["h0", "c0"] if op == "LSTM" else ["h0"]
    for state in states if init != "none" else []:
        names.append(state)
        if init == "input":
            graph_inputs.append(helper.make_tensor_value_info(state, TensorProto.FLOAT, state_shape))
        else:
            inits.append(numpy_helper.from_array(rng.standard_normal(state_shape).astype(np.float32), state))
    if peepholes:
        names += [""] * (7 - len(names)) + ["P"]
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 3 * HIDDEN)).astype(np.float32), "P"))
    node_attrs = {"direction": direction, "hidden_size": HIDDEN, **(attrs or {})}
    if opset >= 14:
        node_attrs["layout"] = layout
    if op == "GRU":
        node_attrs["linear_before_reset"] = lbr
    out_names = [n if n in outputs else "" for n in ("Y", "Y_h", "Y_c")[:3 if op == "LSTM" else 2]]
    while out_names and not out_names[-1]:
        out_names.pop()
    out_shapes = {"Y": [BATCH, SEQ, dirs, HIDDEN] if layout else [SEQ, dirs, BATCH, HIDDEN],
                  "Y_h": state_shape, "Y_c": state_shape}
    graph = helper.make_graph([helper.make_node(op, names, out_names, name="rnn", **node_attrs)], "g", graph_inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, out_shapes[n]) for n in out_names
                               if n], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _as_layout0(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same function with a layout-0 RNN between Transposes: onnxruntime runs only layout 0."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    node = next(n for n in model.graph.node if n.op_type in RNN_OPS)
    for attr in node.attribute:
        if attr.name == "layout":
            attr.i = 0
    before, after = [], []
    for k in (0, 5, 6):
        if len(node.input) > k and node.input[k]:
            before.append(helper.make_node("Transpose", [node.input[k]], [f"{node.input[k]}_l0"], perm=[1, 0, 2]))
            node.input[k] = f"{node.input[k]}_l0"
    for k, perm in ((0, [2, 0, 1, 3]), (1, [1, 0, 2]), (2, [1, 0, 2])):
        if len(node.output) > k and node.output[k]:
            after.append(helper.make_node("Transpose", [f"{node.output[k]}_l0"], [node.output[k]], perm=perm))
            node.output[k] = f"{node.output[k]}_l0"
    nodes = before + list(model.graph.node) + after
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _ort(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    """``optimize=False``: op by op — a QDQ model as it is defined (onnxruntime's fused u8s8 kernels saturate on
    AVX2 hosts without VNNI, int16 pair sums, and would add their own error)."""
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})


def _feeds(proto: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in proto.graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}


def _unrolled(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    model = ir.serde.deserialize_model(proto)
    result = get_pass("unroll_rnn")(model)
    assert result.modified
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    assert not {n.op_type for n in out.graph.node} & set(RNN_OPS)
    return out, result.report


def _assert_same(proto: onnx.ModelProto, layout: int = 0, atol: float = 1e-5) -> onnx.ModelProto:
    feeds = _feeds(proto)
    expected = _ort(_as_layout0(proto) if layout else proto, feeds)
    unrolled, _ = _unrolled(proto)
    got = _ort(unrolled, feeds)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)
    return unrolled


# ---------------------------------------------------------------------------------------------- the pass alone

@pytest.mark.parametrize("op,direction,layout", list(itertools.product(
    RNN_OPS, ("forward", "reverse", "bidirectional"), (0, 1))))
def test_unrolled_graph_equals_onnxruntime(op, direction, layout):
    """Every direction and layout, with and without bias, no / run-time / nonzero constant initial states, both
    GRU linear_before_reset modes: Y, Y_h (and Y_c) in ONNX's shapes and onnxruntime's numbers."""
    for init, lbr, bias in itertools.product(("none", "input", "const"), (0, 1) if op == "GRU" else (0,),
                                             (True, False)):
        _assert_same(_rnn_model(op, direction, layout, lbr=lbr, bias=bias, init=init), layout)


def test_one_projection_matmul_and_only_used_outputs():
    """The input projection of all steps and both directions is one MatMul (its weight [input, 2·4·hidden]);
    a zero initial state skips step 0's recurrent MatMul; an unused Y is never built."""
    proto = _rnn_model("LSTM", "bidirectional", outputs=("Y_h",))
    unrolled = _assert_same(proto)
    ops = [n.op_type for n in unrolled.graph.node]
    assert ops.count("MatMul") == 1 + 2 * (SEQ - 1)
    assert ops.count("Reshape") == 2  # x to rows and back; Y [seq, dirs, batch, hidden] would be a third
    weights = {i.name: i.dims for i in unrolled.graph.initializer}
    producer = {o: n for n in unrolled.graph.node for o in n.output}
    projection = next(n for n in unrolled.graph.node if n.op_type == "MatMul")
    assert producer[projection.input[0]].op_type == "Reshape" and producer[projection.input[0]].input[0] == "x"
    assert list(weights[projection.input[1]]) == [INPUT, 2 * 4 * HIDDEN]
    assert not {"W", "R", "B"} & set(weights)  # the originals are dropped


@pytest.mark.parametrize("op,opset", list(itertools.product(RNN_OPS, (9, 11))))
def test_older_opsets_and_full_sequence_lens(op, opset):
    """Gates are Slices (never a Split: nothing fuses across its tuple), their bounds inputs from opset 10 (11
    here), attributes before (9); a constant sequence_lens equal to the sequence length is the same as none."""
    unrolled = _assert_same(_rnn_model(op, "bidirectional", opset=opset, init="input", seq_lens="full"))
    slices = [n for n in unrolled.graph.node if n.op_type == "Slice"]
    assert slices and "Split" not in {n.op_type for n in unrolled.graph.node}
    assert all((len(n.input) == 1) == (opset < 10) for n in slices)


def test_lstm_step_compiles_to_four_kernels():
    """Built for x86, each LSTM step after the first is four kernels: its slice of the input projection, the
    recurrent MatMul, then C' and H' (every gate a Slice + Add with its own Sigmoid, each read once, so TVM fuses a
    step's gate arithmetic; with Splits and one Sigmoid over three gates a step was ~10 kernels and openWakeWord's
    LSTM head spent 60 % of its time between them). The gate kernels are shared by every step."""
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.lower import to_relax

    steps = 12
    proto = _rnn_model("LSTM", outputs=("Y_h",))
    for value in (*proto.graph.input, *proto.graph.output):  # SEQ → steps along the sequence axis
        dims = value.type.tensor_type.shape.dim
        if value.name == "x":
            dims[0].dim_value = steps
    unrolled, _ = _unrolled(proto)
    mod, _ = staged_module(to_relax(unrolled), resolve_target("x86:avx2"), scheduled=False)
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call) and
                                    getattr(e.op, "name", "") == "relax.call_tir" else None)
    names = [call.args[0].name_hint for call in calls]
    assert 4 * (steps - 1) <= len(calls) <= 4 * (steps - 1) + 4, names
    assert max(names.count(name) for name in set(names)) >= steps - 1, names  # one kernel serves every step


@pytest.mark.parametrize("change,needle", [
    ({"attrs": {"clip": 1.0}}, "clip=1.0"),
    ({"attrs": {"activations": ["HardSigmoid", "Tanh", "Tanh"]}}, "activations=['HardSigmoid', 'Tanh', 'Tanh']"),
    ({"attrs": {"input_forget": 1}}, "input_forget=1"),
    ({"peepholes": True}, "peepholes (input P)"),
    ({"seq_lens": "input"}, "sequence_lens computed at run time"),
    ({"seq_lens": "short"}, "sequence_lens=[5, 3]"),
])
def test_unsupported_attribute_is_one_line_exit_2(cli, tmp_path, change, needle):
    path = tmp_path / "lstm.onnx"
    onnx.save(_rnn_model("LSTM", **change), str(path))
    code, _, err = cli("compile", path, "--target", "x86", "-o", tmp_path / "out")
    assert_user_error(code, err, "LSTM node 'rnn'", needle, "edgec cannot unroll", "re-export")
    assert not (tmp_path / "out").exists()


def test_without_the_pass_the_importer_error_names_it(tmp_path):
    path = tmp_path / "gru.onnx"
    onnx.save(_rnn_model("GRU"), str(path))
    passes = [p for p in DEFAULT_PASSES if p != "unroll_rnn"]
    with pytest.raises(EdgecError, match="operator GRU .*unroll_rnn"):
        edgec.compile(path, target="x86", output=tmp_path / "out", passes=passes)


# ---------------------------------------------------------------------------------------------- torch models

def _torch_recurrent(cell: str, bidirectional: bool, batch_first: bool):
    """A 2-layer torch.nn.LSTM/GRU/RNN returning every output, taking initial states as optional inputs."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = getattr(torch.nn, cell)(INPUT, HIDDEN, num_layers=2, bidirectional=bidirectional,
                                               batch_first=batch_first)

        def forward(self, x, *states):
            if cell == "LSTM":
                y, (h, c) = self.rnn(x, tuple(states) if states else None)
                return y, h, c
            y, h = self.rnn(x, states[0] if states else None)
            return y, h

    return Net().eval()


@pytest.mark.parametrize("cell,bidirectional,batch_first,with_states", [
    ("LSTM", True, True, False),
    ("LSTM", False, False, True),
    ("GRU", True, False, True),
    ("GRU", False, True, False),
    ("RNN", True, True, False),
])
def test_torch_rnn_unrolls_and_compiles(tmp_path, cell, bidirectional, batch_first, with_states):
    """torch's 2-layer LSTM/GRU/RNN (legacy exporter, fixed sequence length): the pipeline's graph gives
    onnxruntime's outputs of the exported model, and the x86 artifact verifies against it."""
    import torch

    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    torch.manual_seed(0)
    net = _torch_recurrent(cell, bidirectional, batch_first)
    x = torch.randn(BATCH, SEQ + 2, INPUT) if batch_first else torch.randn(SEQ + 2, BATCH, INPUT)
    states = [torch.randn(2 * (2 if bidirectional else 1), BATCH, HIDDEN) for _ in range(2 if cell == "LSTM" else 1)]
    args = (x, *states) if with_states else (x,)
    names = ["x", "h0", "c0"][:len(args)]
    path = tmp_path / "rnn.onnx"
    torch.onnx.export(net, args, str(path), input_names=names, dynamo=False, opset_version=17)
    raw = onnx.load(str(path))
    assert cell in {n.op_type for n in raw.graph.node}
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    expected = _ort(raw, feeds)

    model, log = run_pipeline(load_model(path), DEFAULT_PASSES)
    entry = next(e for e in log if e["pass"] == "unroll_rnn")
    assert entry["report"]["unrolled"] == {cell: 2}
    for got, want in zip(_ort(ir.serde.serialize_model(model), feeds), expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    result = edgec.compile(path, target="x86", output=tmp_path / "out")
    assert result.verification is not None and result.verification.passed, result.verification


# ---------------------------------------------------------------------------------------------- a CRNN

def _export_crnn(path: Path, opset: int) -> Path:
    """A tiny text recognizer shaped like PaddleOCR v2 / ddddocr: conv stack to height 1, the width as a sequence
    of 12 steps, a BiLSTM, per-step class scores (CTC log-probabilities)."""
    import torch

    class Crnn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cnn = torch.nn.Sequential(
                torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d((4, 2)))
            self.rnn = torch.nn.LSTM(16 * 2, 16, bidirectional=True, batch_first=True)
            self.fc = torch.nn.Linear(32, 11)

        def forward(self, x):
            f = self.cnn(x)  # [n, 16, 2, 12]
            f = f.flatten(1, 2).permute(0, 2, 1)  # [n, 12, 32]
            y, _ = self.rnn(f)
            return self.fc(y).log_softmax(-1)

    torch.manual_seed(0)
    torch.onnx.export(Crnn().eval(), (torch.randn(1, 1, 16, 48),), str(path), input_names=["image"],
                      output_names=["logprobs"], dynamo=False, opset_version=opset)
    return path


@pytest.fixture(scope="module")
def crnn_onnx(tmp_path_factory) -> Path:
    return _export_crnn(tmp_path_factory.mktemp("crnn") / "crnn.onnx", 17)


def test_crnn_compiles_and_runs_through_the_cli(cli, crnn_onnx, tmp_path):
    code, out, err = cli("compile", crnn_onnx, "--target", "x86", "-o", tmp_path / "out")
    assert code == 0, err
    assert "verify: PASS" in out
    x = np.random.default_rng(3).standard_normal((1, 1, 16, 48)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = cli("run", tmp_path / "out", "--input", tmp_path / "x.npy", "--save", tmp_path / "y.npz")
    assert code == 0, err
    assert "logprobs: float32 (1, 12, 11)" in out
    want = _ort(onnx.load(str(crnn_onnx)), {"image": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["logprobs"], want, atol=1e-4, rtol=0)


def _dequantized_weights(quant: onnx.ModelProto) -> dict[str, bool]:
    """For every MatMul/Gemm/Conv node: whether its weight (second input) comes out of a DequantizeLinear."""
    producers = {out: n.op_type for n in quant.graph.node for out in n.output}
    return {n.name: producers.get(n.input[1]) == "DequantizeLinear" for n in quant.graph.node
            if n.op_type in ("MatMul", "Gemm", "Conv")}


def test_crnn_quantizes(crnn_onnx, tmp_path):
    """The quantize path runs DEFAULT_PASSES: the convs and the classifier get int8 weights, the unrolled LSTM's
    MatMuls stay float (as onnxruntime keeps an LSTM float: a quantized recurrence feeds its error back at every
    step), unless an override names one; the QDQ model runs."""
    from edgec.quantization.api import quantize_model

    rng = np.random.default_rng(4)
    np.save(tmp_path / "calib.npy", rng.standard_normal((16, 1, 16, 48)).astype(np.float32))
    result = quantize_model(crnn_onnx, tmp_path / "q.onnx", tmp_path / "calib.npy", samples=16)
    quant = onnx.load(str(tmp_path / "q.onnx"))
    ops = {n.op_type for n in quant.graph.node}
    assert "LSTM" not in ops and {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= ops
    weights = _dequantized_weights(quant)
    lstm = {name for name in weights if "LSTM" in name or "lstm" in name or "rnn" in name}
    assert lstm and not any(weights[name] for name in lstm), weights
    assert sum(weights.values()) == 3, weights  # two convs and the classifier
    kept = sorted(layer["layer"] for layer in result.report["layers"] if layer["precision"] == "float")
    assert kept and any(note.startswith(f"kept float: {len(kept)} MatMuls of unrolled LSTM")
                        for note in result.report["notes"]), result.report["notes"]
    override = kept[0]
    again = quantize_model(crnn_onnx, tmp_path / "q2.onnx", tmp_path / "calib.npy", samples=16,
                           overrides={override: "int8"})
    assert sum(_dequantized_weights(onnx.load(str(tmp_path / "q2.onnx"))).values()) > 3, again.report["notes"]
    x = rng.standard_normal((1, 1, 16, 48)).astype(np.float32)
    got = _ort(quant, {"image": x}, optimize=False)[0]
    want = _ort(onnx.load(str(crnn_onnx)), {"image": x})[0]
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.75  # per-step best class mostly kept at int8


def test_crnn_at_opset_12_keeps_its_lstm_float(tmp_path):
    """An opset-12 model is raised to 13 for per-axis DequantizeLinear; that conversion (onnx's converter, the
    fallback) rebuilds the nodes, and the unrolled LSTM's precision hint must survive it (it did not: ddddocr's
    recognizer had its LSTM quantized)."""
    from edgec.quantization.api import quantize_model

    _export_crnn(tmp_path / "crnn12.onnx", 12)
    np.save(tmp_path / "calib.npy", np.random.default_rng(4).standard_normal((8, 1, 16, 48)).astype(np.float32))
    result = quantize_model(tmp_path / "crnn12.onnx", tmp_path / "q.onnx", tmp_path / "calib.npy", samples=8)
    assert any(note.startswith("opset 12 → 13") for note in result.report["notes"]), result.report["notes"]
    weights = _dequantized_weights(onnx.load(str(tmp_path / "q.onnx")))
    lstm = {name for name in weights if "LSTM" in name or "lstm" in name or "rnn" in name}
    assert lstm and not any(weights[name] for name in lstm), weights
    assert sum(weights.values()) == 3, weights  # two convs and the classifier


def test_layout_1_compiles_without_verification(cli, tmp_path):
    """onnxruntime cannot run a layout-1 (batch-major) RNN, so there is no reference: compile says so in one line
    and --no-verify builds it; the artifact gives the layout-0 equivalent's numbers."""
    proto = _rnn_model("GRU", "bidirectional", layout=1, lbr=1, init="input", outputs=("Y", "Y_h"))
    path = tmp_path / "gru_l1.onnx"
    onnx.save(proto, str(path))
    code, _, err = cli("compile", path, "--target", "x86", "-o", tmp_path / "out")
    assert_user_error(code, err, "onnxruntime cannot run the source model", "layout == 1", "--no-verify")
    code, _, err = cli("compile", path, "--target", "x86", "-o", tmp_path / "out", "--no-verify")
    assert code == 0, err
    feeds = _feeds(proto)
    result = edgec.run(tmp_path / "out", feeds)
    for name, want in zip(("Y", "Y_h"), _ort(_as_layout0(proto), feeds)):
        np.testing.assert_allclose(result.outputs[name], want, atol=1e-5, rtol=0)
