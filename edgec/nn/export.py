"""Export models holding edgec.nn layers into edgec's portable ONNX form (``edgec::`` ops + their functions).

Each trained layer is frozen into what the ONNX op stores (binary: sign bits packed along input channels as uint8,
alpha, shift, bias; adder: the weight and bias) and exported as a torch custom op (``edgec::binary_conv`` & co.)
that the dynamo exporter translates, through ``custom_translation_table``, into one ``edgec``-domain node; the
op definitions (:mod:`edgec.ops.functions`) are then added as model-local functions, so onnxruntime runs the file.
"""

from __future__ import annotations

import copy
from typing import Sequence

import onnx
import torch
import torch.nn.functional as F
from onnx.defs import OpSchema
from torch import nn

from edgec.nn.adder import AdderConv2d, _AdderFunction
from edgec.nn.binary import BinaryConv2d, BinaryLinear, conv_pads, scale_of
from edgec.ops.functions import DOMAIN, DOMAIN_VERSION, add_functions
from edgec.ops.packing import pack_signs

EXPORT_OPSET = 17


def _unpack(bits: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 packed signs (axis 1) → ±1 float, as the ONNX function body does."""
    shape = [1, 1, 8] + [1] * (bits.dim() - 2)
    pos = torch.arange(8, dtype=torch.uint8).view(shape)
    b = (bits.unsqueeze(2) >> pos) % 2
    b = b.reshape(bits.shape[0], -1, *bits.shape[2:])[:, :channels]
    return 1.0 - 2.0 * b.float()


@torch.library.custom_op("edgec::binary_conv", mutates_args=())
def binary_conv(x: torch.Tensor, bits: torch.Tensor, alpha: torch.Tensor, shift: torch.Tensor, bias: torch.Tensor,
                strides: list[int], pads: list[int], dilations: list[int]) -> torch.Tensor:
    s = torch.where(x + shift.view(1, -1, 1, 1) < 0, -1.0, 1.0)
    s = F.pad(s, (pads[1], pads[3], pads[0], pads[2]), value=1.0)
    y = F.conv2d(s, _unpack(bits, x.shape[1]), None, strides, 0, dilations)
    return y * alpha.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


@binary_conv.register_fake
def _binary_conv_fake(x, bits, alpha, shift, bias, strides, pads, dilations):
    return _conv_shape(x, bits.shape[0], bits.shape[2:], strides, pads, dilations)


@torch.library.custom_op("edgec::binary_gemm", mutates_args=())
def binary_gemm(x: torch.Tensor, bits: torch.Tensor, alpha: torch.Tensor, shift: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
    s = torch.where(x + shift < 0, -1.0, 1.0)
    return (s @ _unpack(bits, x.shape[1]).T) * alpha + bias


@binary_gemm.register_fake
def _binary_gemm_fake(x, bits, alpha, shift, bias):
    return x.new_empty((x.shape[0], bits.shape[0]))


@torch.library.custom_op("edgec::adder_conv", mutates_args=())
def adder_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, strides: list[int], pads: list[int],
               dilations: list[int]) -> torch.Tensor:
    y = _conv_shape(x, weight.shape[0], weight.shape[2:], strides, pads, dilations)
    out = _AdderFunction.apply(x, weight, tuple(strides), (pads[0], pads[1]), tuple(dilations))
    return out.view(y.shape) + bias.view(1, -1, 1, 1)


@adder_conv.register_fake
def _adder_conv_fake(x, weight, bias, strides, pads, dilations):
    return _conv_shape(x, weight.shape[0], weight.shape[2:], strides, pads, dilations)


def _conv_shape(x, out_channels, kernel, strides, pads, dilations) -> torch.Tensor:
    dims = [(x.shape[2 + i] + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
            for i in range(2)]
    return x.new_empty((x.shape[0], out_channels, *dims))


def _schema(name: str, inputs: Sequence[tuple[str, str]], conv: bool) -> OpSchema:
    param = OpSchema.FormalParameter
    attrs = [OpSchema.Attribute(a, OpSchema.AttrType.INTS, "", required=False)
             for a in (("strides", "pads", "dilations") if conv else ())]
    return OpSchema(name, DOMAIN, DOMAIN_VERSION, inputs=[param(n, t) for n, t in inputs],
                    outputs=[param("Y", "T")], type_constraints=[("T", ["tensor(float)"], ""),
                                                                  ("U", ["tensor(uint8)"], "")], attributes=attrs)


_BINARY_INPUTS = [("X", "T"), ("W", "U"), ("alpha", "T"), ("shift", "T"), ("B", "T")]


def _translations() -> dict:
    from onnxscript.values import Op, Opset

    edgec = Opset(DOMAIN, DOMAIN_VERSION)
    conv = Op(edgec, "BinaryConv", _schema("BinaryConv", _BINARY_INPUTS, True))
    gemm = Op(edgec, "BinaryGemm", _schema("BinaryGemm", _BINARY_INPUTS, False))
    adder = Op(edgec, "AdderConv", _schema("AdderConv", [("X", "T"), ("W", "T"), ("B", "T")], True))

    def binary_conv_onnx(x, bits, alpha, shift, bias, strides, pads, dilations):
        return conv(x, bits, alpha, shift, bias, strides=strides, pads=pads, dilations=dilations)

    def binary_gemm_onnx(x, bits, alpha, shift, bias):
        return gemm(x, bits, alpha, shift, bias)

    def adder_conv_onnx(x, weight, bias, strides, pads, dilations):
        return adder(x, weight, bias, strides=strides, pads=pads, dilations=dilations)

    return {torch.ops.edgec.binary_conv.default: binary_conv_onnx,
            torch.ops.edgec.binary_gemm.default: binary_gemm_onnx,
            torch.ops.edgec.adder_conv.default: adder_conv_onnx}


class _Frozen(nn.Module):
    """One trained layer as the ONNX op stores it: the buffers become the node's initializers."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        w = layer.weight.detach().float().cpu()
        bias = layer.bias.detach().float().cpu() if layer.bias is not None else torch.zeros(w.shape[0])
        self.register_buffer("bias", bias.clone())
        if isinstance(layer, AdderConv2d):
            self.kind = "adder"
            self.register_buffer("weight", w.clone())
        else:
            self.kind = "conv" if isinstance(layer, BinaryConv2d) else "gemm"
            self.register_buffer("bits", torch.from_numpy(pack_signs(w.numpy(), axis=1, word_bits=8)))
            self.register_buffer("alpha", scale_of(w).clone())
            self.register_buffer("shift", layer.shift.detach().float().cpu().clone())
        if self.kind != "gemm":
            self.attrs = (list(layer.stride), conv_pads(layer.padding), list(layer.dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "adder":
            return torch.ops.edgec.adder_conv(x, self.weight, self.bias, *self.attrs)
        if self.kind == "conv":
            return torch.ops.edgec.binary_conv(x, self.bits, self.alpha, self.shift, self.bias, *self.attrs)
        return torch.ops.edgec.binary_gemm(x, self.bits, self.alpha, self.shift, self.bias)


def freeze(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every edgec.nn layer replaced by its stored, exportable form."""
    frozen = copy.deepcopy(model).eval().cpu()
    if isinstance(frozen, (BinaryConv2d, BinaryLinear, AdderConv2d)):  # the model is one layer
        return _Frozen(frozen)
    for name, module in list(frozen.named_modules()):
        if isinstance(module, (BinaryConv2d, BinaryLinear, AdderConv2d)):
            parent, _, attr = name.rpartition(".")
            setattr(frozen.get_submodule(parent) if parent else frozen, attr, _Frozen(module))
    return frozen


def export_onnx(model: nn.Module, example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
                input_names: Sequence[str] | None = None, opset: int = EXPORT_OPSET) -> onnx.ModelProto:
    """``model`` as an ONNX model in edgec's function form (checked by onnx's checker); save it with onnx.save."""
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    with torch.no_grad():
        program = torch.onnx.export(freeze(model), args, input_names=list(input_names) if input_names else None,
                                    opset_version=opset, dynamo=True, verbose=False, optimize=True,
                                    custom_translation_table=_translations())
    proto = add_functions(program.model_proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


__all__ = ["export_onnx", "freeze", "binary_conv", "binary_gemm", "adder_conv"]
