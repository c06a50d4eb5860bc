"""Sensitivity-aware MACs budget: measure what pruning each group alone costs, then spend the budget where it is
cheapest.

For every prunable group and a few keep counts (about 1/4, 1/2 and 3/4 of its channels, on the ``round_to``
grid, plus the floor), the group alone is cut to that count (by the criterion's ranking), its consumers are
refitted when recovery is on, and the model's outputs on the calibration inputs are compared with the unpruned
model's: the loss is the relative squared error ``‖y' − y‖² / ‖y‖²`` of the outputs (logits for a classifier).
Counts in between are interpolated linearly (keeping everything costs 0). The budget is then spent greedily:
every step takes the (group, smaller count) with the least loss per removed MAC, until the MACs target is met.
Losses of different groups are treated as additive, which is the usual first-order assumption (and the final
model's loss is reported, so the assumption can be checked).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.pruning.budget import Budget, _min_keep, estimate_macs
from edgec.pruning.groups import Analysis

__all__ = ["measure", "allocate", "output_loss"]

EVAL_SAMPLES = 128


def outputs(proto: onnx.ModelProto, calib: np.ndarray) -> np.ndarray:
    from edgec.pruning.calib import capture

    name = proto.graph.output[0].name
    return capture(proto, [name], calib)[name].astype(np.float64)


def output_loss(reference: np.ndarray, proto: onnx.ModelProto, calib: np.ndarray) -> float:
    y = outputs(proto, calib)
    return float(np.sum((y - reference) ** 2) / max(np.sum(reference ** 2), 1e-30))


def levels(size: int, floor: int, round_to: int, fractions=(0.25, 0.5, 0.75)) -> list[int]:
    """The keep counts to measure for a group: a few fractions on the round_to grid, and the floor."""
    out = set()
    for f in fractions:
        k = max(floor, int(round(size * f / round_to)) * round_to)
        if floor <= k < size:
            out.add(k)
    if floor < size:
        out.add(floor)
    return sorted(out)


def measure(original: onnx.ModelProto, analysis: Analysis, scores: dict[int, np.ndarray], budget: Budget,
            calib: np.ndarray, reconstruct: bool) -> dict[int, dict[int, float]]:
    """``{group id: {keep count: output loss}}`` with each group pruned alone."""
    from edgec.pruning.reconstruct import reconstruct as refit
    from edgec.pruning.rewrite import apply_selection

    evals = calib[:EVAL_SAMPLES]
    reference = outputs(original, evals)
    table: dict[int, dict[int, float]] = {}
    for g in analysis.prunable():
        table[g.id] = {g.size: 0.0}
        for k in levels(g.size, _min_keep(g, budget), budget.round_to):
            model = ir.serde.deserialize_model(original)
            keep = {g.id: np.sort(np.argsort(-scores[g.id], kind="stable")[:k])}
            apply_selection(model, analysis, keep)
            if reconstruct:
                readers = {layer.node for layer in analysis.mac_layers if any(gid == g.id for gid, _ in layer.inp)}
                readers |= set(g.producers)  # residual branches writing the group: the sum is refitted
                refit(original, model, analysis, keep, calib[:EVAL_SAMPLES], only=readers)
            table[g.id][k] = output_loss(reference, ir.serde.serialize_model(model), evals)
    return table


def _interp(table: dict[int, float], k: int) -> float:
    ks = sorted(table)
    return float(np.interp(k, ks, [table[x] for x in ks]))


def allocate(analysis: Analysis, table: dict[int, dict[int, float]], budget: Budget,
             max_combinations: int = 200_000) -> dict[int, int]:
    """Keep counts meeting ``budget.macs`` with the least summed loss: an exhaustive search over the measured counts
    when there are few combinations, else greedy steps with the least loss per removed MAC."""
    groups = {g.id: g for g in analysis.prunable()}
    total = estimate_macs(analysis, {})
    target = total * (1.0 - budget.macs)
    if math.prod(len(t) for t in table.values()) <= max_combinations:
        best = _exhaustive(analysis, table, target)
        if best is not None:
            return best
    kept = {gid: g.size for gid, g in groups.items()}
    step = max(1, budget.round_to)
    macs = total
    while macs > target:
        best: tuple[float, int, int, int] | None = None
        for gid, g in groups.items():
            floor = _min_keep(g, budget)
            now = _interp(table[gid], kept[gid])
            k = kept[gid] - step if step > 1 else kept[gid] - 1
            if step > 1:
                k = (math.ceil(kept[gid] / step) - 1) * step
            while k >= floor:
                trial = estimate_macs(analysis, {**kept, gid: k})
                saved = macs - trial
                if saved > 0:  # a step that overshoots the target is credited only with what was needed
                    cost = (_interp(table[gid], k) - now) / min(saved, macs - target)
                    if best is None or cost < best[0]:
                        best = (cost, gid, k, trial)
                k -= step
        if best is None:
            reached = 1.0 - macs / total
            raise EdgecError(f"cannot remove {budget.macs:.0%} of MACs: the most this model allows is {reached:.1%}",
                             f"ask for at most {math.floor(reached * 100) / 100:g}")
        _, gid, k, macs = best
        kept[gid] = k
    return kept


def _exhaustive(analysis: Analysis, table: dict[int, dict[int, float]], target: float) -> dict[int, int] | None:
    import itertools

    gids = list(table)
    best: tuple[float, float, dict[int, int]] | None = None
    for combo in itertools.product(*(sorted(table[g]) for g in gids)):
        loss = sum(table[g][k] for g, k in zip(gids, combo))
        if best is not None and loss > best[0]:
            continue
        kept = dict(zip(gids, combo))
        macs = estimate_macs(analysis, kept)
        if macs <= target and (best is None or (loss, -macs) < (best[0], -best[1])):
            best = (loss, macs, kept)
    return best[2] if best else None


def summary(table: dict[int, dict[int, float]], analysis: Analysis) -> list[dict[str, Any]]:
    return [{"group": analysis.groups[gid].name, "loss": {str(k): round(v, 5) for k, v in sorted(t.items())}}
            for gid, t in table.items()]
