"""ThiNet-style channel selection: drop the channels whose removal changes the *next* layer's output least.

ThiNet (Luo et al. 2017) ranks the input channels of layer i+1 rather than the filters of layer i: channel c's
contribution to a consumer's output at a sampled position is ``z_c = Σ_k p_{c,k} W[:, c, k]`` (its im2col patch
times its slice of the consumer's weights), and removing a set T of channels changes the output by ``Σ_{c∈T} z_c``.
The set is grown greedily, each step adding the channel that keeps ``‖Σ_{c∈T} z_c‖²`` smallest, on calibration
activations. All a step needs is the Gram matrix ``G_cd = Σ ⟨z_c, z_d⟩``, which follows from the patch covariance
``M = PᵀP`` and the weights without materialising z: ``G_cd = Σ_o Σ_kl W[o,c,k] M[(c,k),(d,l)] W[o,d,l]``.

A group (a residual stage, say) is read by several consumers; their Grams are summed, each divided by its
consumer's output energy from the group, so every consumer counts equally. Groups whose consumers are not dense
Conv/Gemm layers (MatMul, unknown) fall back to the L1 criterion. The score of a channel is the (monotone)
relative squared error of the consumers once it and every channel ranked below it are gone, so scores of
different groups are on one scale: "removing these channels costs this much reconstruction error".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.pruning.calib import capture
from edgec.pruning.groups import Analysis

__all__ = ["consumer_grams", "greedy_order", "thinet_scores"]


def _layout_offset(segments: tuple[tuple[int, int], ...], gid: int) -> tuple[int, int] | None:
    """(offset, length*inner) of group ``gid``'s (first) segment in a layer's input layout."""
    offset = 0
    for g, n in segments:
        if g == gid:
            return offset, n
        offset += n
    return None


def consumer_grams(model: ir.Model, analysis: Analysis, calib: np.ndarray, per_image: int = 32,
                   seed: int = 0) -> dict[int, np.ndarray]:
    """Per prunable group: the summed, normalised contribution Gram (size×size) over its dense consumers."""
    from edgec.pruning.reconstruct import _conv_attrs, _conv_positions, _patches

    nodes = {node.name: node for node in model.graph}
    size = {g.id: g.size for g in analysis.groups}
    prunable = {g.id for g in analysis.prunable()}
    plans: list[tuple[Any, ...]] = []
    for index, layer in enumerate(analysis.mac_layers):
        node = nodes.get(layer.node)
        if node is None or not layer.inp or not any(g in prunable for g, _ in layer.inp):
            continue
        w_value = node.inputs[1] if len(node.inputs) > 1 else None
        if w_value is None or w_value.const_value is None:
            continue
        w = w_value.const_value.numpy().astype(np.float64)
        if node.op_type == "Conv" and node.attributes.get_int("group", 1) == 1:
            attrs = _conv_attrs(node, tuple(w.shape[2:]))
            if attrs is None:
                continue
            w3 = w.reshape(w.shape[0], w.shape[1], -1)                  # Cout×Cin×K
            plans.append(("conv", node, layer, w3, attrs, tuple(w.shape[2:]), index))
        elif node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
            wt = w if node.attributes.get_int("transB", 0) else w.T        # Cout×F
            plans.append(("gemm", node, layer, wt, None, None, index))
    if not plans:
        return {}
    n_samples = len(calib)
    out_hw: dict[str, tuple[int, int]] = {}
    for kind, node, *_ in plans:   # output sizes, for the sampled positions
        if kind == "conv":
            out_hw[node.name] = analysis.shapes.get(node.outputs[0].name, (0, 0, 0, 0))[2:]
    grams: dict[int, np.ndarray] = {}
    reducers = {}
    for kind, node, layer, w, attrs, kernel, index in plans:
        name = node.inputs[0].name
        if kind == "conv":
            hw = out_hw[node.name]
            if len(hw) != 2:
                continue

            def reduce(_n: str, x: np.ndarray, start: int, hw=hw, kernel=kernel, attrs=attrs, index=index) -> np.ndarray:
                n, r, c = _conv_positions(n_samples, start, len(x), hw[0], hw[1], per_image, seed + index)
                p = _patches(x, n, r, c, kernel, attrs)
                return p.T @ p if p.size else np.zeros((p.shape[1], p.shape[1]))

        else:
            def reduce(_n: str, x: np.ndarray, start: int) -> np.ndarray:
                x = x.reshape(len(x), -1).astype(np.float64)
                return x.T @ x
        reducers[(node.name, name)] = reduce
    proto = ir.serde.serialize_model(model)
    for kind, node, layer, w, attrs, kernel, index in plans:
        key = (node.name, node.inputs[0].name)
        if key not in reducers:
            continue
        name = node.inputs[0].name
        # capture concatenates per-batch results along axis 0: keep each batch's covariance as one leading slice
        parts = capture(proto, [name], calib, lambda n, x, s, f=reducers[key]: f(n, x, s)[None])[name]
        cov = parts.sum(axis=0)
        for gid, _ in layer.inp:
            if gid not in prunable:
                continue
            where = _layout_offset(layer.inp, gid)
            if where is None:
                continue
            offset, length = where
            inner = length // size[gid]
            if kind == "conv":
                k = w.shape[2]
                wg = w[:, offset: offset + size[gid], :]                              # Cout×C×K
                m = cov.reshape(w.shape[1], k, w.shape[1], k)[offset: offset + size[gid], :,
                                                               offset: offset + size[gid], :]
            else:
                k = inner
                wg = w[:, offset: offset + length].reshape(w.shape[0], size[gid], k)
                m = cov[offset: offset + length, offset: offset + length].reshape(size[gid], k, size[gid], k)
            t = np.einsum("ock,ckdl->ocdl", wg, m, optimize=True)
            g = np.einsum("ocdl,odl->cd", t, wg, optimize=True)
            energy = float(g.sum())
            if energy > 0:
                grams[gid] = grams.get(gid, 0) + g / energy
    return grams


def greedy_order(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ThiNet's greedy removal order, and the squared error ``1ᵀG_TT1`` after each removal."""
    c = gram.shape[0]
    removed = np.zeros(c, dtype=bool)
    cross = np.zeros(c)              # Σ_{t∈T} G[c, t]
    diag = np.diag(gram).copy()
    err, order, errors = 0.0, [], []
    for _ in range(c):
        cost = np.where(removed, np.inf, err + 2.0 * cross + diag)
        i = int(np.argmin(cost))
        err = float(cost[i])
        removed[i] = True
        cross += gram[:, i]
        order.append(i)
        errors.append(err)
    return np.asarray(order), np.asarray(errors)


def thinet_scores(model: ir.Model, analysis: Analysis, calib: np.ndarray, fallback: dict[int, np.ndarray]
                  ) -> dict[int, np.ndarray]:
    """One score per channel (higher = keep) for every prunable group; ``fallback`` where no consumer qualifies."""
    grams = consumer_grams(model, analysis, calib)
    out = {}
    for g in analysis.prunable():
        gram = grams.get(g.id)
        if gram is None:
            out[g.id] = fallback[g.id]
            continue
        order, errors = greedy_order(gram)
        errors = np.maximum.accumulate(np.maximum(errors, 0.0))
        score = np.empty(g.size)
        score[order] = errors + 1e-9 * (np.arange(g.size) + 1)   # strictly increasing in the removal order
        out[g.id] = score
    return out
