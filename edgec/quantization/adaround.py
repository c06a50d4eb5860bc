"""AdaRound (Nagel et al., 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization") for one layer.

Round-to-nearest minimises each weight's own error, not the layer's output error. AdaRound keeps the scales and
chooses, per weight, whether to round down or up: ``q = clip(floor(w / s) + h(V), -qmax, qmax)`` with the
rectified sigmoid ``h(V) = clip(sigmoid(V)(ζ - γ) + γ, 0, 1)`` (ζ = 1.1, γ = -0.1), and V is trained with Adam on

    ‖f(W x) - f(W̃ x̂)‖² + λ Σ (1 - |2 h(V) - 1|^β)

where x is the layer's input in the float model, x̂ its input in the partially quantized model (earlier layers
already rounded, activations fake-quantized: the paper's asymmetric reconstruction), f the fused ReLU when the
layer has one, and β anneals from 20 to 2 after a warm-up without the regulariser, which pushes every h(V) to 0 or
1. The rounding is then fixed (h ≥ 0.5 → up) and the integers replace the nearest-rounded ones: same scales, same
storage, and each integer differs from nearest rounding by at most one step.

Layers are matrix products here: a Conv's input is unfolded into patches (im2col) at a random subset of output
positions, a Gemm/MatMul input is used as is, so one layer is a (rows × K) · (K × O) product and an iteration costs
a few small matrix products on CPU, whatever the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["AdaRoundResult", "adaround_matrix", "conv_patches"]

ZETA, GAMMA = 1.1, -0.1


@dataclass
class AdaRoundResult:
    q: np.ndarray            # the chosen integers, (O, K), as float64 holding whole numbers
    mse_nearest: float       # mean squared output error (per output element) with round-to-nearest
    mse_adaround: float      # the same with the chosen rounding
    changed: float           # share of weights rounded the other way than nearest
    iterations: int
    rows: int


def conv_patches(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int], pads: tuple[int, int, int, int],
                 dilations: tuple[int, int], positions: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """im2col rows (N·positions × C·kh·kw, C-major as ``W.reshape(O, -1)``) at random output positions.

    Returns the rows, the flat output-position index of each row per sample (N × positions) and the output size.
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    top, left, bottom, right = pads
    t = F.pad(t, (left, right, top, bottom))
    cols = F.unfold(t, kernel, dilation=dilations, stride=strides)  # N × (C·kh·kw) × L
    n, k, length = cols.shape
    out_h = (t.shape[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    out_w = (t.shape[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    take = min(positions, length)
    idx = np.stack([rng.choice(length, take, replace=False) for _ in range(n)])  # N × take
    rows = torch.gather(cols, 2, torch.from_numpy(idx)[:, None, :].expand(n, k, take))  # N × K × take
    return rows.permute(0, 2, 1).reshape(-1, k).numpy(), idx, (out_h, out_w)


def adaround_matrix(w: np.ndarray, scale: np.ndarray, qmax: int, x_quant: np.ndarray, y_float: np.ndarray,
                    bias: np.ndarray | None, relu: bool, iterations: int = 1000, batch_rows: int = 512,
                    reg: float = 1.0, beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2,
                    lr: float = 1e-2, seed: int = 0) -> AdaRoundResult:
    """Optimise the rounding of ``w`` (O × K, float), per-element ``scale`` (O × K), for ``y ≈ f(x̂ W̃ᵀ + b)``.

    ``x_quant``: the layer's inputs from the partially quantized model (rows × K); ``y_float``: the float model's
    layer outputs at the same rows (rows × O, before the ReLU). The reconstruction term is normalised by its value
    at nearest rounding and the regulariser is averaged over the weights, so ``reg`` (λ) weighs "every weight still
    undecided" against "the output error nearest rounding makes", whatever the layer's size and output scale.
    Runs on one thread: the steps are small matrix products, where more threads only add synchronisation.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _optimise(torch, w, scale, qmax, x_quant, y_float, bias, relu, iterations, batch_rows, reg, beta,
                         warmup, lr, seed)
    finally:
        torch.set_num_threads(threads)


def _optimise(torch, w, scale, qmax, x_quant, y_float, bias, relu, iterations, batch_rows, reg, beta, warmup, lr,
              seed) -> AdaRoundResult:

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    W = torch.from_numpy(w.astype(np.float32))
    S = torch.from_numpy(np.broadcast_to(scale, w.shape).astype(np.float32))
    X = torch.from_numpy(np.ascontiguousarray(x_quant, dtype=np.float32))
    Y = torch.from_numpy(np.ascontiguousarray(y_float, dtype=np.float32))
    B = torch.zeros(w.shape[0]) if bias is None else torch.from_numpy(bias.astype(np.float32).reshape(-1))
    if relu:
        Y = torch.relu(Y)
    floor = torch.floor(W / S)
    nearest = torch.clamp(torch.round(W / S), -qmax, qmax)
    rest = (W / S - floor).clamp(1e-4, 1 - 1e-4)  # start at h(V) = the fractional part: soft == the float weight
    V = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)

    def h(v: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def output(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = x @ (q * S).t() + B
        return torch.relu(out) if relu else out

    def mse(q: torch.Tensor) -> float:
        with torch.no_grad():
            return float(torch.mean((output(q, X) - Y) ** 2))

    mse_nearest = mse(nearest)
    norm = max(mse_nearest, 1e-20)
    opt = torch.optim.Adam([V], lr=lr)
    rows = X.shape[0]
    start_reg = int(warmup * iterations)
    for it in range(iterations):
        sel = torch.randint(rows, (min(batch_rows, rows),), generator=gen)
        q = torch.clamp(floor + h(V), -qmax, qmax)
        rec = torch.mean((output(q, X[sel]) - Y[sel]) ** 2) / norm
        loss = rec
        if it >= start_reg:
            progress = (it - start_reg) / max(iterations - start_reg, 1)
            b = beta[1] + 0.5 * (beta[0] - beta[1]) * (1 + math.cos(math.pi * progress))
            loss = loss + reg * torch.mean(1 - torch.abs(2 * h(V) - 1) ** b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        chosen = torch.clamp(floor + (h(V) >= 0.5).float(), -qmax, qmax)
    mse_ada = mse(chosen)
    if mse_ada > mse_nearest:  # never worse than nearest on the data it was fitted to
        chosen, mse_ada = nearest, mse_nearest
    changed = float(torch.mean((chosen != nearest).float()))
    return AdaRoundResult(chosen.numpy().astype(np.float64), mse_nearest, mse_ada, changed, iterations, rows)
