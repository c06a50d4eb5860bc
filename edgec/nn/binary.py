"""Binary (1-bit) layers: what ``edgec::BinaryConv``/``BinaryGemm`` compute, trainable.

Forward (exactly :mod:`edgec.ops.reference`): s = sign(x + shift) with sign(0) = +1, padding counted as +1,
y = alpha[o] · Σ s·sign(w) + b[o], alpha = mean|W[o]| (XNOR-Net's per-output-channel scale).
Backward: the weight sign passes its gradient straight through; the activation sign passes it where
|x + shift| ≤ 1 (the clipped straight-through estimator of BinaryNet). ``shift`` is a learnable per-input-channel
offset before the sign: SD-BNN's activation self-distribution, which lets each channel choose how many of its
activations turn +1. The shift starts data-dependent: on the first training batch it is set to minus each
channel's mean input, so a layer fed by a ReLU (all inputs ≥ 0, all signs +1 with a zero shift) starts with
informative signs; a model loaded from a state dict keeps its trained shift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sign(x: torch.Tensor) -> torch.Tensor:
    """±1 with sign(0) = +1 (no zeros: every value is one bit)."""
    return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) forward, gradient 1 where |x| ≤ 1 and 0 elsewhere."""
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (sign(x) - clipped).detach()


def sign_identity(w: torch.Tensor) -> torch.Tensor:
    """sign(w) forward, the identity's gradient (latent float weights keep learning)."""
    return w + (sign(w) - w).detach()


def scale_of(weight: torch.Tensor) -> torch.Tensor:
    """alpha[o] = mean |W[o]|."""
    return weight.abs().flatten(1).mean(dim=1)


class _ShiftInit(nn.Module):
    """Mixin: set ``shift`` to −(per-channel mean of the input) on the first forward in training mode."""

    def _init_shift(self, x: torch.Tensor) -> None:
        if self.training and not bool(self.shift_initialized):
            with torch.no_grad():
                dims = [d for d in range(x.dim()) if d != 1]
                self.shift.copy_(-x.mean(dim=dims))
                self.shift_initialized.fill_(True)


def conv_pads(padding) -> list[int]:
    """nn.Conv2d's padding → ONNX pads (top, left, bottom, right)."""
    if isinstance(padding, str):
        raise ValueError(f"padding='{padding}' is not supported by BinaryConv2d; give the amounts")
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return [ph, pw, ph, pw]


class BinaryConv2d(_ShiftInit, nn.Conv2d):
    """A Conv2d (group 1) whose weights and input activations are binarized; see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 1, bias)
        conv_pads(self.padding)
        self.shift = nn.Parameter(torch.zeros(in_channels))
        self.register_buffer("shift_initialized", torch.tensor(False))

    def integer(self, x: torch.Tensor) -> torch.Tensor:
        """Σ sign(x + shift)·sign(w) as float (exact integers), padding +1."""
        self._init_shift(x)
        s = sign_ste(x + self.shift.view(1, -1, 1, 1))
        t, left, b, r = conv_pads(self.padding)
        s = F.pad(s, (left, r, t, b), value=1.0)
        return F.conv2d(s, sign_identity(self.weight), None, self.stride, 0, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.integer(x) * scale_of(self.weight).view(1, -1, 1, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


class BinaryLinear(_ShiftInit, nn.Linear):
    """A Linear whose weights and input activations are binarized (``edgec::BinaryGemm``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.shift = nn.Parameter(torch.zeros(in_features))
        self.register_buffer("shift_initialized", torch.tensor(False))

    def integer(self, x: torch.Tensor) -> torch.Tensor:
        self._init_shift(x)
        return F.linear(sign_ste(x + self.shift), sign_identity(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.integer(x) * scale_of(self.weight)
        return y if self.bias is None else y + self.bias
