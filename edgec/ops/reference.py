"""numpy references: the arithmetic edgec's binary and adder ops mean, for tests and future kernels.

Binary conv semantics (``edgec::BinaryConv``), decided once and shared by the PyTorch modules, the ONNX function
body, these references and any kernel:

    s = sign(x + shift)            sign(v) = +1 for v ≥ 0, −1 for v < 0 (never 0)
    y[o] = alpha[o] · Σ_{c,i,j} s_pad[c, i, j] · sign(w[o, c, i, j]) + b[o]

where ``s_pad`` is ``s`` padded with **+1** (Larq Compute Engine's ``pad_values=1``, its fast path): a padded
position is an activation bit 0, so a bit-packed kernel pads its packed input with zero words and needs no
per-position correction. The integer sum equals K − 2·popcount(xnor-complement), K = C·kh·kw.
Adder conv (``edgec::AdderConv``, AdderNet): y[o] = −Σ |x_pad − w[o]| + b[o], x padded with 0.
"""

from __future__ import annotations

import numpy as np

from edgec.ops.packing import pack_signs, popcount


def _pairs(v, n: int = 2) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _windows(x: np.ndarray, kh: int, kw: int, strides, dilations) -> np.ndarray:
    """[N, C, OH, OW, kh, kw] views of an already padded NCHW tensor."""
    sh, sw = _pairs(strides)
    dh, dw = _pairs(dilations)
    n, c, h, w = x.shape
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False)


def _pad(x: np.ndarray, pads, value: float) -> np.ndarray:
    """ONNX pads order: (top, left, bottom, right)."""
    t, l, b, r = _pairs(pads, 4)
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def sign(x: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(x) < 0, np.float32(-1), np.float32(1)).astype(np.float32)


def binary_conv_integer(x: np.ndarray, w: np.ndarray, shift: np.ndarray | None = None, strides=1, pads=0,
                        dilations=1) -> np.ndarray:
    """The integer part Σ s·sign(w) by the sign-dot definition (int64), padding with +1."""
    shift = np.zeros(x.shape[1], np.float32) if shift is None else shift
    s = _pad(sign(x + shift.reshape(1, -1, 1, 1)), pads, 1.0)
    win = _windows(s, w.shape[2], w.shape[3], strides, dilations)
    return np.einsum("ncijkl,ockl->noij", win.astype(np.int64), sign(w).astype(np.int64))


def binary_conv_xnor(x: np.ndarray, w: np.ndarray, shift: np.ndarray | None = None, strides=1, pads=0,
                     dilations=1, word_bits: int = 64) -> np.ndarray:
    """The same integer part computed as a kernel does: both sides bit-packed along channels, xor, popcount.

    Σ = K − 2·popcount(x_bits xor w_bits), K = C·kh·kw real positions (the pad bits are 0 on both sides)."""
    shift = np.zeros(x.shape[1], np.float32) if shift is None else shift
    c, kh, kw = w.shape[1:]
    s = _pad(sign(x + shift.reshape(1, -1, 1, 1)), pads, 1.0)
    xb = pack_signs(s, axis=1, word_bits=word_bits)  # [N, Wd, H, W]
    wb = pack_signs(w, axis=1, word_bits=word_bits)  # [O, Wd, kh, kw]
    win = _windows(xb, kh, kw, strides, dilations)  # [N, Wd, OH, OW, kh, kw]
    n, _, oh, ow = win.shape[:4]
    out = np.empty((n, w.shape[0], oh, ow), np.int64)
    for o in range(w.shape[0]):
        xor = np.bitwise_xor(win, wb[o][None, :, None, None, :, :])
        out[:, o] = c * kh * kw - 2 * popcount(xor).sum(axis=(1, 4, 5))
    return out


def binary_conv(x: np.ndarray, w: np.ndarray, alpha: np.ndarray, shift: np.ndarray | None = None,
                bias: np.ndarray | None = None, strides=1, pads=0, dilations=1) -> np.ndarray:
    """Float output of ``edgec::BinaryConv``: alpha[o] · integer part + bias[o]."""
    y = binary_conv_integer(x, w, shift, strides, pads, dilations).astype(np.float32)
    y = y * alpha.reshape(1, -1, 1, 1).astype(np.float32)
    return y + (0 if bias is None else bias.reshape(1, -1, 1, 1).astype(np.float32))


def binary_gemm(x: np.ndarray, w: np.ndarray, alpha: np.ndarray, shift: np.ndarray | None = None,
                bias: np.ndarray | None = None) -> np.ndarray:
    """``edgec::BinaryGemm``: x [N, K], w [O, K] → alpha · sign(x + shift) · sign(w)ᵀ + bias."""
    shift = np.zeros(x.shape[1], np.float32) if shift is None else shift
    integer = sign(x + shift).astype(np.int64) @ sign(w).astype(np.int64).T
    return integer.astype(np.float32) * alpha.astype(np.float32) + (0 if bias is None else bias)


def adder_conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, strides=1, pads=0,
               dilations=1) -> np.ndarray:
    """``edgec::AdderConv`` (AdderNet): y[n,o,i,j] = −Σ_{c,k,l} |x_pad[n,c,·,·] − w[o,c,k,l]| + bias[o]."""
    win = _windows(_pad(x.astype(np.float64), pads, 0.0), w.shape[2], w.shape[3], strides, dilations)
    out = np.stack([-np.abs(win - w[o][None, :, None, None].astype(np.float64)).sum(axis=(1, 4, 5))
                    for o in range(w.shape[0])], axis=1)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out.astype(np.float32)
