"""Tests for edgec.toolchain.inspect: MACs and params are checked against hand-computed literals."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from edgec.errors import EdgecError
from edgec.toolchain.inspect import ModelStats, format_table, inspect_model


def _init(name: str, shape: list[int], dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype=dtype), name)


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    """A validated single-graph model; inputs/outputs are (name, elem_type, shape) triples."""
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info(*i) for i in inputs],
        [h.make_tensor_value_info(*o) for o in outputs],
        list(inits),
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    # Validate the test model itself: strict inference fills the (undeclared) output shapes the checker wants.
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True))
    return m


def _conv_model(x_shape, w_shape, out_shape, **attrs) -> onnx.ModelProto:
    return _model(
        [h.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)],
        [("x", T.FLOAT, x_shape)],
        [("y", T.FLOAT, None)],
        [_init("w", w_shape), _init("b", [w_shape[0]])],
    )


# ------------------------------------------------------------------------------------------------ Conv


def test_plain_conv() -> None:
    m = _conv_model([1, 3, 32, 32], [8, 3, 3, 3], None, pads=[1, 1, 1, 1])
    s = inspect_model(m)
    (layer,) = s.layers
    assert layer.output_shape == (1, 8, 32, 32)
    # Conv 3->8, 3x3, pad 1, on 1x3x32x32 -> N*Cout*H*W*Cin*kH*kW = 1*8*32*32*3*9
    assert layer.macs == 221_184
    # weights 8*3*3*3 = 216 + bias 8 = 224 float32 -> 896 bytes
    assert (layer.params, layer.weight_bytes) == (224, 896)
    assert (s.total_params, s.total_macs, s.total_weight_bytes) == (224, 221_184, 896)
    # live at once: input 1*3*32*32*4 = 12,288 B + output 1*8*32*32*4 = 32,768 B
    assert s.peak_activation_bytes == 45_056
    assert s.op_counts == {"Conv": 1}


def test_strided_padded_conv() -> None:
    m = _conv_model([1, 16, 28, 28], [32, 16, 3, 3], None, strides=[2, 2], pads=[1, 1, 1, 1])
    (layer,) = inspect_model(m).layers
    # Hout = floor((28 + 2 - 3) / 2) + 1 = 14 -> 32*14*14*16*9
    assert layer.output_shape == (1, 32, 14, 14)
    assert layer.macs == 903_168


def test_batched_dilated_asymmetric_conv() -> None:
    m = _conv_model(
        [2, 4, 20, 15], [6, 4, 5, 3], None, strides=[2, 1], pads=[2, 1, 2, 1], dilations=[1, 2]
    )
    (layer,) = inspect_model(m).layers
    # Hout = floor((20 + 4 - (4*1 + 1)) / 2) + 1 = 10; Wout = floor((15 + 2 - (2*2 + 1)) / 1) + 1 = 13
    # N*Cout*Hout*Wout*Cin*kH*kW = 2*6*10*13*4*5*3
    assert layer.output_shape == (2, 6, 10, 13)
    assert layer.macs == 93_600


def test_depthwise_conv() -> None:
    m = _conv_model([1, 32, 28, 28], [32, 1, 3, 3], None, pads=[1, 1, 1, 1], group=32)
    (layer,) = inspect_model(m).layers
    # group = C: each output channel sees Cin/groups = 1 channel -> 32*28*28*1*9
    assert layer.macs == 225_792
    assert layer.params == 32 * 9 + 32  # 320


def test_grouped_conv() -> None:
    m = _conv_model([1, 16, 10, 10], [32, 4, 3, 3], None, group=4)
    (layer,) = inspect_model(m).layers
    # no pad: 8x8 out; Cin/groups = 16/4 = 4 -> 32*8*8*4*9
    assert layer.output_shape == (1, 32, 8, 8)
    assert layer.macs == 73_728


def test_conv_transpose() -> None:
    m = _model(
        [h.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
        [("x", T.FLOAT, [1, 8, 7, 7])],
        [("y", T.FLOAT, None)],
        [_init("w", [8, 4, 3, 3])],
    )
    (layer,) = inspect_model(m).layers
    # out = (7-1)*2 + 3 = 15; each input element scatters through Cout/groups*kH*kW: 8*7*7 * 4*3*3
    assert layer.output_shape == (1, 4, 15, 15)
    assert layer.macs == 14_112


# ------------------------------------------------------------------------------------------ Gemm/MatMul


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_trans_b(trans_a: int) -> None:
    a_shape = [128, 4] if trans_a else [4, 128]
    m = _model(
        [h.make_node("Gemm", ["a", "w", "c"], ["y"], transA=trans_a, transB=1)],
        [("a", T.FLOAT, a_shape)],
        [("y", T.FLOAT, None)],
        [_init("w", [64, 128]), _init("c", [64])],
    )
    (layer,) = inspect_model(m).layers
    # M=4, K=128, N=64 (B is [N, K] under transB) -> 4*64*128
    assert layer.output_shape == (4, 64)
    assert layer.macs == 32_768
    assert layer.params == 64 * 128 + 64  # 8,256


def test_batched_matmul_broadcast() -> None:
    m = _model(
        [h.make_node("MatMul", ["a", "b"], ["y"]), h.make_node("MatMul", ["v", "b"], ["z"])],
        [("a", T.FLOAT, [2, 1, 5, 8]), ("b", T.FLOAT, [3, 8, 7]), ("v", T.FLOAT, [8])],
        [("y", T.FLOAT, None), ("z", T.FLOAT, None)],
    )
    mm, vec = inspect_model(m).layers
    # batch dims [2,1] x [3] broadcast to [2,3]; M=5, K=8, N=7 -> 2*3*5*7*8
    assert mm.output_shape == (2, 3, 5, 7)
    assert mm.macs == 1_680
    # 1-D A drops M: [8] @ [3,8,7] -> [3,7], K=8 -> 3*7*8
    assert vec.output_shape == (3, 7)
    assert vec.macs == 168
    assert mm.params == 0  # activations, not weights


def test_shared_weight_counted_once() -> None:
    m = _model(
        [
            h.make_node("MatMul", ["x", "w"], ["h1"], name="fc1"),
            h.make_node("Relu", ["h1"], ["h2"], name="relu"),
            h.make_node("MatMul", ["h2", "w"], ["y"], name="fc2"),
        ],
        [("x", T.FLOAT, [1, 16])],
        [("y", T.FLOAT, None)],
        [_init("w", [16, 16])],
    )
    s = inspect_model(m)
    assert [(l.name, l.params) for l in s.layers] == [("fc1", 256), ("relu", 0), ("fc2", 0)]
    assert s.total_params == 256  # 16*16, once
    assert s.total_weight_bytes == 1_024
    assert s.total_macs == 2 * 256  # each MatMul: 1*16*16
    assert s.op_counts == {"MatMul": 2, "Relu": 1}


def test_constant_node_is_a_weight_not_a_layer() -> None:
    w = numpy_helper.from_array(np.zeros([16, 4], np.float32), "cw")
    m = _model(
        [h.make_node("Constant", [], ["w"], value=w), h.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        [("x", T.FLOAT, [2, 16])],
        [("y", T.FLOAT, None)],
    )
    s = inspect_model(m)
    assert [(l.name, l.params, l.weight_bytes, l.macs) for l in s.layers] == [("fc", 64, 256, 2 * 4 * 16)]
    assert "Constant" not in s.op_counts


def test_data_propagation_resolves_computed_reshape() -> None:
    # x[2,3,4] -> Reshape(x, Concat(Shape(x)[0:1], [-1])) = [2,12] -> MatMul W[12,5]
    m = _model(
        [
            h.make_node("Shape", ["x"], ["s"]),
            h.make_node("Slice", ["s", "st", "en"], ["n"]),
            h.make_node("Concat", ["n", "neg1"], ["shp"], axis=0),
            h.make_node("Reshape", ["x", "shp"], ["flat"]),
            h.make_node("MatMul", ["flat", "w"], ["y"], name="fc"),
        ],
        [("x", T.FLOAT, [2, 3, 4])],
        [("y", T.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([0], np.int64), "st"),
            numpy_helper.from_array(np.array([1], np.int64), "en"),
            numpy_helper.from_array(np.array([-1], np.int64), "neg1"),
            _init("w", [12, 5]),
        ],
    )
    fc = inspect_model(m).layers[-1]
    assert fc.output_shape == (2, 5)
    assert fc.macs == 120  # 2*5*12


# ------------------------------------------------------------------------------------- quantized forms


def test_quantized_and_integer_ops() -> None:
    u8, i8 = np.uint8, np.int8
    f = lambda n, v: numpy_helper.from_array(np.array(v, np.float32), n)  # noqa: E731
    m = _model(
        [
            h.make_node("ConvInteger", ["xq", "wq"], ["ci"], name="conv_int"),
            h.make_node(
                "QLinearConv", ["xq", "xs", "xz", "wq8", "ws", "wz", "ys", "yz", "bq"], ["qc"], name="qconv"
            ),
            h.make_node("MatMulInteger", ["aq", "bq2"], ["mi"], name="mm_int"),
            h.make_node("QLinearMatMul", ["aq3", "xs", "xz", "bq2", "xs", "xz", "ys", "yz"], ["qm"], name="qmm"),
        ],
        [("xq", T.UINT8, [1, 3, 8, 8]), ("aq", T.UINT8, [4, 8]), ("aq3", T.UINT8, [2, 4, 8])],
        [("ci", T.INT32, None), ("qc", T.UINT8, None), ("mi", T.INT32, None), ("qm", T.UINT8, None)],
        [
            _init("wq", [4, 3, 3, 3], u8),
            _init("wq8", [4, 3, 3, 3], i8),
            f("xs", 0.1), _init("xz", [], u8),
            f("ws", 0.1), _init("wz", [], i8),
            f("ys", 0.1), _init("yz", [], u8),
            _init("bq", [4], np.int32),
            _init("bq2", [8, 3], u8),
        ],
    )
    s = inspect_model(m)
    macs = {l.name: l.macs for l in s.layers}
    # both convs: 3x3 valid on 8x8 -> 6x6; 4*6*6*3*9 = 3,888
    # MatMulInteger [4,8]@[8,3] -> 4*3*8 = 96; QLinearMatMul [2,4,8]@[8,3] -> 2*4*3*8 = 192
    assert macs == {"conv_int": 3_888, "qconv": 3_888, "mm_int": 96, "qmm": 192}
    by = {l.name: (l.params, l.weight_bytes) for l in s.layers}
    assert by["conv_int"] == (108, 108)  # uint8 [4,3,3,3]
    # int8 w 108 (108 B) + 3 float scales (12 B) + 3 zero points (3 B) + int32 bias 4 (16 B)
    assert by["qconv"] == (108 + 3 + 3 + 4, 108 + 12 + 3 + 16)
    assert by["mm_int"] == (24, 24)  # uint8 [8,3]; reused by qmm, so qmm gets nothing
    assert by["qmm"] == (0, 0)


# ------------------------------------------------------------------------------------------ torch export


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the brief asks for the legacy dynamo=False exporter
def test_torch_exported_model_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 26 * 26, 10)
    ).eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), buf, dynamo=False, input_names=["x"])
    s = inspect_model(onnx.load_from_string(buf.getvalue()))

    assert s.total_params == sum(p.numel() for p in net.parameters()) == 54_170  # 8*9+8 + 5408*10+10
    assert s.total_weight_bytes == 54_170 * 4
    # Conv: 8*26*26*1*9 = 48,672; Linear: 1*10*5408 = 54,080
    assert s.total_macs == 48_672 + 54_080 == 102_752
    assert s.op_counts == {"Conv": 1, "Flatten": 1, "Gemm": 1, "Relu": 1}
    assert s.layers[-1].output_shape == (1, 10)


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_shape_raises_naming_node() -> None:
    # The Reshape target comes from a runtime input, so the MatMul's input dims cannot be inferred.
    m = _model(
        [h.make_node("Reshape", ["x", "shape"], ["r"]), h.make_node("MatMul", ["r", "w"], ["y"], name="head")],
        [("x", T.FLOAT, [1, 16]), ("shape", T.INT64, [2])],
        [("y", T.FLOAT, None)],
        [_init("w", [16, 4])],
    )
    with pytest.raises(EdgecError, match="'head'") as ei:
        inspect_model(m)
    assert "--input-shape" in ei.value.hint


def test_symbolic_input_dim_raises() -> None:
    m = _conv_model(["N", 3, 32, 32], [8, 3, 3, 3], None)
    with pytest.raises(EdgecError, match=r"'conv'.*\[N, 3, 32, 32\]"):
        inspect_model(m)


# ----------------------------------------------------------------------------------------- formatting


def test_format_table_and_json() -> None:
    m = _model(
        [
            h.make_node("Conv", ["x", "w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
            h.make_node("Relu", ["c"], ["r"]),
            h.make_node("Flatten", ["r"], ["f"], name="flat"),
            h.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1),
        ],
        [("x", T.FLOAT, [1, 3, 32, 32])],
        [("y", T.FLOAT, None)],
        [_init("w", [8, 3, 3, 3]), _init("fw", [10, 8 * 32 * 32])],
    )
    s = inspect_model(m)
    # conv 221,184 + fc 10*8192 = 81,920
    assert s.total_macs == 303_104
    text = format_table(s)
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "op", "output", "shape", "params", "MACs", "KiB"]
    table = lines[: lines.index("")]
    assert len({len(line) for line in table}) == 1  # every row, rules and totals aligned to one width
    assert any(line.startswith("Relu_1") for line in table)  # unnamed nodes get op_index labels
    assert "[1, 8, 32, 32]" in text and "221,184" in text
    assert "TOTAL" in table[-1] and "303,104" in table[-1]
    assert "0.30 MMACs" in text
    assert "ops: Conv x1, Flatten x1, Gemm x1, Relu x1" in text

    d = json.loads(json.dumps(s.to_dict()))
    assert d["total_macs"] == 303_104
    assert d["layers"][0] == {
        "name": "conv1", "op_type": "Conv", "output_shape": [1, 8, 32, 32],
        "params": 216, "macs": 221_184, "weight_bytes": 864,
    }
    assert isinstance(s, ModelStats)


def test_subgraph_weights_are_charged_to_the_owning_node() -> None:
    # then-branch reads outer weight "w" [4,4]; else-branch owns a local initializer "b" [4]
    then_g = h.make_graph(
        [h.make_node("MatMul", ["x", "w"], ["t"])], "then", [], [h.make_tensor_value_info("t", T.FLOAT, [1, 4])]
    )
    else_g = h.make_graph(
        [h.make_node("Add", ["x", "b"], ["e"])], "else", [], [h.make_tensor_value_info("e", T.FLOAT, [1, 4])],
        [_init("b", [4])],
    )
    m = _model(
        [h.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)],
        [("cond", T.BOOL, []), ("x", T.FLOAT, [1, 4])],
        [("y", T.FLOAT, None)],
        [_init("w", [4, 4])],
    )
    (layer,) = inspect_model(m).layers
    assert (layer.name, layer.params, layer.weight_bytes, layer.macs) == ("branch", 16 + 4, 80, 0)


def test_sparse_initializer() -> None:
    values = numpy_helper.from_array(np.ones([3], np.float32), "w")
    indices = numpy_helper.from_array(np.array([0, 5, 9], np.int64), "w_idx")
    g = h.make_graph(
        [h.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 3])],
        sparse_initializer=[h.make_sparse_tensor(values, indices, [4, 3])],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    (layer,) = inspect_model(m).layers
    # dense 4*3 = 12 params; stored 3 float32 values (12 B) + 3 int64 indices (24 B)
    assert (layer.params, layer.weight_bytes, layer.macs) == (12, 36, 1 * 3 * 4)
