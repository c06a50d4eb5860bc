"""Structured channel pruning on ONNX graphs (issue 5): dependency groups, criteria, budgets, rewrite, recovery.

``prune(model, ...)`` is the one entry point; :mod:`edgec.passes.prune_channels` wraps it as a pipeline pass and
``edgec prune`` / ``edgec compile --prune`` call it. Like every pass it knows ONNX only, never TVM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.pruning.budget import Budget, select
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
    if criterion in ("thinet", "thinet-ls"):
        if calib is None:
            score_group(criterion, groups[0], weights, None)  # raises the helpful error
        from edgec.pruning.thinet import thinet_ls_scores, thinet_scores

        fallback = {g.id: score_group("l1", g, weights, None) for g in groups}
        return (thinet_scores if criterion == "thinet" else thinet_ls_scores)(model, analysis, calib, fallback)
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


def plan(model: ir.Model, budget: Budget, criterion: str, calib: np.ndarray | None, reconstruct: bool,
         info: dict[str, Any] | None = None) -> tuple[Analysis, dict[int, np.ndarray], list[dict[str, Any]] | None]:
    """Which channels every group keeps (``model`` is not changed): the analysis, ``{group id: kept indices}`` and
    the sensitivity table when the budget is allocated by sensitivity. A latency budget also fills ``info``
    (``"latency"``: the measured table, the prediction)."""
    original = ir.serde.serialize_model(model)
    analysis = analyze(model)
    if not analysis.prunable():
        reasons = sorted({r for g in analysis.groups for r in g.reasons})
        raise EdgecError("no channel of this model can be pruned",
                         f"every group is blocked: {'; '.join(reasons[:3])}")
    scores = importance(model, analysis, criterion, calib)
    if budget.latency_ms is not None:
        from edgec.pruning import latency

        cands = latency.candidates(analysis, budget)
        table = latency.build_table(model, analysis, cands, budget.timer, budget.latency_cache)
        sens = None
        if calib is not None:
            from edgec.pruning.sensitivity import measure, summary

            losses = measure(original, analysis, scores, budget, calib, reconstruct)
            sens = summary(losses, analysis)
        else:
            losses = latency.score_losses(analysis, scores, cands)
        # The table is a model of the target (one-layer timings); the choice is checked on the real thing: the
        # least-loss options are compiled whole and timed together with the unpruned model, and the least-loss one
        # measured within the budget wins. When none is, the budget the table is asked for shrinks by how much it
        # under-predicted, and the next options are tried (a few rounds).
        effective = budget.latency_ms
        options, keeps, tried, measured = [], [], set(), {}
        ok: list[int] = []
        for _ in range(latency.VERIFY_ROUNDS):
            try:
                fresh = latency.allocate(analysis, table, losses, cands, effective, top=latency.VERIFY_TOP,
                                         exclude=tried)
            except EdgecError:
                if not options:
                    raise
                break
            protos = {"unpruned": original}
            first = len(options)
            for i, counts in enumerate(fresh, first):
                options.append(counts)
                tried.add(frozenset(counts.items()))
                keeps.append({gid: np.sort(np.argsort(-scores[gid], kind="stable")[:k]) for gid, k in counts.items()})
                trial = ir.serde.deserialize_model(original)
                apply_selection(trial, analysis, keeps[-1])
                protos[f"option{i}"] = ir.serde.serialize_model(trial)
            now = budget.timer(protos)
            measured.setdefault("unpruned", now["unpruned"])
            measured.update({k: v for k, v in now.items() if k != "unpruned"})
            ok = [i for i in range(first, len(options)) if measured[f"option{i}"] <= budget.latency_ms]
            if ok:
                break
            under = max(measured[f"option{i}"] / max(latency.predict(table, options[i]), 1e-9)
                        for i in range(first, len(options)))
            effective = min(effective, budget.latency_ms) / max(under, 1.0001)
        if not ok:
            closest = min(range(len(options)), key=lambda i: measured[f"option{i}"])
            raise EdgecError(f"cannot reach {budget.latency_ms:g} ms on {budget.target}: the closest is "
                             f"{measured[f'option{closest}']:.3f} ms measured "
                             f"({latency.predict(table, options[closest]):.3f} ms predicted; unpruned "
                             f"{measured['unpruned']:.3f} ms; {len(options)} option(s) tried)",
                             "ask for a larger --latency-ms (one-layer timings miss this model's layout changes), "
                             "or allow more pruning")
        choice, combined = ok[0], {}
        if calib is not None and len(ok) > 1:
            # per-group losses are summed to rank options, which ignores that pruning two groups compounds: among
            # the options measured within budget, the one whose *combined* output error is least wins
            from edgec.pruning.reconstruct import reconstruct as refit
            from edgec.pruning.sensitivity import EVAL_SAMPLES, output_loss, outputs

            # with recovery, refit on one half of the data and judge on the other: the refit fits its own samples
            # (every option agrees with the unpruned argmax there) but can fail on new inputs
            half = len(calib) // 2 if reconstruct and len(calib) >= 16 else 0
            evals = calib[half:][:EVAL_SAMPLES]
            reference = outputs(original, evals)
            for i in ok:
                trial = ir.serde.deserialize_model(original)
                apply_selection(trial, analysis, keeps[i])
                if reconstruct:
                    refit(original, trial, analysis, keeps[i], calib[:half] if half else evals)
                combined[i] = output_loss(reference, ir.serde.serialize_model(trial), evals)
            choice = min(ok, key=combined.__getitem__)
        keep = keeps[choice]
        if info is not None:
            info["latency"] = {"target": budget.target, "device": budget.timer.device or "local",
                               "budget_ms": budget.latency_ms,
                               "loss": "sensitivity" if calib is not None else f"{criterion} scores",
                               "predicted_ms": round(latency.predict(table, options[choice]), 5),
                               "measured_ms": [round(measured["unpruned"], 5),
                                               round(measured[f"option{choice}"], 5)],
                               "tried": [{"channels": {analysis.groups[g].name: k for g, k in o.items()},
                                          "predicted_ms": round(latency.predict(table, o), 5),
                                          "measured_ms": round(measured[f"option{i}"], 5),
                                          **({"output_loss": round(combined[i], 5)} if i in combined else {})}
                                         for i, o in enumerate(options)],
                               "table_unpruned_ms": round(table["model_ms"], 5),
                               "table_compiled": table["compiled"], "table": latency.summary(table, analysis)}
        return analysis, keep, sens
    if budget.macs is not None and budget.allocation == "sensitivity":
        from edgec.pruning.sensitivity import allocate, measure, refine, summary

        table = measure(original, analysis, scores, budget, calib, reconstruct)
        kept_counts = allocate(analysis, table, budget)
        kept_counts, tried = refine(original, analysis, scores, budget, calib, reconstruct, kept_counts, table)
        if info is not None:
            info["allocation_search"] = tried
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
    if budget.latency_ms is not None and budget.round_to == 1:
        # as ``edgec compile --prune``: counts off the vector width save no time, and fewer candidates to time
        budget.round_to = budget.timer.channel_multiple
    original = ir.serde.serialize_model(model)
    info: dict[str, Any] = {}
    analysis, keep, sensitivity = plan(model, budget, criterion, calib, reconstruct, info)
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
                                     "round_to": budget.round_to,
                                     "allocation": budget.allocation if budget.latency_ms is None
                                     else "sensitivity" if calib is not None else "score",
                                     "latency_ms": budget.latency_ms, "target": budget.target}.items()
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
        **info,
    }
