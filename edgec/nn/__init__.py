"""PyTorch training modules for edgec's binary and adder ops (issue 19); importing this imports torch.

``BinaryConv2d``/``BinaryLinear`` (sign weights × per-channel scale, sign activations with a straight-through
estimator and a learnable per-channel shift before the sign), ``AdderConv2d`` (AdderNet), ``convert`` to swap a
float model's layers, ``distill`` to recover accuracy from the float teacher on unlabeled data, and
``export_onnx`` to write the model in edgec's portable ONNX function form.
"""

from edgec.nn.adder import AdderConv2d
from edgec.nn.binary import BinaryConv2d, BinaryLinear
from edgec.nn.convert import convert, distill
from edgec.nn.export import export_onnx

__all__ = ["AdderConv2d", "BinaryConv2d", "BinaryLinear", "convert", "distill", "export_onnx"]
