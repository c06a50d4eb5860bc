"""Retrain-free recovery: refit each pruned layer's consumer so it reproduces the unpruned model's output.

After channels are removed, a Conv/Gemm that read them computes something else. As in ThiNet and He et al.'s
channel pruning, its weights (and a bias, added if it had none) are re-solved by least squares so that, on
calibration inputs *flowing through the pruned model*, its output matches what the original layer produced on the
original model: ``min ‖[X 1]θ − Y‖² + λ‖θ − θ₀‖²``. Layers are refitted in graph order and each one sees the inputs
that earlier refits produce, so errors are compensated instead of accumulating. The ridge term pulls towards the
current (kept) weights θ₀, which keeps under-determined fits (a wide Gemm with few samples) sane.
Rows are sampled output positions (64 per image, as ThiNet samples locations), so 256 images suffice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec.pruning.calib import capture
from edgec.pruning.groups import Analysis

__all__ = ["reconstruct"]


@dataclasses.dataclass
class _Layer:
    node: ir.Node
    out_keep: np.ndarray | None   # kept output channels of the layer (None: all)


def _consumers(model: ir.Model, analysis: Analysis, keep: dict[int, np.ndarray]) -> list[_Layer]:
    """Dense Conv (group 1) and Gemm layers reading a pruned group, in graph order."""
    pruned = set(keep)
    wanted = {}
    for layer in analysis.mac_layers:
        if layer.inp and any(g in pruned for g, _ in layer.inp):
            out_gid = layer.out[0][0] if len(layer.out) == 1 else None
            wanted[layer.node] = keep.get(out_gid) if out_gid is not None else None
    out = []
    for node in model.graph:
        if node.name in wanted and node.op_type in ("Conv", "Gemm"):
            out.append(_Layer(node, wanted[node.name]))
    return out


def _conv_positions(n_samples: int, start: int, count: int, ho: int, wo: int, per_image: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampled output positions (sample, row, col) of samples start..start+count, the same for every call."""
    rng = np.random.default_rng(seed)
    k = min(per_image, ho * wo)
    flat = np.stack([rng.choice(ho * wo, k, replace=False) for _ in range(n_samples)])[start: start + count]
    n = np.repeat(np.arange(count), k)
    return n, flat.reshape(-1) // wo, flat.reshape(-1) % wo


def _conv_attrs(node: ir.Node, kernel: tuple[int, int]) -> dict[str, list[int]] | None:
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if len(kernel) != 2:
        return None
    return {"strides": list(node.attributes.get_ints("strides", [1, 1])),
            "pads": list(node.attributes.get_ints("pads", [0, 0, 0, 0])),
            "dilations": list(node.attributes.get_ints("dilations", [1, 1]))}


def _patches(x: np.ndarray, n: np.ndarray, r: np.ndarray, c: np.ndarray, kernel: tuple[int, int],
             attrs: dict[str, list[int]]) -> np.ndarray:
    """im2col rows (Cin·kh·kw) of input ``x`` (B×Cin×H×W) at output positions (n, r, c)."""
    (sh, sw), (dh, dw), p = attrs["strides"], attrs["dilations"], attrs["pads"]
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    kh, kw = kernel
    rows = r[:, None] * sh + np.arange(kh)[None, :] * dh            # S×kh
    cols = c[:, None] * sw + np.arange(kw)[None, :] * dw            # S×kw
    patch = xp[n[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]     # S×Cin×kh×kw
    return patch.reshape(len(n), -1)


def _solve(a: np.ndarray, y: np.ndarray, theta0: np.ndarray, ridge: float) -> np.ndarray:
    a = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    gram = a.T @ a
    lam = ridge * float(np.trace(gram)) / gram.shape[0] + 1e-12
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), a.T @ y + lam * theta0)


def _rel_err(a: np.ndarray, theta: np.ndarray, y: np.ndarray) -> float:
    pred = a @ theta[:-1] + theta[-1]
    return float(np.linalg.norm(pred - y) / max(np.linalg.norm(y), 1e-30))


def reconstruct(original: onnx.ModelProto, model: ir.Model, analysis: Analysis, keep: dict[int, np.ndarray],
                calib: np.ndarray, per_image: int = 64, ridge: float = 1e-3, seed: int = 0) -> list[dict[str, Any]]:
    """Refit the consumers of pruned channels in ``model`` (in place) towards ``original``; one report per layer."""
    layers = _consumers(model, analysis, keep)
    inits = model.graph.initializers
    n_samples = len(calib)
    report = []
    for index, layer in enumerate(layers):
        node = layer.node
        w_value = node.inputs[1]
        w = w_value.const_value.numpy().astype(np.float64)
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        layer_seed = seed * 7919 + index
        if node.op_type == "Conv":
            kernel = tuple(w.shape[2:])
            attrs = _conv_attrs(node, kernel)
            if attrs is None or node.attributes.get_int("group", 1) != 1:
                report.append({"layer": node.name, "refit": False, "why": "padding mode or layout not handled"})
                continue
            y_name = node.outputs[0].name
            ho_wo: dict[str, tuple[int, int]] = {}

            def reduce_y(name: str, y: np.ndarray, start: int) -> np.ndarray:
                n, r, c = _conv_positions(n_samples, start, len(y), y.shape[2], y.shape[3], per_image, layer_seed)
                ho_wo["hw"] = y.shape[2:]
                return y[n, :, r, c]

            target = capture(original, [y_name], calib, reduce_y)[y_name]
            ho, wo = ho_wo["hw"]

            def reduce_x(name: str, x: np.ndarray, start: int) -> np.ndarray:
                n, r, c = _conv_positions(n_samples, start, len(x), ho, wo, per_image, layer_seed)
                return _patches(x, n, r, c, kernel, attrs)

            current = ir.serde.serialize_model(model)
            a = capture(current, [node.inputs[0].name], calib, reduce_x)[node.inputs[0].name].astype(np.float64)
            w_mat = w.reshape(w.shape[0], -1).T
        else:  # Gemm
            if node.attributes.get_int("transA", 0) or node.attributes.get_float("alpha", 1.0) != 1.0 \
                    or node.attributes.get_float("beta", 1.0) != 1.0:
                report.append({"layer": node.name, "refit": False, "why": "Gemm with transA/alpha/beta"})
                continue
            y_name = node.outputs[0].name
            target = capture(original, [y_name], calib)[y_name]
            current = ir.serde.serialize_model(model)
            a = capture(current, [node.inputs[0].name], calib)[node.inputs[0].name].astype(np.float64)
            trans_b = node.attributes.get_int("transB", 0)
            w_mat = w.T if trans_b else w
        y = target.astype(np.float64)
        if layer.out_keep is not None:
            y = y[:, layer.out_keep]
        bias = (inits[node.inputs[2].name].const_value.numpy().astype(np.float64).reshape(-1)
                if has_bias else np.zeros(w_mat.shape[1]))
        if bias.size != w_mat.shape[1]:
            report.append({"layer": node.name, "refit": False, "why": "bias does not broadcast per channel"})
            continue
        theta0 = np.concatenate([w_mat, bias[None, :]], axis=0)
        theta = _solve(a, y, theta0, ridge)
        before, after = _rel_err(a, theta0, y), _rel_err(a, theta, y)
        if not after < before:
            report.append({"layer": node.name, "refit": False, "why": "no improvement", "rel_error": before})
            continue
        dtype = w_value.const_value.numpy().dtype
        new_w = theta[:-1].T.reshape(w.shape) if node.op_type == "Conv" else (
            theta[:-1].T if node.attributes.get_int("transB", 0) else theta[:-1])
        w_value.const_value = ir.tensor(np.ascontiguousarray(new_w.astype(dtype)), name=w_value.name)
        new_b = theta[-1].astype(dtype)
        if has_bias:
            b_value = node.inputs[2]
            old_shape = b_value.const_value.shape
            b_value.const_value = ir.tensor(new_b.reshape(tuple(old_shape)), name=b_value.name)
        else:
            b_value = ir.Value(name=f"{w_value.name}_refit_bias", const_value=ir.tensor(new_b))
            b_value.shape, b_value.dtype = ir.Shape(new_b.shape), w_value.dtype
            model.graph.register_initializer(b_value)
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, b_value)
        report.append({"layer": node.name, "refit": True, "rows": int(a.shape[0]), "unknowns": int(a.shape[1] + 1),
                       "rel_error": [round(before, 4), round(after, 4)]})
    return report
