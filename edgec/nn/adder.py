"""AdderNet's adder convolution: y = −Σ|x − w| (+ b), L1 distance instead of cross-correlation.

Training follows the paper (Chen et al., CVPR 2020): the gradient for W is the full-precision X − W (not the sign
the L1 norm would give), the gradient for X is HardTanh(W − X), and each layer's weight update is rescaled by an
adaptive learning rate η·√k/‖ΔW‖₂ (k = the number of weights) because adder layers' gradients are tiny and vary
across layers. Train with SGD, as the paper does: Adam's per-weight normalization largely cancels the rescaling,
and the embedded MnistResNet's AdderNet then learns far slower (bench/binary.py: 62 % test after 12 epochs against
97.5 % with SGD). The output's magnitude grows with C·kh·kw, so a BatchNorm should follow every adder layer, as in
the paper. Zero padding, as the paper's unfold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgec.nn.binary import conv_pads


# Rows of the unfolded input processed per step: a [rows, O, K] block of about this many floats (1 MiB) stays in
# cache, so the |x − w| and HardTanh(W − X) terms never exist for the whole batch at once (N·O·K·L floats: 460 MB
# for one 16-channel 28×28 layer at batch 64).
_BLOCK_FLOATS = 1 << 18


def _block_rows(out_channels: int, k: int) -> int:
    """Rows per block so that one block's [rows, O, K] temporary holds about _BLOCK_FLOATS floats."""
    return max(1, _BLOCK_FLOATS // (out_channels * k))


class _AdderFunction(torch.autograd.Function):
    """−Σ|x − w| over unfolded patches → [N, O, L]; gradients as the paper (full-precision X − W, HardTanh(W − X)).

    The patches are kept as rows ([N·L, K]) and processed in blocks of rows, so memory stays O(N·L·K) and each
    block's [rows, O, K] temporary stays in cache. Measured on 1 thread (busy Zen 3): one training step of the
    embedded MnistResNet with 4 adder convs, batch 64, takes 0.54–0.65 s against 8.8–9.1 s for one [N, O, K, L]
    tensor each way (the previous form, kept as the test's reference).
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        n = x.shape[0]
        o, c, kh, kw = weight.shape
        cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # [N, K, L]
        k, length = cols.shape[1], cols.shape[2]
        rows = cols.transpose(1, 2).reshape(n * length, k)  # [N·L, K] (a copy: contiguous rows)
        w2 = weight.reshape(o, k)
        out = rows.new_empty(n * length, o)
        step = _block_rows(o, k)
        for i in range(0, len(rows), step):
            torch.sum((rows[i:i + step].unsqueeze(1) - w2).abs_(), dim=2, out=out[i:i + step])
        ctx.save_for_backward(rows, w2)
        ctx.geometry = (x.shape, (kh, kw), stride, padding, dilation, weight.shape)
        return out.neg_().view(n, length, o).transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad):
        rows, w2 = ctx.saved_tensors
        x_shape, kernel, stride, padding, dilation, w_shape = ctx.geometry
        n, o, length = grad.shape
        g = grad.transpose(1, 2).reshape(n * length, o)  # [N·L, O]
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            # dY/dW = X − W (full precision): Σ_{n,l} g·x − w·Σ g, as one matrix product
            grad_w = (g.t() @ rows - w2 * g.sum(dim=0).unsqueeze(1)).reshape(w_shape)
        if ctx.needs_input_grad[0]:
            # dY/dX = HardTanh(W − X), summed over the output channels with g: per row a [1, O] × [O, K] product
            grad_rows = torch.empty_like(rows)
            step = _block_rows(o, rows.shape[1])
            for i in range(0, len(rows), step):
                diff = (w2 - rows[i:i + step].unsqueeze(1)).clamp_(-1.0, 1.0)  # [rows, O, K]
                torch.bmm(g[i:i + step].unsqueeze(1), diff, out=grad_rows[i:i + step].unsqueeze(1))
            grad_cols = grad_rows.view(n, length, -1).transpose(1, 2)
            grad_x = F.fold(grad_cols, x_shape[2:], kernel, dilation=dilation, padding=padding, stride=stride)
        return grad_x, grad_w, None, None, None


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
