"""Latency budget (HFP-style): prune until the model, measured on the target, runs within ``--latency-ms``.

MACs are a poor proxy for time: a conv's latency moves in steps with the channel blocking TVM picks, and small
layers are dominated by fixed costs. So a per-layer latency table is *measured*: for every Conv/Gemm whose channels
a prunable group changes, and every combination of the candidate keep counts of the groups it touches (~25/50/75 %
on the ``round_to`` grid, the floor, all; one group at a time when the grid is larger than ``MAX_POINTS``), a
one-layer ONNX model with that layer's shapes and attributes is timed by the budget's timer, which the caller
passes in (:class:`edgec.toolchain.latency_timer.CompileTimer`: compiled with edgec for the target, timed on the
device with rounds interleaved over all models, median); pruning itself compiles and runs nothing. The whole
unpruned model is timed with them. A pruned model's latency is predicted as

    whole model + Σ_layers (layer at its kept counts − layer whole)

The table is cached in a JSON file (entries keyed by layer shapes, attributes and target; the whole model by its
hash), so a second run compiles nothing new. Latency is *not* assumed monotone: on untuned x86 schedules a conv
with 24 channels can be slower than with 32, and the search sees that.

Keep counts are chosen from the grid to meet the budget with the least loss: the sensitivity table (output error
with each group pruned alone) when calibration data is given, else the criterion's scores of the removed channels
(normalised per group, as the MACs greedy uses); exhaustive over the grid when small, greedy otherwise. One-layer
timings miss what happens between layers in the whole model (layout transforms when neighbouring convs pick
different channel blockings), so the choice is verified: the ``VERIFY_TOP`` least-loss options are compiled whole
and timed next to the unpruned model, the least-loss one measured within budget wins, and if none is, the budget
the table is asked for is tightened by how much it under-predicted and the next options are tried
(``VERIFY_ROUNDS`` rounds), else the closest measured option is reported in the error.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from edgec.errors import EdgecError
from edgec.pruning.budget import Budget, LatencyTimer, min_keep
from edgec.pruning.groups import Analysis

__all__ = ["candidates", "build_table", "predict", "allocate"]

CACHE_VERSION = 1
MAX_POINTS = 36         # a layer touching groups with more count combinations is measured one group at a time
VERIFY_TOP = 4          # least-loss options compiled whole and timed to check the table's choice
VERIFY_ROUNDS = 3       # rounds of (choose by the table, compile and time whole), the budget tightened each time


def candidates(analysis: Analysis, budget: Budget) -> dict[int, list[int]]:
    """Keep counts considered for every prunable group: ~25/50/75 % on the round_to grid, the floor, and all."""
    from edgec.pruning.sensitivity import levels

    return {g.id: sorted({*levels(g.size, min_keep(g, budget), budget.round_to), g.size})
            for g in analysis.prunable()}


# ------------------------------------------------------------------------------------------ one-layer models

def _layer_spec(model: ir.Model, analysis: Analysis, layer) -> dict[str, Any] | None:
    """What a one-layer model of ``layer`` needs: op, input shape, weight shape, attributes (None: not modelled)."""
    node = next((n for n in model.graph if n.name == layer.node), None)
    if node is None or layer.op not in ("Conv", "Gemm"):
        return None
    x_shape = analysis.shapes.get(node.inputs[0].name)
    w = node.inputs[1]
    if x_shape is None or w is None or w.const_value is None or any(not isinstance(d, int) for d in x_shape):
        return None
    attrs = {}
    for name, attr in node.attributes.items():
        value = attr.value
        attrs[name] = list(value) if isinstance(value, (list, tuple)) else value
    return {"op": layer.op, "x": list(x_shape), "w": list(w.const_value.shape), "attrs": attrs,
            "bias": len(node.inputs) > 2 and node.inputs[2] is not None}


def _channels(segments, kept: dict[int, int], size: dict[int, int]) -> int:
    return sum(n // size[g] * kept.get(g, size[g]) for g, n in segments)


def _variant(spec: dict[str, Any], layer, kept: dict[int, int], size: dict[int, int]) -> dict[str, Any]:
    """The spec with the channel counts of ``kept`` (groups not named stay whole)."""
    co = _channels(layer.out, kept, size)
    x, w, attrs = list(spec["x"]), list(spec["w"]), dict(spec["attrs"])
    if spec["op"] == "Conv":
        group = int(attrs.get("group", 1))
        if not layer.inp:  # depthwise: input channels follow the output channels
            x[1], w[0], attrs["group"] = co, co, co
        else:
            ci = _channels(layer.inp, kept, size)
            x[1], w[0], w[1] = ci, co, ci // group
    else:  # Gemm: (N, K) x W; transB says whether W is (M, K)
        ci = _channels(layer.inp, kept, size) if layer.inp else x[1]
        x[1] = ci
        if int(attrs.get("transB", 0)):
            w = [co, ci]
        else:
            w = [ci, co]
    return {**spec, "x": x, "w": w, "attrs": attrs}


def _key(spec: dict[str, Any], target: str) -> str:
    return json.dumps({"target": target, **spec}, sort_keys=True)


def _onnx_of(spec: dict[str, Any]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(spec["w"]).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["X", "W"]
    if spec["bias"]:
        m = spec["w"][0] if spec["op"] == "Conv" or int(spec["attrs"].get("transB", 0)) else spec["w"][1]
        inits.append(numpy_helper.from_array(np.zeros(m, np.float32), "B"))
        inputs.append("B")
    node = helper.make_node(spec["op"], inputs, ["Y"], **spec["attrs"])
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, spec["x"])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return onnx.shape_inference.infer_shapes(proto)


# ------------------------------------------------------------------------------------------ the table

def _model_key(proto: onnx.ModelProto, target: str) -> str:
    return "model:" + target + ":" + hashlib.sha1(proto.SerializeToString()).hexdigest()


def _layer_points(touched: list[int], cands: dict[int, list[int]], size: dict[int, int]) -> list[tuple[int, ...]]:
    """Keep-count combinations to measure for a layer: the full grid of the groups it touches when small (a conv's
    input and output counts interact), else each group alone (the others whole)."""
    grid = [cands[g] for g in touched]
    if math.prod(len(c) for c in grid) <= MAX_POINTS:
        return list(itertools.product(*grid))
    full = tuple(size[g] for g in touched)
    points = {full}
    for i, g in enumerate(touched):
        for k in cands[g]:
            points.add(full[:i] + (k,) + full[i + 1:])
    return sorted(points)


def build_table(model: ir.Model, analysis: Analysis, cands: dict[int, list[int]], timer: LatencyTimer,
                cache: str | Path | None = None) -> dict[str, Any]:
    """Measure (or read from ``cache``) every layer at the candidate counts of the groups it touches.

    Returns ``{"model_ms": whole model, "layers": [{"node", "groups": [gid], "full": (k...), "ms": {(k...): ms}}],
    "compiled": number of models compiled and timed now}``.
    """
    size = {g.id: g.size for g in analysis.groups}
    entries: dict[str, float] = {}
    if cache is not None and Path(cache).is_file():
        try:
            data = json.loads(Path(cache).read_text())
            if data.get("version") == CACHE_VERSION:
                entries = {k: float(v) for k, v in data.get("entries", {}).items()}
        except (OSError, ValueError):
            entries = {}
    layers = []
    wanted: set[str] = set()
    for layer in analysis.mac_layers:
        touched = sorted({g for g, _ in (*layer.out, *layer.inp) if g in cands})
        spec = _layer_spec(model, analysis, layer) if touched else None
        if spec is None:
            continue
        keys = {}
        for point in _layer_points(touched, cands, size):
            key = _key(_variant(spec, layer, dict(zip(touched, point)), size), timer.where)
            keys[point] = key
            wanted.add(key)
        layers.append((layer, touched, keys))
    model_proto = ir.serde.serialize_model(model)
    mkey = _model_key(model_proto, timer.where)
    todo = {key: _onnx_of(json.loads(key)) for key in sorted(wanted) if key not in entries}
    if mkey not in entries:
        todo[mkey] = model_proto
    if todo:
        entries.update(timer(todo))
        if cache is not None:
            from edgec.toolchain.writes import staged_file

            with staged_file(Path(cache), final=False) as tmp:
                tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1))
    out_layers = [{"node": layer.node, "groups": touched, "full": tuple(size[g] for g in touched),
                   "ms": {point: entries[key] for point, key in keys.items()}} for layer, touched, keys in layers]
    return {"target": timer.target, "model_ms": entries[mkey], "layers": out_layers, "compiled": len(todo)}


def _layer_ms(layer: dict[str, Any], point: tuple[int, ...]) -> float:
    """A layer's time at ``point``: measured when on its grid, else each group's measured factor (the others whole)
    multiplied, counts off the grid rounded up to the next measured one."""
    if point in layer["ms"]:
        return layer["ms"][point]
    full = layer["full"]
    whole = layer["ms"][full]
    factor = 1.0
    for i, k in enumerate(point):
        alone = {p[i]: ms for p, ms in layer["ms"].items() if all(p[j] == full[j] for j in range(len(p)) if j != i)}
        above = [x for x in sorted(alone) if x >= k] or [full[i]]
        factor *= alone[above[0]] / max(whole, 1e-12)
    return whole * factor


def predict(table: dict[str, Any], kept: dict[int, int]) -> float:
    """Predicted whole-model ms when group ``g`` keeps ``kept[g]`` channels (the others whole): the measured whole
    model plus every touched layer's measured change."""
    delta = 0.0
    for layer in table["layers"]:
        point = tuple(kept.get(g, f) for g, f in zip(layer["groups"], layer["full"]))
        if point != layer["full"]:
            delta += _layer_ms(layer, point) - layer["ms"][layer["full"]]
    return table["model_ms"] + delta


# ------------------------------------------------------------------------------------------ allocation

def score_losses(analysis: Analysis, scores: dict[int, np.ndarray], cands: dict[int, list[int]]
                 ) -> dict[int, dict[int, float]]:
    """Loss proxy without data: the summed normalised scores of the removed channels (least important first)."""
    out = {}
    for gid, ks in cands.items():
        s = scores[gid]
        mean = float(np.mean(s))
        asc = np.sort(s / mean if mean > 0 else s)
        size = analysis.groups[gid].size
        out[gid] = {k: float(np.sum(asc[: size - k])) for k in ks}
    return out


def allocate(analysis: Analysis, table: dict[str, Any], losses: dict[int, dict[int, float]],
             cands: dict[int, list[int]], budget_ms: float, max_combinations: int = 200_000, top: int = 1,
             exclude: set[frozenset] | None = None) -> list[dict[int, int]]:
    """Keep counts (from the grid) whose predicted latency is within ``budget_ms``, least summed loss first (up to
    ``top`` of them): exhaustive over the grid when it is small, else one, by greedy steps with the least loss per
    saved millisecond. Groups left whole are omitted."""
    gids = list(cands)
    size = {g.id: g.size for g in analysis.groups}
    floor = {gid: min(cands[gid]) for gid in gids}
    if math.prod(len(cands[g]) for g in gids) <= max_combinations:
        feasible: list[tuple[float, float, dict[int, int]]] = []
        fastest = (math.inf, floor)
        for combo in itertools.product(*(cands[g] for g in gids)):
            kept = dict(zip(gids, combo))
            ms = predict(table, kept)
            fastest = min(fastest, (ms, kept), key=lambda x: x[0])
            loss = sum(losses[g][k] for g, k in zip(gids, combo))
            if ms <= budget_ms and frozenset((g, k) for g, k in kept.items() if k < size[g]) not in (exclude or ()):
                feasible.append((loss, ms, kept))
        if not feasible:
            _unreachable(table, budget_ms, *fastest, analysis)
        feasible.sort(key=lambda x: (x[0], x[1]))
        return [{g: k for g, k in kept.items() if k < size[g]} for _, _, kept in feasible[:top]]
    best_reach = predict(table, floor)
    if best_reach > budget_ms:
        _unreachable(table, budget_ms, best_reach, floor, analysis)
    kept = {gid: size[gid] for gid in gids}
    ms = predict(table, kept)
    while ms > budget_ms:
        step: tuple[float, int, int, float] | None = None
        for gid in gids:
            smaller = [k for k in cands[gid] if k < kept[gid]]
            if not smaller:
                continue
            k = max(smaller)
            trial = predict(table, {**kept, gid: k})
            saved = ms - trial  # may be negative: latency is not monotone in the channel count
            cost = (losses[gid][k] - losses[gid][kept[gid]]) / max(min(saved, ms - budget_ms), 1e-9)
            if step is None or cost < step[0]:
                step = (cost, gid, k, trial)
        if step is None:  # at the floor everywhere, which meets the budget
            kept, ms = dict(floor), best_reach
            break
        _, gid, k, ms = step
        kept[gid] = k
    return [{g: k for g, k in kept.items() if k < size[g]}]


def _unreachable(table: dict[str, Any], budget_ms: float, closest: float, kept: dict[int, int],
                 analysis: Analysis) -> None:
    counts = ", ".join(f"{analysis.groups[g].name}: {k}" for g, k in kept.items() if k < analysis.groups[g].size)
    raise EdgecError(f"cannot reach {budget_ms:g} ms on {table['target']}: the closest is {closest:.3f} ms predicted "
                     f"(unpruned {table['model_ms']:.3f} ms measured; with {counts or 'nothing pruned'})",
                     f"ask for at least {math.ceil(closest * 1000) / 1000:g} ms, or allow more pruning "
                     "(max_group_ratio, a smaller round_to)")


def summary(table: dict[str, Any], analysis: Analysis) -> list[dict[str, Any]]:
    """JSON-able table: per layer, the groups it touches and ``{"k1xk2": ms}`` per measured combination."""
    return [{"layer": layer["node"], "groups": [analysis.groups[g].name for g in layer["groups"]],
             "ms": {"x".join(map(str, p)): round(v, 5) for p, v in sorted(layer["ms"].items())}}
            for layer in table["layers"]]
