"""The human-readable quantization report printed by ``edgec quantize`` (the JSON form is the pass report)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["format_report"]


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _qp(qp: dict[str, Any] | None) -> str:
    if not qp:
        return "fp32"
    return f"{qp['scale']:.3g}/{qp['zero_point']} {'u8' if qp['dtype'] == 'uint8' else 's8'}"


def _db(x: float | None) -> str:
    return "exact" if x is None else f"{x:.1f}"


def _display_name(layer: dict[str, Any]) -> str:
    """Auto-generated node names (``node_Conv_3``) say nothing: show the weight's name (``block2.conv1.0``) then."""
    if re.fullmatch(r"node_[A-Za-z]+_\d+", layer["layer"]):
        return re.sub(r"\.weight$", "", layer["weight"])
    return layer["layer"]


def format_report(report: dict[str, Any]) -> list[str]:
    """Lines: configuration, one row per layer, sizes, accuracy (when evaluated), notes."""
    cfg = report["config"]
    choice = report.get("method_choice")
    how = cfg["method"] if choice is None else (
        f"{cfg['method']}, chosen by --method auto: output SQNR on the calibration data "
        + " vs ".join(f"{m} {db:.1f} dB" for m, db in choice["output_sqnr_db"].items()))
    acts = (f"{cfg['activation_dtype']} activations ({how})" if cfg["activations"] == "int8"
            else "fp32 activations (weights only)")
    counts: dict[str, int] = {}
    for layer in report["layers"]:
        prec = layer.get("precision", f"int{layer['bits']}")
        counts[prec] = counts.get(prec, 0) + 1
    mixed = (f" (mixed: {', '.join(f'{n} {p}' for p, n in sorted(counts.items()))})"
             if len(counts) > 1 or cfg["weights"] not in counts else "")
    lines = [f"quantized: {cfg['weights']} weights ({cfg['granularity']}){mixed}, {acts}"
             + (", bias correction" if cfg["bias_correction"] else "")
             + (", AdaRound" if cfg.get("adaround") else "") + f"; opset {report['opset']}",
             f"calibration: {report['calibration']}"]
    rows = [("layer", "op", "bits", "weight scale (min..max)", "w SQNR dB", "out SQNR dB", "in scale/zp",
             "out scale/zp", "weight bytes")]
    for layer in report["layers"]:
        if layer["weight_scale"] is None:  # kept float (an override)
            rows.append((_display_name(layer), layer["op"], "float", "-", "-",
                         _db(layer.get("output_sqnr_db")) if "output_sqnr_db" in layer else "-", "fp32", "fp32",
                         f"{layer['float_bytes']} → {layer['quantized_bytes']}"))
            continue
        lo, hi = layer["weight_scale"]
        scale = f"{lo:.3g}" if lo == hi else f"{lo:.3g}..{hi:.3g}"
        rows.append((_display_name(layer), layer["op"], str(layer["bits"]), f"{scale} zp {layer.get('weight_zero_point', 0)}",
                     _db(layer["weight_sqnr_db"]),
                     _db(layer.get("output_sqnr_db")) if "output_sqnr_db" in layer else "-", _qp(layer["input"]),
                     _qp(layer["output"]), f"{layer['float_bytes']} → {layer['quantized_bytes']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) if i in (0, 1, 3, 6, 7) else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    ada = [(layer, layer["adaround"]) for layer in report["layers"] if layer.get("adaround")]
    if ada:
        first = ada[0][1]
        lines.append(f"AdaRound ({first['samples']} samples, {first['iterations']} iterations/layer): layer-output MSE "
                     "on the calibration rows, nearest → adaptive rounding")
        width = max(len(_display_name(layer)) for layer, _ in ada)
        for layer, a in ada:
            lines.append(f"  {_display_name(layer).ljust(width)}  {a['mse_nearest']:.3g} → {a['mse_adaround']:.3g} "
                         f"({-100 * a['reduction']:+.0f} %), {100 * a['changed']:.0f} % of weights rounded the other "
                         f"way, {a['rows']} rows" + (" (after ReLU)" if a["relu"] else ""))
    sizes = report["sizes"]
    lines.append(f"size: layer weights {_kib(sizes['float_weight_bytes'])} → {_kib(sizes['quant_weight_bytes'])} "
                 f"({sizes['float_weight_bytes'] / sizes['quant_weight_bytes']:.2f}x smaller, scales included); "
                 f"all initializers {_kib(sizes['float_bytes'])} → {_kib(sizes['quant_bytes'])} "
                 f"({sizes['float_bytes'] / sizes['quant_bytes']:.2f}x)")
    ev = report.get("eval")
    if ev:
        if "quant_accuracy" in ev:
            lines.append(f"accuracy ({ev['samples']} samples): float {100 * ev['float_accuracy']:.2f} %, quantized "
                         f"{100 * ev['quant_accuracy']:.2f} % (drop {ev['drop_pt']:+.2f} pt); top-1 agreement "
                         f"{100 * ev['agreement']:.1f} %")
        else:
            lines.append(f"top-1 agreement with the float model ({ev['samples']} samples, no labels): "
                         f"{100 * ev['agreement']:.1f} %")
    if report.get("mixed_precision"):
        lines.extend(format_mixed(report["mixed_precision"], sizes))
    return lines


def _pt(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def format_mixed(mp: dict[str, Any], sizes: dict[str, int] | None = None) -> list[str]:
    """The sensitivity table, the search steps and the outcome (``--scan`` / ``--max-drop``)."""
    lines: list[str] = []
    if mp["scan"]:
        lines.append(f"sensitivity: {mp['target']} one layer at a time, the rest float; {mp['metric']} on "
                     f"{mp['measured_on']}; most sensitive first")
        rows = [("rank", "layer", "op", "drop alone pt", "out SQNR dB", "chosen")]
        for e in mp["scan"]:
            rows.append((str(e["rank"]), e["layer"], e["op"], _pt(e["drop_pt"]), _db(e["output_sqnr_db"]),
                         e.get("chosen") or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  " + "  ".join(c.rjust(w) if i in (0, 3, 4) else c.ljust(w)
                                          for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    if mp["max_drop"] is None:
        return lines
    lines.append(f"search: max drop {mp['max_drop']:.2f} pt, ladder {' → '.join(mp['ladder'])}; "
                 f"{mp['evaluations']} evaluations in {mp['seconds']:.1f} s (the best so far written after each)")
    width = max(len(s["step"]) for s in mp["steps"])
    for s in mp["steps"]:
        lines.append(f"  {s['step'].ljust(width)}  drop {_pt(s['drop_pt'])} pt  {_kib(s['weight_bytes'])}"
                     + ("  (best so far)" if s["best"] else ""))
    promoted = ", ".join(f"{p['layer']} → {p['precision']}" for p in mp["promoted"]) or "none"
    verdict = "met" if mp["met"] else "NOT met"
    size = ""
    if sizes:
        size = (f"; layer weights {_kib(sizes['float_weight_bytes'])} → {_kib(sizes['quant_weight_bytes'])} "
                f"({sizes['float_weight_bytes'] / sizes['quant_weight_bytes']:.2f}x)")
    lines.append(f"result: drop {_pt(mp['final_drop_pt'])} pt vs bound {mp['max_drop']:.2f} pt: {verdict}; "
                 f"promoted: {promoted}{size}")
    return lines
