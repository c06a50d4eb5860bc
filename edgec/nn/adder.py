"""AdderNet's adder convolution: y = −Σ|x − w| (+ b), L1 distance instead of cross-correlation.

Training follows the paper (Chen et al., CVPR 2020): the gradient for W is the full-precision X − W (not the sign
the L1 norm would give), the gradient for X is HardTanh(W − X), and each layer's weight update is rescaled by an
adaptive learning rate η·√k/‖ΔW‖₂ (k = the number of weights) because adder layers' gradients are tiny and vary
across layers. The output's magnitude grows with C·kh·kw, so a BatchNorm should follow every adder layer, as in the
paper. Zero padding, as the paper's unfold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgec.nn.binary import conv_pads


class _AdderFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        o, c, kh, kw = weight.shape
        cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # [N, K, L]
        w2 = weight.reshape(o, -1)
        out = -(cols.unsqueeze(1) - w2.view(1, o, -1, 1)).abs().sum(dim=2)  # [N, O, L]
        ctx.save_for_backward(cols, w2)
        ctx.geometry = (x.shape, (kh, kw), stride, padding, dilation, weight.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        cols, w2 = ctx.saved_tensors
        x_shape, kernel, stride, padding, dilation, w_shape = ctx.geometry
        # dY/dW = X − W (full precision): Σ_{n,l} g·cols − w·Σ g, as matrix products
        grad_w = torch.einsum("nol,nkl->ok", grad, cols) - w2 * grad.sum(dim=(0, 2)).unsqueeze(1)
        # dY/dX = HardTanh(W − X)
        diff = (w2.view(1, *w2.shape, 1) - cols.unsqueeze(1)).clamp(-1.0, 1.0)  # [N, O, K, L]
        grad_cols = (grad.unsqueeze(2) * diff).sum(dim=1)
        grad_x = F.fold(grad_cols, x_shape[2:], kernel, dilation=dilation, padding=padding, stride=stride)
        return grad_x, grad_w.reshape(w_shape), None, None, None


class AdderConv2d(nn.Conv2d):
    """A Conv2d (group 1) computing −Σ|x − w|; ``eta`` is the adaptive learning-rate factor (0 disables it)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = False, eta: float = 0.2) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 1, bias)
        conv_pads(self.padding)
        self.eta = eta
        self.weight.register_hook(self._adaptive_lr)

    def _adaptive_lr(self, grad: torch.Tensor) -> torch.Tensor:
        """ΔW ← η·√k·ΔW/‖ΔW‖₂ (AdderNet eq. 13): the optimizer's own rate then applies on top."""
        if not self.eta:
            return grad
        return grad * (self.eta * math.sqrt(grad.numel()) / (grad.norm() + 1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        out = _AdderFunction.apply(x, self.weight, self.stride, self.padding, self.dilation)
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        y = out.view(n, -1, oh, ow)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
