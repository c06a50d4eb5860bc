"""Binary and adder ops (issue 19): bit packing, numpy references, the ONNX function form in onnxruntime, and the
edgec.nn training modules exported to it."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.errors import EdgecError
from edgec.ops import functions as fn
from edgec.ops import reference as ref
from edgec.ops.packing import pack_signs, popcount, unpack_signs

RNG = np.random.default_rng(19)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """onnxruntime without graph rewrites: it would fold alpha into the conv weights and round differently."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _one_node(op: str, x: np.ndarray, inits: dict[str, np.ndarray], out_rank: int, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", *inits], ["y"], domain=fn.DOMAIN, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * out_rank)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = fn.add_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("channels", [1, 7, 9, 31, 33, 63, 65, 100])
@pytest.mark.parametrize("word_bits", [8, 32, 64])
def test_pack_unpack_round_trip_odd_channels(channels, word_bits):
    x = RNG.standard_normal((3, channels, 2, 3)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # sign(0) is +1
    packed = pack_signs(x, axis=1, word_bits=word_bits)
    assert packed.shape == (3, -(-channels // word_bits), 2, 3) and packed.dtype.itemsize * 8 == word_bits
    np.testing.assert_array_equal(unpack_signs(packed, channels, axis=1), np.where(x < 0, -1.0, 1.0))
    # padding bits are 0 (+1) and the negative count is the popcount
    assert popcount(packed).sum() == (x < 0).sum()
    # the 8-bit bytes, read little-endian, are the 32/64-bit words
    if word_bits > 8 and channels % word_bits == 0:
        as_bytes = pack_signs(x, axis=1, word_bits=8)
        np.testing.assert_array_equal(np.ascontiguousarray(np.moveaxis(as_bytes, 1, -1)).view(packed.dtype),
                                      np.moveaxis(packed, 1, -1))


GEOMETRIES = [(1, [1, 1, 1, 1], 1), (2, [1, 0, 2, 1], 1), (1, [2, 2, 2, 2], 2), (3, [0, 0, 0, 0], 1)]


@pytest.mark.parametrize("strides,pads,dilation", GEOMETRIES)
def test_xnor_popcount_equals_sign_dot(strides, pads, dilation):
    x = RNG.standard_normal((2, 37, 9, 8)).astype(np.float32)
    w = RNG.standard_normal((5, 37, 3, 3)).astype(np.float32)
    shift = (RNG.standard_normal(37) * 0.3).astype(np.float32)
    dot = ref.binary_conv_integer(x, w, shift, strides, pads, dilation)
    # padding is +1: a window over the corner counts the padded taps as +1 activations
    s = np.where(x + shift.reshape(1, -1, 1, 1) < 0, -1, 1)
    if pads[0] and pads[1] and dilation == 1 and strides == 1:
        corner = (s[0, :, :2, :2] * np.sign(w[0, :, 1:, 1:] + 1e-30)).sum() + np.where(
            w[0] < 0, -1, 1)[:, 0, :].sum() + np.where(w[0] < 0, -1, 1)[:, 1:, 0].sum()
        assert dot[0, 0, 0, 0] == corner
    for word_bits in (32, 64):
        np.testing.assert_array_equal(ref.binary_conv_xnor(x, w, shift, strides, pads, dilation, word_bits), dot)


@pytest.mark.parametrize("strides,pads,dilation", GEOMETRIES)
def test_function_form_equals_references(strides, pads, dilation):
    x = RNG.standard_normal((2, 13, 9, 8)).astype(np.float32)
    w = RNG.standard_normal((6, 13, 3, 3)).astype(np.float32)
    shift = (RNG.standard_normal(13) * 0.3).astype(np.float32)
    attrs = {"strides": [strides] * 2, "pads": pads, "dilations": [dilation] * 2}
    # integer part: exact (alpha 1, bias 0)
    ones, zeros = np.ones(6, np.float32), np.zeros(6, np.float32)
    model = _one_node("BinaryConv", x, {"w": pack_signs(w), "a": ones, "s": shift, "b": zeros}, 4, **attrs)
    got = _session(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, ref.binary_conv_integer(x, w, shift, strides, pads, dilation))
    # scaled and biased: the same float arithmetic (one multiply, one add)
    alpha, bias = np.abs(w).mean(axis=(1, 2, 3)), RNG.standard_normal(6).astype(np.float32)
    model = _one_node("BinaryConv", x, {"w": pack_signs(w), "a": alpha, "s": shift, "b": bias}, 4, **attrs)
    np.testing.assert_array_equal(_session(model).run(None, {"x": x})[0],
                                  ref.binary_conv(x, w, alpha, shift, bias, strides, pads, dilation))
    # adder: within 1e-4 relative (float sums in another order)
    model = _one_node("AdderConv", x, {"w": w, "b": bias}, 4, **attrs)
    got = _session(model).run(None, {"x": x})[0]
    want = ref.adder_conv(x, w, bias, strides, pads, dilation)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # inlining (what edgec compile does before TVM) changes nothing
    inlined = fn.inline_functions(model)
    assert not inlined.functions and all(n.domain == "" for n in inlined.graph.node)
    np.testing.assert_array_equal(_session(inlined).run(None, {"x": x})[0], got)


def test_binary_gemm_function_form():
    x = RNG.standard_normal((3, 21)).astype(np.float32)
    w = RNG.standard_normal((4, 21)).astype(np.float32)
    shift = (RNG.standard_normal(21) * 0.3).astype(np.float32)
    alpha, bias = np.abs(w).mean(axis=1), RNG.standard_normal(4).astype(np.float32)
    model = _one_node("BinaryGemm", x, {"w": pack_signs(w), "a": alpha, "s": shift, "b": bias}, 2)
    np.testing.assert_array_equal(_session(model).run(None, {"x": x})[0], ref.binary_gemm(x, w, alpha, shift, bias))


# ---------------------------------------------------------------------------------------------- edgec.nn

torch = pytest.importorskip("torch")


def _float_net():
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 13, 3, padding=1, stride=2), nn.BatchNorm2d(13), nn.ReLU(),
                         nn.Conv2d(13, 5, 3, padding=(1, 2)), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(),
                         nn.Linear(5 * 4 * 6, 21), nn.ReLU(), nn.Linear(21, 10)).eval()


@pytest.fixture(scope="session")
def trained():
    """Both kinds converted from one float net, distilled a few steps on random unlabeled data, and exported."""
    from edgec.nn import convert, distill, export_onnx

    teacher = _float_net()
    out = {}
    for to in ("binary", "adder"):
        student = convert(copy.deepcopy(teacher), to=to)
        for module in student.modules():
            if hasattr(module, "shift"):
                torch.nn.init.normal_(module.shift, std=0.3)
        losses = distill(student, teacher, torch.randn(128, 1, 8, 8), steps=6, batch_size=32)
        out[to] = (student.eval(), export_onnx(student, torch.randn(1, 1, 8, 8)), losses)
    return out


def test_convert_swaps_middle_layers(trained):
    from edgec.nn import AdderConv2d, BinaryConv2d, BinaryLinear

    binary = [type(m).__name__ for m in trained["binary"][0] if hasattr(m, "weight") and m.weight.dim() in (2, 4)
              and not isinstance(m, torch.nn.BatchNorm2d)]
    assert binary == ["Conv2d", "BinaryConv2d", "BinaryConv2d", "BinaryLinear", "Linear"]
    adder = [m for m in trained["adder"][0] if isinstance(m, (AdderConv2d, torch.nn.Conv2d))]
    assert [type(m).__name__ for m in adder] == ["Conv2d", "AdderConv2d", "Conv2d"]  # convs only: the last conv stays
    assert not any(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in trained["adder"][0])
    for to in ("binary", "adder"):
        losses = trained[to][2]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("to,ops", [("binary", ["BinaryConv", "BinaryConv", "BinaryGemm"]),
                                    ("adder", ["AdderConv"])])
def test_exported_function_form_equals_module(trained, to, ops):
    module, proto, _ = trained[to]
    assert [n.op_type for n in proto.graph.node if n.domain == fn.DOMAIN] == ops
    assert {f.name for f in proto.functions} == set(ops)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    session = _session(proto)
    for i in range(len(x)):
        got = session.run(None, {session.get_inputs()[0].name: x[i:i + 1].numpy()})[0]
        with torch.no_grad():
            want = module(x[i:i + 1]).numpy()
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_binary_layer_export_is_exact():
    """One BinaryConv2d: onnxruntime's output is the module's, bit for bit (integer part × alpha + bias)."""
    from edgec.nn import BinaryConv2d, BinaryLinear, export_onnx

    torch.manual_seed(1)
    for layer, shape in ((BinaryConv2d(11, 7, 3, stride=2, padding=1), (2, 11, 9, 7)),
                         (BinaryLinear(19, 6), (3, 19))):
        torch.nn.init.normal_(layer.shift, std=0.5)
        x = torch.randn(*shape)
        proto = export_onnx(layer.eval(), x, opset=18)  # a graph of only edgec ops: torch converts no lower
        got = _session(proto).run(None, {_session(proto).get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_array_equal(got, layer(x).numpy())
            integer = layer.integer(x).numpy()
        assert np.array_equal(integer, np.round(integer))
    w = layer.weight.detach().numpy()
    np.testing.assert_array_equal(integer, ref.binary_gemm(x.numpy(), w, np.ones(6, np.float32),
                                                           layer.shift.detach().numpy()))


def test_binary_ste_and_adder_gradients():
    from edgec.nn import AdderConv2d
    from edgec.nn.binary import sign_ste

    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = sign_ste(x)
    y.sum().backward()
    assert y.tolist() == [-1, -1, 1, 1, 1] and x.grad.tolist() == [0, 1, 1, 1, 0]
    layer = AdderConv2d(3, 4, 3, padding=1, eta=0)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = layer(x)
    np.testing.assert_allclose(out.detach().numpy(), ref.adder_conv(x.detach().numpy(),
                                                                   layer.weight.detach().numpy(), None, 1, 1),
                               rtol=1e-5, atol=1e-4)
    g = torch.randn_like(out)
    out.backward(g)
    cols = torch.nn.functional.unfold(x.detach(), 3, padding=1)  # [N, K, L]
    w2 = layer.weight.detach().reshape(4, -1)
    want_w = torch.einsum("nol,nokl->ok", g.reshape(2, 4, -1), cols.unsqueeze(1) - w2.view(1, 4, -1, 1))
    np.testing.assert_allclose(layer.weight.grad.reshape(4, -1).numpy(), want_w.numpy(), rtol=1e-4, atol=1e-4)
    want_cols = (g.reshape(2, 4, 1, -1) * (w2.view(1, 4, -1, 1) - cols.unsqueeze(1)).clamp(-1, 1)).sum(1)
    want_x = torch.nn.functional.fold(want_cols, (5, 5), 3, padding=1)
    np.testing.assert_allclose(x.grad.numpy(), want_x.numpy(), rtol=1e-4, atol=1e-4)
    # adaptive learning rate: the update's norm is eta·sqrt(k) whatever the raw gradient's scale
    scaled = AdderConv2d(3, 4, 3, padding=1, eta=0.2)
    scaled(torch.randn(2, 3, 5, 5)).sum().mul(1e-3).backward()
    assert abs(float(scaled.weight.grad.norm()) - 0.2 * np.sqrt(scaled.weight.numel())) < 1e-3


def _adder_reference(x, w, g, stride, padding, dilation):
    """The first, straightforward AdderConv2d (one [N, O, K, L] tensor each way): output, grad_x, grad_w."""
    import torch.nn.functional as F

    o = w.shape[0]
    cols = F.unfold(x, w.shape[2:], dilation=dilation, padding=padding, stride=stride)  # [N, K, L]
    w2 = w.reshape(o, -1)
    out = -(cols.unsqueeze(1) - w2.view(1, o, -1, 1)).abs().sum(dim=2)  # [N, O, L]
    grad_w = torch.einsum("nol,nkl->ok", g, cols) - w2 * g.sum(dim=(0, 2)).unsqueeze(1)
    diff = (w2.view(1, *w2.shape, 1) - cols.unsqueeze(1)).clamp(-1.0, 1.0)
    grad_cols = (g.unsqueeze(2) * diff).sum(dim=1)
    grad_x = F.fold(grad_cols, x.shape[2:], w.shape[2:], dilation=dilation, padding=padding, stride=stride)
    return out, grad_x, grad_w.reshape(w.shape)


@pytest.mark.parametrize("block", [1 << 18, 50])  # one block; many blocks, the last one partial
@pytest.mark.parametrize("shape,kernel,stride,padding,dilation", [
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 5, 9, 8), (3, 2), (2, 2), (1, 0), (1, 1)),
    ((2, 4, 11, 10), (3, 3), (2, 1), (2, 2), (2, 1)),
    ((1, 2, 5, 5), (1, 1), (1, 1), (0, 0), (1, 1)),
])
def test_adder_blocked_matches_reference(monkeypatch, block, shape, kernel, stride, padding, dilation):
    """The blocked _AdderFunction gives the straightforward implementation's output and both gradients."""
    from edgec.nn import adder

    monkeypatch.setattr(adder, "_BLOCK_FLOATS", block)
    gen = torch.Generator().manual_seed(sum(shape) + block)
    x = torch.randn(*shape, generator=gen).requires_grad_()
    w = (torch.randn(5, shape[1], *kernel, generator=gen) * 0.7).requires_grad_()  # |w − x| on both sides of 1
    out = adder._AdderFunction.apply(x, w, stride, padding, dilation)
    g = torch.randn(out.shape, generator=gen)
    out.backward(g)
    with torch.no_grad():
        want, want_x, want_w = _adder_reference(x, w, g, stride, padding, dilation)
    for got, ref_ in ((out.detach(), want), (x.grad, want_x), (w.grad, want_w)):
        assert got.shape == ref_.shape
        np.testing.assert_allclose(got.numpy(), ref_.numpy(), rtol=1e-5, atol=1e-5 * float(ref_.abs().max()))


def test_convert_bad_input():
    from edgec.nn import convert

    with pytest.raises(EdgecError, match="to='ternary'"):
        convert(_float_net(), to="ternary")
    with pytest.raises(EdgecError, match="no layer to convert"):
        convert(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()), to="adder")
