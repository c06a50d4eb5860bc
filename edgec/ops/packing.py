"""Bit-packing of ±1 tensors along the input-channel axis.

Layout (the one every binary kernel and the ONNX function form share): a value's *bit is 1 when it is −1*
(the float sign bit, so packing a float is taking its sign) and 0 when it is +1; channel ``c`` lives in word
``c // bits`` at bit ``c % bits`` (least significant bit first). Bytes concatenated little-endian are therefore
exactly the 32/64-bit words, so an ONNX ``uint8`` initializer is the same memory as the kernel's words.
A channel count that is not a multiple of the word leaves padding bits, always 0 (= +1); ``unpack_signs`` drops
them given the true channel count, and a kernel corrects for them exactly by counting only real channels
(K − 2·popcount(x xor w) with K the real reduction length, pad bits equal in x and w so xor is 0 there).
"""

from __future__ import annotations

import numpy as np

_WORD_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def sign_bits(values: np.ndarray) -> np.ndarray:
    """1 where ``values < 0`` (−1), 0 elsewhere (+1, zero included: sign(0) is +1 throughout edgec)."""
    return (np.asarray(values) < 0).astype(np.uint8)


def pack_signs(values: np.ndarray, axis: int = 1, word_bits: int = 8) -> np.ndarray:
    """Pack ``values`` (any real tensor; only their signs count) along ``axis`` into ``word_bits``-bit words.

    The packed axis gets length ``ceil(C / word_bits)``; padding bits are 0 (+1).
    """
    if word_bits not in _WORD_DTYPES:
        raise ValueError(f"word_bits must be one of {sorted(_WORD_DTYPES)}, not {word_bits}")
    bits = np.moveaxis(sign_bits(values), axis, -1)
    channels = bits.shape[-1]
    words = -(-channels // word_bits)
    padded = np.zeros(bits.shape[:-1] + (words * word_bits,), dtype=np.uint8)
    padded[..., :channels] = bits
    packed_bytes = np.packbits(padded, axis=-1, bitorder="little")  # bit c%8 of byte c//8
    out = np.ascontiguousarray(packed_bytes).view(np.dtype(_WORD_DTYPES[word_bits]).newbyteorder("<"))
    return np.moveaxis(out.astype(_WORD_DTYPES[word_bits]), -1, axis)


def unpack_signs(packed: np.ndarray, channels: int, axis: int = 1) -> np.ndarray:
    """The ±1 float32 tensor ``pack_signs`` packed, with ``channels`` real channels along ``axis``."""
    packed = np.asarray(packed)
    word_bits = packed.dtype.itemsize * 8
    if channels > packed.shape[axis] * word_bits or channels <= 0:
        raise ValueError(f"{channels} channels do not fit {packed.shape[axis]} words of {word_bits} bits")
    words = np.ascontiguousarray(np.moveaxis(packed, axis, -1)).astype(packed.dtype.newbyteorder("<"))
    as_bytes = words.view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :channels]
    return np.moveaxis(1.0 - 2.0 * bits.astype(np.float32), -1, axis).astype(np.float32)


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per element of an unsigned integer array (int64 result)."""
    words = np.asarray(words)
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape + (words.dtype.itemsize,))
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1, dtype=np.int64)
