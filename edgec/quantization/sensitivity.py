"""Per-layer sensitivity scan and mixed precision under a drop bound (``edgec quantize --scan / --max-drop``).

**The scan** quantizes *one layer at a time* at the target precision (its weight, and the activations it reads and
writes) with every other layer float, and measures the drop against the float model: top-1 points with labels,
else disagreement points (100 × (1 - agreement)), plus the SQNR of the model output (logits) vs the float model;
without evaluation data only that SQNR, on the calibration data. Layers are ranked most sensitive first: higher
drop, ties (common: a 1,000-sample set moves in 0.1-point steps) broken by lower output SQNR.

Why one-quantized-rest-float rather than all-quantized-one-kept-high: the reference is the float model itself,
so each figure is that layer's own damage, unconfounded by the noise of the other layers; the all-low model's
drop is itself only a few flipped samples on small sets, and "how much does keeping layer L high recover" is the
difference of two such noisy numbers, which ranks mostly by chance (and the recoveries of two layers overlap
instead of adding). The layer-alone output SQNR is continuous, so it still orders layers whose drops tie.

**The search** (``max_drop``) starts with every layer at the target precision; while the drop exceeds the bound it
promotes layers in sensitivity order one at a time, one rung of the ladder at a time: int4 → int8 for each layer,
then int8 → float (``promote_to`` = "int8" stops the ladder at int8). A float layer keeps its float weight and reads
float inputs (see ``QuantConfig.overrides``), so with every layer float the model *is* the float model (drop 0):
the bound is then always reachable, and only ``promote_to="int8"`` can miss it. After every evaluation, a candidate
better than the best so far (lower drop; on a tie fewer bytes) is written atomically to the output path, so an
interrupted or failed search still leaves the best model found.

Calibration runs once: activation ranges come from the *float* model, whatever the layers' precisions, and are
shared by all candidates (``QuantizeQDQ(activation_cache=...)``); the opset is raised once up front. Each
candidate costs one QDQ rewrite plus one pass over the evaluation data (bias correction and AdaRound, when asked
for, run again for every candidate and multiply the time).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import onnx
import onnx_ir as ir

from edgec.calibration.sources import CalibrationSource, EvalData, batches, open_eval
from edgec.errors import EdgecError
from edgec.passes.quantize_qdq import PRECISION_CHOICES, QuantConfig, QuantizeQDQ, upgrade_opset
from edgec.calibration import capture
from edgec.quantization.method_choice import AUTO, choose_method
from edgec.quantization.qmath import sqnr_db

__all__ = ["Evaluator", "Candidate", "mixed_precision", "scan_layers", "bound_missed", "check_search_options",
           "LADDER"]

LADDER = PRECISION_CHOICES  # ("int4", "int8", "float"): lowest precision first
EPS = 1e-9


def _short(weight: str) -> str:
    return weight[: -len(".weight")] if weight.endswith(".weight") else weight


class Evaluator:
    """Compares a quantized model's top-1 (and output) with the float model's, on fixed data.

    The float model's predictions and outputs are computed once. Data (``path``: a path or :class:`EvalData`, see
    ``open_eval``): an .npz with ``x`` and optional labels ``y``, a .npy, an image folder; or calibration feeds
    (``feeds``: output SQNR only, no drop)."""

    def __init__(self, float_proto: onnx.ModelProto, path: Path | EvalData | None = None,
                 feeds: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None) -> None:
        self.labels: np.ndarray | None = None
        if path is not None:
            data = path if isinstance(path, EvalData) else open_eval(path, ir.serde.deserialize_model(float_proto))
            source = data.source
            self.n = source.num_samples
            self.batch = source.specs[0].batch
            self._feeds: Callable[[], Iterable[dict[str, np.ndarray]]] = lambda: batches(source)
            self.labels = data.labels
            self.description = data.description
        else:
            assert feeds is not None
            self._feeds = feeds
            self.n = None
            self.batch = None
            self.description = "the calibration data (no --eval)"
        self.has_drop = path is not None
        self.metric = ("top-1 drop (pt)" if self.labels is not None else
                       "disagreement with float (pt)" if path is not None else "output SQNR (dB)")
        self.float_outputs, self.float_pred = self._run(float_proto)
        if self.n is None:
            self.n = len(self.float_pred)

    def _run(self, proto: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
        sess = capture.session(proto)
        outs = []
        for feed in self._feeds():
            y = sess.run(None, feed)[0]
            outs.append(y.reshape(y.shape[0], -1) if y.ndim > 1 else y.reshape(1, -1))
        out = np.concatenate(outs)
        if self.n is not None:
            out = out[: self.n]
        return out, np.argmax(out, axis=1)

    def measure(self, proto: onnx.ModelProto) -> dict[str, Any]:
        """samples, agreement, output SQNR; with .npz data also drop_pt (and accuracies with labels)."""
        out, pred = self._run(proto)
        ref = self.float_outputs.astype(np.float64)
        signal, noise = float(np.sum(ref ** 2)), float(np.sum((ref - out) ** 2))
        sq = sqnr_db(signal, noise)
        agree = int(np.sum(pred == self.float_pred))
        result: dict[str, Any] = {"samples": self.n, "agreement": agree / self.n,
                                  "output_sqnr_db": sq if math.isfinite(sq) else None}
        if not self.has_drop:
            return result
        if self.labels is not None:
            f_ok, q_ok = int(np.sum(self.float_pred == self.labels)), int(np.sum(pred == self.labels))
            result.update(float_accuracy=f_ok / self.n, quant_accuracy=q_ok / self.n,
                          drop_pt=100.0 * (f_ok - q_ok) / self.n)
        else:
            result["drop_pt"] = 100.0 * (self.n - agree) / self.n
        return result


@dataclass
class Candidate:
    precisions: dict[str, str]          # weight name → int4 | int8 | float
    proto: onnx.ModelProto
    report: dict[str, Any]              # the QDQ pass report
    log: list[dict[str, Any]]
    measured: dict[str, Any]
    weight_bytes: int

    @property
    def drop(self) -> float:
        return self.measured.get("drop_pt", 0.0)


class _Builder:
    """The float model (cleanup passes done, opset raised once) → a QDQ candidate for given per-layer precisions."""

    def __init__(self, model: ir.Model, config: QuantConfig, feeds, notes: list[str]) -> None:
        need = 21 if config.weights == "int4" or config.granularity.startswith("group:") else 13
        opset = model.opset_imports.get("", 1)
        if opset < need:
            upgrade_opset(model, need)
            notes.append(f"opset {opset} → {need} (needed by "
                         f"{'INT4/blocked' if need == 21 else 'per-axis'} DequantizeLinear)")
        self.proto = ir.serde.serialize_model(model)
        self.cache: dict = {}
        if config.method == AUTO and config.activations == "int8":  # chosen once, for every candidate
            choice = choose_method(model, config, feeds)
            config = dataclasses.replace(config, method=choice.method)
            self.cache.update(choice.ranges)
            self.choice: dict[str, Any] | None = choice.to_dict()
        else:
            self.choice = None
        self.config = config
        self.feeds = feeds
        self.builds = 0

    def build(self, precisions: dict[str, str]) -> tuple[onnx.ModelProto, dict[str, Any], list[dict[str, Any]]]:
        from edgec.toolchain.pipeline import run_pipeline

        model = ir.serde.deserialize_model(self.proto)
        cfg = dataclasses.replace(self.config, overrides=dict(precisions))
        model, log = run_pipeline(model, [QuantizeQDQ(cfg, self.feeds, self.cache)])
        self.builds += 1
        return ir.serde.serialize_model(model), dict(log[-1].get("report", {})), log


def _layer_bytes(report: dict[str, Any]) -> int:
    return sum(layer["quantized_bytes"] for layer in report.get("layers", []))


def scan_layers(builder: _Builder, evaluator: Evaluator, weights: list[str], target: str,
                layer_info: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per layer in ``weights``, most sensitive first (see the module doc)."""
    entries = []
    for w in weights:
        precisions = {other: "float" for other in layer_info}
        precisions[w] = target
        proto, _, _ = builder.build(precisions)
        m = evaluator.measure(proto)
        info = layer_info[w]
        entries.append({"layer": _short(w), "weight": w, "node": info["layer"], "op": info["op"],
                        "float_bytes": info["float_bytes"], "precision": target, "drop_pt": m.get("drop_pt"),
                        "agreement": m["agreement"], "output_sqnr_db": m["output_sqnr_db"]})

    def key(e: dict[str, Any]) -> tuple[float, float]:
        sq = e["output_sqnr_db"] if e["output_sqnr_db"] is not None else math.inf
        return (-(e["drop_pt"] or 0.0), sq)

    entries.sort(key=key)
    for rank, e in enumerate(entries, 1):
        e["rank"] = rank
    return entries


def mixed_precision(model: ir.Model, float_proto: onnx.ModelProto, passes_log: list[dict[str, Any]],
                    config: QuantConfig, src: CalibrationSource | None, out_path: Path | None,
                    eval_file: Path | EvalData | None, max_drop: float | None, scan: bool, promote_to: str = "float"):
    """The body of ``quantize_model`` with ``scan`` and/or ``max_drop`` (see the module doc)."""
    from edgec.quantization.api import QuantizeResult, sizes, write_model

    start = time.perf_counter()
    feeds = (lambda: batches(src)) if src is not None else None
    if eval_file is None and feeds is None:
        raise EdgecError("the sensitivity scan needs data to measure on", "pass --eval val.npz or --calib DATA")
    notes: list[str] = []
    builder = _Builder(model, config, feeds, notes)
    evaluator = Evaluator(float_proto, eval_file, feeds)
    pinned = dict(config.overrides)  # the user's own overrides are kept as given
    target = config.weights
    ladder = list(LADDER[LADDER.index(target): LADDER.index(promote_to) + 1])

    best: Candidate | None = None
    history: list[dict[str, Any]] = []

    def met(c: Candidate) -> bool:
        return max_drop is not None and c.drop <= max_drop + EPS

    def better(c: Candidate, than: Candidate | None) -> bool:
        """Meeting the bound beats missing it; among those that meet it, fewer bytes (then lower drop); among
        those that miss it, lower drop (then fewer bytes)."""
        if than is None:
            return True
        if met(c) != met(than):
            return met(c)
        by_drop = (c.drop < than.drop - EPS, abs(c.drop - than.drop) <= EPS)
        by_bytes = (c.weight_bytes < than.weight_bytes, c.weight_bytes == than.weight_bytes)
        first, second = (by_bytes, by_drop) if met(c) else (by_drop, by_bytes)
        return first[0] or (first[1] and second[0])

    seen: dict[tuple, Candidate] = {}

    def consider(precisions: dict[str, str], step: str) -> Candidate:
        nonlocal best
        key = tuple(sorted(precisions.items()))
        if key in seen:  # e.g. trimming back to a configuration already measured
            return seen[key]
        proto, report, log = builder.build(precisions)
        cand = Candidate(dict(precisions), proto, report, log, evaluator.measure(proto), _layer_bytes(report))
        is_better = better(cand, best)
        seen[key] = cand
        history.append({"step": step, "drop_pt": cand.measured.get("drop_pt"),
                        "output_sqnr_db": cand.measured["output_sqnr_db"], "weight_bytes": cand.weight_bytes,
                        "best": is_better})
        if is_better:
            best = cand
            if out_path is not None:
                write_model(proto, out_path)  # the best so far, atomically: an interrupted search keeps it
        return cand

    base = consider(dict(pinned), f"all {target}" + (" (with the given overrides)" if pinned else ""))
    layer_info = {layer["weight"]: layer for layer in base.report["layers"]}
    free = [w for w in layer_info if not any(k in pinned for k in (w, _short(w), layer_info[w]["layer"]))]
    levels = {w: info["precision"] for w, info in layer_info.items()}
    seen[tuple(sorted(_precisions(levels, pinned, free).items()))] = base

    entries: list[dict[str, Any]] = []
    if scan or (max_drop is not None and not met(base)):
        entries = scan_layers(builder, evaluator, free, target, layer_info)
    if max_drop is not None and not met(base):
        current = base
        for rung in ladder[1:]:
            for e in entries:
                if met(current):
                    break
                w = e["weight"]
                if LADDER.index(levels[w]) >= LADDER.index(rung):
                    continue
                levels[w] = rung
                current = consider(_precisions(levels, pinned, free), f"{e['layer']} → {rung}")
            if met(current):
                break
        if met(current):  # trim: a promotion the bound does not need (least sensitive first) is undone
            for e in reversed(entries):
                w = e["weight"]
                if levels[w] == target:
                    continue
                trial = dict(levels)
                trial[w] = LADDER[LADDER.index(levels[w]) - 1]
                cand = consider(_precisions(trial, pinned, free), f"{e['layer']} back to {trial[w]}")
                if met(cand):
                    levels = trial

    assert best is not None
    final = best
    chosen = {layer["weight"]: layer["precision"] for layer in final.report["layers"]}
    for e in entries:
        e["chosen"] = chosen.get(e["weight"])
    report: dict[str, Any] = dict(final.report)
    if builder.choice is not None:
        report["method_choice"] = builder.choice
    report["calibration"] = src.description if src is not None else "none (weights only)"
    report["sizes"] = sizes(float_proto, final.proto, report.get("layers", []))
    if eval_file is not None:
        report["eval"] = {k: v for k, v in final.measured.items() if k != "output_sqnr_db"}
    promoted = [{"layer": _short(w), "weight": w, "precision": p} for w, p in chosen.items()
                if p != target and w in free]
    report["mixed_precision"] = {
        "target": target, "ladder": ladder, "max_drop": max_drop, "metric": evaluator.metric,
        "measured_on": evaluator.description, "scan": entries, "steps": history,
        "final_drop_pt": final.measured.get("drop_pt"), "final_output_sqnr_db": final.measured["output_sqnr_db"],
        "met": met(final) if max_drop is not None else None, "promoted": promoted,
        "pinned": pinned, "evaluations": len(history) + len(entries), "seconds": round(time.perf_counter() - start, 2),
    }
    report["passes"] = passes_log + final.log
    all_notes = list(notes) + [n for n in final.report.get("notes", []) if not n.startswith("kept float: ")]
    all_notes += src.notes if src is not None else []
    capture.session(final.proto)  # onnxruntime must load what we write; failing here is an edgec bug
    return QuantizeResult(out_path, report, final.proto, float_proto, all_notes,
                          met=met(final) if max_drop is not None else None)


def _precisions(levels: dict[str, str], pinned: dict[str, str], free: list[str]) -> dict[str, str]:
    """Overrides for a candidate: the searched layers' levels plus the user's pinned ones."""
    out = {w: levels[w] for w in free}
    out.update(pinned)
    return out


def bound_missed(mp: dict[str, Any], outcome: str) -> EdgecError:
    """The one-line error for a ``--max-drop`` the search could not meet (``mp``: the report's mixed_precision);
    ``outcome``: what was (not) written, e.g. "the best model was saved at q.onnx"."""
    return EdgecError(f"--max-drop {mp['max_drop']:g} not reached: the best drop is {mp['final_drop_pt']:.2f} pt "
                      f"({len(mp['promoted'])} layer(s) promoted, up to {mp['ladder'][-1]}); {outcome}",
                      "raise --max-drop" + (", or allow --promote-to float" if mp["ladder"][-1] != "float" else ""))


def check_search_options(max_drop: float, eval_path: Any, promote_to: str, weights: str) -> None:
    """The ``--max-drop`` option checks (``edgec quantize`` and ``edgec compile --quantize``), before any work."""
    if not (max_drop >= 0):  # also NaN
        raise EdgecError(f"--max-drop must be ≥ 0 (got {max_drop})", "pass the allowed top-1 drop in points, "
                                                                      "e.g. --max-drop 0.5")
    if eval_path is None:
        raise EdgecError("--max-drop needs evaluation data to measure the drop",
                         "add --eval val.npz (x, and labels y for a top-1 drop; without y: disagreement), "
                         "a .npy or an image folder")
    if promote_to not in ("int8", "float"):
        raise EdgecError(f"unknown --promote-to '{promote_to}'", "use int8 or float")
    if promote_to == "int8" and weights == "int8":
        raise EdgecError("--promote-to int8 leaves nothing to promote int8 weights to", "use --promote-to float")
