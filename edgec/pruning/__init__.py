"""Structured channel pruning on ONNX graphs (issue 5): dependency groups, criteria, budgets, rewrite, recovery.

``prune(model, ...)`` is the one entry point; :mod:`edgec.passes.prune_channels` wraps it as a pipeline pass and
``edgec prune`` / ``edgec compile --prune`` call it. Like every pass it knows ONNX only, never TVM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.pruning.budget import Budget, estimate_macs, select
from edgec.pruning.calib import MAX_SAMPLES, capture, check_calibration
from edgec.pruning.criteria import CRITERIA, NEEDS_DATA, score_group
from edgec.pruning.groups import Analysis, analyze, describe
from edgec.pruning.rewrite import apply_selection

__all__ = ["Budget", "CRITERIA", "analyze", "describe", "plan", "prune", "importance"]


def importance(model: ir.Model, analysis: Analysis, criterion: str, calib: np.ndarray | None
               ) -> dict[int, np.ndarray]:
    """Score every channel of every prunable group with ``criterion`` (calibration data for ``similarity``)."""
    if criterion not in CRITERIA:
        raise EdgecError(f"unknown pruning criterion '{criterion}'", f"use one of: {', '.join(CRITERIA)}")
    weights = {name: v.const_value.numpy() for name, v in model.graph.initializers.items()
               if v.const_value is not None}
    features = None
    groups = analysis.prunable()
    if criterion == "thinet":
        if calib is None:
            score_group(criterion, groups[0], weights, None)  # raises the helpful error
        from edgec.pruning.thinet import thinet_scores

        fallback = {g.id: score_group("l1", g, weights, None) for g in groups}
        return thinet_scores(model, analysis, calib, fallback)
    if criterion in NEEDS_DATA:
        if calib is None:
            score_group(criterion, groups[0], weights, None) if groups else None  # raises the helpful error
        names = [name for g in groups for name, _, inner in g.values if inner == 1]
        rng = np.random.default_rng(0)

        def sample(name: str, a: np.ndarray, start: int) -> np.ndarray:
            if a.ndim <= 2:
                return a
            flat = a.reshape(a.shape[0], a.shape[1], -1)
            k = min(64, flat.shape[2])
            return flat[:, :, rng.choice(flat.shape[2], k, replace=False)]

        captured = capture(ir.serde.serialize_model(model), names, calib[:64], sample)
        features = captured.get
    return {g.id: score_group(criterion, g, weights, features) for g in groups}


def plan(model: ir.Model, budget: Budget, criterion: str, calib: np.ndarray | None, reconstruct: bool
         ) -> tuple[Analysis, dict[int, np.ndarray], list[dict[str, Any]] | None]:
    """Which channels every group keeps (``model`` is not changed): the analysis, ``{group id: kept indices}`` and
    the sensitivity table when the budget is allocated by sensitivity."""
    original = ir.serde.serialize_model(model)
    analysis = analyze(model)
    if not analysis.prunable():
        reasons = sorted({r for g in analysis.groups for r in g.reasons})
        raise EdgecError("no channel of this model can be pruned",
                         f"every group is blocked: {'; '.join(reasons[:3])}")
    scores = importance(model, analysis, criterion, calib)
    if budget.macs is not None and budget.allocation == "sensitivity":
        from edgec.pruning.sensitivity import allocate, measure, summary

        table = measure(original, analysis, scores, budget, calib, reconstruct)
        kept_counts = allocate(analysis, table, budget)
        keep = {gid: np.sort(np.argsort(-scores[gid], kind="stable")[:k]) for gid, k in kept_counts.items()
                if k < analysis.groups[gid].size}
        return analysis, keep, summary(table, analysis)
    return analysis, select(analysis, scores, budget), None


def prune(model: ir.Model, budget: Budget, criterion: str = "l1", calib: np.ndarray | None = None,
          reconstruct: bool = False, calib_samples: int = MAX_SAMPLES) -> dict[str, Any]:
    """Prune ``model`` in place; returns a JSON-able report (groups, per-layer before/after, recovery)."""
    from edgec.pruning.reconstruct import reconstruct as refit
    from edgec.toolchain.inspect import inspect_model

    budget.validate()
    if criterion not in CRITERIA:
        raise EdgecError(f"unknown pruning criterion '{criterion}'", f"use one of: {', '.join(CRITERIA)}")
    if calib is not None:
        calib = check_calibration(model, calib, calib_samples)
    elif reconstruct or criterion in NEEDS_DATA or (budget.macs is not None and budget.allocation == "sensitivity"):
        what = ("--reconstruct" if reconstruct else f"the {criterion} criterion" if criterion in NEEDS_DATA
                else "the sensitivity allocation")
        raise EdgecError(f"{what} needs calibration data", "pass --calib inputs.npy (N inputs, N ≤ 256)")
    original = ir.serde.serialize_model(model)
    analysis, keep, sensitivity = plan(model, budget, criterion, calib, reconstruct)
    before_stats = inspect_model(original)
    apply_selection(model, analysis, keep)
    recovery = refit(original, model, analysis, keep, calib) if reconstruct else None
    after_stats = inspect_model(ir.serde.serialize_model(model))

    kept = {gid: len(idx) for gid, idx in keep.items()}
    size = {g.id: g.size for g in analysis.groups}
    after_layers = {layer.name: layer for layer in after_stats.layers}
    layers = []
    for layer in analysis.mac_layers:
        b = next(x for x in before_stats.layers if x.name == layer.node)
        a = after_layers.get(layer.node)
        chan = lambda segs, k: sum(n // size[g] * k.get(g, size[g]) for g, n in segs)  # noqa: E731
        out_segments = layer.out
        in_segments = layer.inp
        layers.append({"layer": layer.node, "op": layer.op,
                       "out_channels": [chan(out_segments, {}), chan(out_segments, kept)],
                       "in_channels": [chan(in_segments, {}), chan(in_segments, kept)] if in_segments else None,
                       "params": [b.params, a.params if a else 0], "macs": [b.macs, a.macs if a else 0]})
    blocked = [g for g in analysis.groups if not g.prunable and g.size > 1]
    return {
        "changed": bool(keep),
        "criterion": criterion,
        "budget": {k: v for k, v in {"ratio": budget.ratio, "macs": budget.macs, "layer_ratios": budget.layer_ratios,
                                     "round_to": budget.round_to, "allocation": budget.allocation}.items()
                   if v is not None},
        "groups": {"total": len(analysis.groups), "prunable": len(analysis.prunable()), "pruned": len(keep),
                   "blocked": [{"name": g.name, "channels": g.size, "why": g.reasons[0]} for g in blocked][:20]},
        "channels": [{"group": analysis.groups[gid].name, "before": size[gid], "after": kept[gid]}
                     for gid in sorted(keep)],
        "layers": layers,
        "params": [before_stats.total_params, after_stats.total_params],
        "macs": [before_stats.total_macs, after_stats.total_macs],
        "macs_removed": round(1.0 - after_stats.total_macs / max(before_stats.total_macs, 1), 4),
        **({"reconstruct": recovery} if recovery is not None else {}),
        **({"sensitivity": sensitivity} if sensitivity is not None else {}),
    }
