"""Retrain-free recovery: refit each pruned layer's consumer so it reproduces the unpruned model's output.

After channels are removed, a Conv/Gemm that read them computes something else. As in ThiNet and He et al.'s
channel pruning, its weights (and a bias, added if it had none) are re-solved by least squares so that, on
calibration inputs *flowing through the pruned model*, its output matches what the original layer produced on the
original model: ``min ‖[X 1]θ − Y‖² + λ‖θ − θ₀‖²``. Layers are refitted in graph order and each one sees the inputs
that earlier refits produce, so errors are compensated instead of accumulating. The ridge term pulls towards the
current (kept) weights θ₀, which keeps under-determined fits (a wide Gemm with few samples) sane.
Rows are sampled output positions (64 per image, as ThiNet samples locations), so 256 images suffice.

Residual stages: a Conv whose output (through an optional BatchNormalization, or with BN already folded into it)
is added to a skip connection is fitted so that the *sum* matches: its target is
``(original Add output − current skip − BN shift) / BN scale``, so the error the skip path carries (it was
pruned and refitted too) is compensated by the residual branch instead of being passed on. Every dense Conv/Gemm
from the first pruned consumer on is refitted (a layer whose own input channels were not cut still sees
perturbed activations), the Gemm head included. The ridge term does not touch the bias.
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


def _consumers(model: ir.Model, analysis: Analysis, keep: dict[int, np.ndarray],
               only: set[str] | None = None) -> list[_Layer]:
    """Dense Conv (group 1) and Gemm layers from the first one reading a pruned group on, in graph order
    (``only``: just these nodes)."""
    pruned = set(keep)
    first_readers = {layer.node for layer in analysis.mac_layers
                     if layer.inp and any(g in pruned for g, _ in layer.inp)}
    out_keep = {layer.node: kept_outputs(analysis, layer.out, keep) for layer in analysis.mac_layers}
    out, started = [], False
    for node in model.graph:
        started = started or node.name in first_readers
        if not started or node.op_type not in ("Conv", "Gemm") or (only is not None and node.name not in only):
            continue
        if node.op_type == "Conv" and node.attributes.get_int("group", 1) != 1:
            continue
        out.append(_Layer(node, out_keep.get(node.name)))
    return out


def kept_outputs(analysis: Analysis, layout: tuple[tuple[int, int], ...], keep: dict[int, np.ndarray]
                 ) -> np.ndarray | None:
    """Indices of the output channels a layer keeps (``layout``: its output's (group, channels) slices), or None
    where none of its groups is pruned or they cannot be told apart. A grouped conv's output lists one slice per
    block of its one group; a conv whose channels were split between groups (a Split or a channel Pad after it,
    pruning/groups.py) lists one slice per piece."""
    gids = {g for g, _ in layout}
    if not gids & set(keep):
        return None
    if len(gids) == 1:
        gid = gids.pop()
        return analysis.groups[gid].channel_indices(keep[gid])
    kept, offset = [], 0
    for gid, channels in layout:
        group = analysis.groups[gid]
        if group.fold != 1 or channels != group.size:
            return None
        kept.append(offset + (np.asarray(keep[gid]) if gid in keep else np.arange(channels)))
        offset += channels
    return np.concatenate(kept)


def _residual(model: ir.Model, node: ir.Node) -> tuple[ir.Node | None, ir.Node, int] | None:
    """``(bn, add, skip input index)`` when ``node``'s output reaches an Add through at most one BN."""
    value, bn = node.outputs[0], None
    users = [u for u, _ in value.uses()]
    if len(users) == 1 and users[0].op_type == "BatchNormalization":
        bn = users[0]
        value = bn.outputs[0]
        users = [u for u, _ in value.uses()]
    if len(users) != 1 or users[0].op_type != "Add" or value in (v for v in model.graph.outputs):
        return None
    add = users[0]
    if len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return None
    skip = 1 if add.inputs[0] is value else 0
    if add.inputs[skip] is None or add.inputs[skip].const_value is not None:
        return None
    return bn, add, skip


def _bn_affine(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    values = [bn.inputs[i].const_value for i in range(1, 5)]
    if any(v is None for v in values):
        return None
    gamma, beta, mean, var = (v.numpy().astype(np.float64) for v in values)
    scale = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
    return scale, beta - mean * scale


def conv_positions(n_samples: int, start: int, count: int, ho: int, wo: int, per_image: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampled output positions (sample, row, col) of samples start..start+count, the same for every call."""
    rng = np.random.default_rng(seed)
    k = min(per_image, ho * wo)
    flat = np.stack([rng.choice(ho * wo, k, replace=False) for _ in range(n_samples)])[start: start + count]
    n = np.repeat(np.arange(count), k)
    return n, flat.reshape(-1) // wo, flat.reshape(-1) % wo


def conv_attrs(node: ir.Node, kernel: tuple[int, int]) -> dict[str, list[int]] | None:
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if len(kernel) != 2:
        return None
    return {"strides": list(node.attributes.get_ints("strides", [1, 1])),
            "pads": list(node.attributes.get_ints("pads", [0, 0, 0, 0])),
            "dilations": list(node.attributes.get_ints("dilations", [1, 1]))}


def conv_patches(x: np.ndarray, n: np.ndarray, r: np.ndarray, c: np.ndarray, kernel: tuple[int, int],
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


RIDGES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# rows per unknown from which a fit takes the tiny ridge. At 2, EfficientNet-Lite0's wide 1×1 convs (~6.6 rows per
# unknown at 128 crops) got 1e-5 and came out ill-conditioned: 54.4 % top-1 agreement at 30 % MACs and outputs that
# onnxruntime's own optimisation levels disagree on by 1.6e-3; with the hold-out choice below 10: 68.2 %, verify
# PASS. The embedded and wide models' convs have 14-150 rows per unknown: unchanged.
WELL_DETERMINED = 10


def _fit(a1: np.ndarray, y: np.ndarray, theta0: np.ndarray, ridge: float, floor: np.ndarray | None,
         iterations: int) -> np.ndarray:
    """One ridge fit on ``a1`` (= [A 1]); see :func:`_solve`."""
    gram = a1.T @ a1
    d = gram.shape[0] - 1
    lam = ridge * float(np.trace(gram[:d, :d])) / max(d, 1) + 1e-12
    penalty = np.full(d + 1, lam)
    penalty[-1] = 0.0
    inverse = np.linalg.inv(gram + np.diag(penalty) + 1e-12 * np.eye(d + 1))
    prior = penalty[:, None] * theta0
    theta = inverse @ (a1.T @ y + prior)
    if floor is not None:
        hidden = y <= floor
        for _ in range(iterations):
            theta = inverse @ (a1.T @ np.where(hidden, np.minimum(a1 @ theta, floor), y) + prior)
    return theta


def _loss(a1: np.ndarray, theta: np.ndarray, y: np.ndarray, floor: np.ndarray | None) -> float:
    """Squared error of the layer's output as the next layer sees it: below a ReLU floor only overshoot counts."""
    pred = a1 @ theta
    err = pred - y if floor is None else np.where(y <= floor, np.maximum(pred - floor, 0.0), pred - y)
    return float(np.sum(err * err))


def _solve(a: np.ndarray, y: np.ndarray, theta0: np.ndarray, ridge: float | None, floor: np.ndarray | None = None,
           iterations: int = 20) -> tuple[np.ndarray, float]:
    """Ridge least squares ``min ‖[A 1]θ − Y‖² + λ‖W − W₀‖²`` (the bias row of θ is not penalised); returns θ and
    the λ used.

    ``ridge=None`` picks λ (relative to the mean diagonal of AᵀA) from how well the fit is determined. With at
    least :data:`WELL_DETERMINED` rows per unknown (a conv fitted on sampled positions), a tiny λ: pulling towards
    the layer's weights before pruning only keeps the refit from compensating (1e-3 cost 3 pt of top-1 on the
    embedded model at 50 % MACs against 1e-5, and picking λ by the layer's own hold-out error chose 1e-2 and lost
    11 pt: the layer error is not what the next layers need). With fewer (a wide Gemm head on a few hundred
    samples) the fit would memorise its samples, so λ is chosen by hold-out: fitted on the first 3/4 of the rows
    (whole samples: rows are grouped by sample), scored on the last quarter, refitted on all rows with the best.

    With ``floor`` (the value at or below which a ReLU after the layer outputs zero, per row and column; −inf
    where there is none), a target at or below its floor only asks the prediction to stay at or below it too:
    the ReLU hides everything under the floor, so fitting those values exactly wastes the layer's few degrees of
    freedom on what the next layer never sees. Solved by alternating projections (each step re-targets the
    clipped rows to ``min(prediction, floor)`` and re-solves with the same matrix), which never increases the
    hinge loss ``Σ_{y>t}(ŷ−y)² + Σ_{y≤t} max(ŷ−t, 0)²``."""
    a1 = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    if ridge is None and len(a1) >= WELL_DETERMINED * a1.shape[1]:
        ridge = 1e-5
    if ridge is None:
        cut = (3 * len(a1)) // 4
        part = (lambda v: None if v is None else v[:cut]), (lambda v: None if v is None else v[cut:])
        if cut < 8 or len(a1) - cut < 2:
            ridge = 1e-3
        else:
            errors = {r: _loss(a1[cut:], _fit(a1[:cut], y[:cut], theta0, r, part[0](floor), iterations), y[cut:],
                               part[1](floor)) for r in RIDGES}
            ridge = min(RIDGES, key=errors.__getitem__)
    return _fit(a1, y, theta0, ridge, floor, iterations), ridge


def _relu_floor(model: ir.Model, node: ir.Node, residual: tuple | None, affine, skip: np.ndarray | None,
                rows: int) -> np.ndarray | None:
    """The per-(row, channel) value of the layer's own output at or below which the ReLU after it (directly,
    after a BatchNormalization, or after the residual Add) outputs zero; −inf where the sign of a BN scale makes
    the bound an upper one. ``None`` when no ReLU follows."""
    def relu_after(value: ir.Value) -> bool:
        users = [u for u, _ in value.uses()]
        return (len(users) == 1 and users[0].op_type == "Relu"
                and value not in tuple(model.graph.outputs))

    if residual:
        bn, add, _ = residual
        if not relu_after(add.outputs[0]):
            return None
        scale, shift = affine if affine is not None else (np.ones(skip.shape[1]), np.zeros(skip.shape[1]))
        base = -skip - shift
    else:
        value, users = node.outputs[0], [u for u, _ in node.outputs[0].uses()]
        bn_affine = None
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            bn_affine = _bn_affine(users[0])
            if bn_affine is None:
                return None
            value = users[0].outputs[0]
        if not relu_after(value):
            return None
        channels = node.inputs[1].const_value.shape[0]
        scale, shift = bn_affine if bn_affine is not None else (np.ones(channels), np.zeros(channels))
        base = np.broadcast_to(-shift, (rows, channels))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, base / np.where(scale == 0, 1.0, scale), -np.inf)


def _rel_err(a: np.ndarray, theta: np.ndarray, y: np.ndarray, floor: np.ndarray | None = None) -> float:
    a1 = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    return float(np.sqrt(_loss(a1, theta, y, floor)) / max(np.linalg.norm(y), 1e-30))


def reconstruct(original: onnx.ModelProto, model: ir.Model, analysis: Analysis, keep: dict[int, np.ndarray],
                calib: np.ndarray, per_image: int = 64, ridge: float | None = None, seed: int = 0,
                only: set[str] | None = None, relu_aware: bool = True) -> list[dict[str, Any]]:
    """Refit the consumers of pruned channels in ``model`` (in place) towards ``original``; one report per layer."""
    layers = _consumers(model, analysis, keep, only)
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
            attrs = conv_attrs(node, kernel)
            if attrs is None or node.attributes.get_int("group", 1) != 1:
                report.append({"layer": node.name, "refit": False, "why": "padding mode or layout not handled"})
                continue
            y_name = node.outputs[0].name
            presliced = False
            ho_wo: dict[str, tuple[int, int]] = {}

            def reduce_y(name: str, y: np.ndarray, start: int) -> np.ndarray:
                n, r, c = conv_positions(n_samples, start, len(y), y.shape[2], y.shape[3], per_image, layer_seed)
                ho_wo["hw"] = y.shape[2:]
                return y[n, :, r, c]

            residual = _residual(model, node)
            affine = _bn_affine(residual[0]) if residual and residual[0] is not None else None
            if residual and (residual[0] is None or affine is not None):
                bn, add, skip_index = residual
                add_name, skip_name = add.outputs[0].name, add.inputs[skip_index].name
                target_sum = capture(original, [add_name], calib, reduce_y)[add_name]
                skip = capture(ir.serde.serialize_model(model), [skip_name], calib, reduce_y)[skip_name]
                if layer.out_keep is not None:
                    target_sum = target_sum[:, layer.out_keep]
                if skip.shape != target_sum.shape:
                    residual = None
            if residual and (residual[0] is None or affine is not None):
                scale, shift = affine if affine is not None else (np.ones(skip.shape[1]), np.zeros(skip.shape[1]))
                target = (target_sum.astype(np.float64) - skip - shift) / np.where(scale == 0, 1.0, scale)
                presliced = True
                floor = _relu_floor(model, node, residual, affine, skip, len(target)) if relu_aware else None
            else:
                target = capture(original, [y_name], calib, reduce_y)[y_name]
                floor = _relu_floor(model, node, None, None, None, len(target)) if relu_aware else None
            ho, wo = ho_wo["hw"]

            def reduce_x(name: str, x: np.ndarray, start: int) -> np.ndarray:
                n, r, c = conv_positions(n_samples, start, len(x), ho, wo, per_image, layer_seed)
                return conv_patches(x, n, r, c, kernel, attrs)

            current = ir.serde.serialize_model(model)
            a = capture(current, [node.inputs[0].name], calib, reduce_x)[node.inputs[0].name].astype(np.float64)
            w_mat = w.reshape(w.shape[0], -1).T
        else:  # Gemm
            presliced, floor = False, None
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
        if layer.out_keep is not None and not presliced:
            y = y[:, layer.out_keep]
        bias = (inits[node.inputs[2].name].const_value.numpy().astype(np.float64).reshape(-1)
                if has_bias else np.zeros(w_mat.shape[1]))
        if bias.size != w_mat.shape[1]:
            report.append({"layer": node.name, "refit": False, "why": "bias does not broadcast per channel"})
            continue
        theta0 = np.concatenate([w_mat, bias[None, :]], axis=0)
        theta, lam = _solve(a, y, theta0, ridge, floor)
        before, after = _rel_err(a, theta0, y, floor), _rel_err(a, theta, y, floor)
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
                       "rel_error": [round(before, 4), round(after, 4)], "ridge": lam, **({"target": "residual sum"}
                                                                           if presliced else {})})
    return report
