"""``edgec report``: one self-contained HTML page about an artifact (and, optionally, its bench runs).

Why one file with everything embedded: it is attached to CI runs and mailed around, so it must open anywhere,
offline, without the artifact next to it. Charts are PNGs inlined as base64 (:mod:`edgec.toolchain.plots`); the
page references no URL. Sections whose data the artifact or bench JSON does not hold are replaced by a one-line
note saying how to get it, never an error.

Sources: the manifest (target, sizes, verification, pass log with the quantize and prune reports),
``layers.json`` (per-layer weight bytes and MACs after each stage, :mod:`edgec.toolchain.layer_record`) and bench
JSON files of schema ``edgec.bench/1`` (``edgec bench --json``).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from edgec.errors import EdgecError

__all__ = ["render_html", "write_html_report", "load_bench", "report_artifact", "BENCH_SCHEMA"]

BENCH_SCHEMA = "edgec.bench/1"
MAX_LAYER_BARS = 40  # the per-layer charts show the largest layers; the tables list them all
MAX_BENCH_BYTES = 256 << 20

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.8em}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f4f4f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#666;font-style:italic}img{max-width:100%;display:block;margin:8px 0}
details summary{cursor:pointer;color:#345}code{background:#f4f4f4;padding:0 3px}
"""


# ---------------------------------------------------------------------------------------------- helpers

def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], numeric: set[int] = frozenset()) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f}"


def _num(x: Any, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def _short(name: str) -> str:
    return re.sub(r"\.weight$", "", name)


# ---------------------------------------------------------------------------------------------- sections

def _summary(manifest: dict[str, Any]) -> str:
    t = manifest.get("target", {})
    sizes = manifest.get("sizes", {})
    rows = [("edgec", manifest.get("edgec_version", "?")), ("created", manifest.get("created", "?")),
            ("source", manifest.get("source", {}).get("path", "?")),
            ("target", f"{t.get('name')} ({t.get('arch')}, {t.get('device')})"),
            ("weights in the model", f"{sizes.get('weights_bytes', 0):,} bytes"),
            ("parameters in the artifact", "-" if sizes.get("artifact_weights_bytes") is None
             else f"{sizes['artifact_weights_bytes']:,} bytes")]
    for kind in ("inputs", "outputs"):
        for spec in manifest.get(kind, []):
            rows.append((f"{kind[:-1]} {spec['name']}", f"{spec['dtype']} {tuple(spec.get('shape') or ())}"))
    v = manifest.get("verification")
    rows.append(("verification", "not run at compile time" if not v else
                 f"{'PASS' if v['passed'] else 'FAIL'}: max |diff| {v['max_abs_diff']:.3g} vs onnxruntime on the "
                 f"{v['reference']} ({v['device']})"))
    if manifest.get("compile_seconds") is not None:
        rows.append(("compile time", f"{manifest['compile_seconds']} s"))
    return "<h2>Artifact</h2>" + _table(None, rows)


def _layers_section(layers: dict[str, Any] | None) -> str:
    out = ["<h2>Per-layer weights and MACs, before and after the passes</h2>"]
    if not layers or not layers.get("stages"):
        why = (layers or {}).get("error") or "this artifact has no layers.json (compiled by an older edgec)"
        return out[0] + _note(f"Per-layer figures not recorded: {why}.")
    from edgec.toolchain import plots

    stages = layers["stages"]
    out.append(_note("One row per stage that changed the per-layer figures; " + layers.get("conventions", "")))
    out.append(_table(("after", "layers", "weights KiB", "MACs"),
                      [(s["after"], len(s["layers"]), _kib(s["weight_bytes"]), f"{s['macs']:,}") for s in stages],
                      {1, 2, 3}))
    out.append(_img(plots.stage_totals([s["after"] for s in stages], [s["weight_bytes"] for s in stages],
                                       [s["macs"] for s in stages]), "total weights and MACs after each stage"))
    first, last = stages[0], stages[-1]
    # layers are renamed by passes (BN folding rebuilds the convs): the MAC layers are matched in graph order
    mac_first = [r for r in first["layers"] if r[3]]
    mac_last = [r for r in last["layers"] if r[3]]
    if len(stages) > 1 and len(mac_first) == len(mac_last):
        rows = [(b[0], b[1], a[2], b[2], a[3], b[3]) for a, b in zip(mac_first, mac_last)]
        caption = f"{first['after']} → {last['after']} (Conv/Gemm/MatMul layers, matched in graph order)"
    else:
        rows = [(b[0], b[1], None, b[2], None, b[3]) for b in mac_last]
        caption = f"after {last['after']}" + (" (layer count changed: not matched to the source)"
                                               if len(stages) > 1 else "")
    if rows:
        shown = sorted(rows, key=lambda r: -max(r[3], r[2] or 0))[:MAX_LAYER_BARS]
        shown.sort(key=lambda r: rows.index(r))
        labels = [r[0] for r in shown]
        two = rows[0][2] is not None
        series_b = ({first["after"]: [r[2] / 1024 for r in shown]} if two else {}) | \
            {last["after"]: [r[3] / 1024 for r in shown]}
        series_m = ({first["after"]: [r[4] / 1e6 for r in shown]} if two else {}) | \
            {last["after"]: [r[5] / 1e6 for r in shown]}
        more = f" (the {len(shown)} largest of {len(rows)})" if len(shown) < len(rows) else ""
        out.append(_img(plots.grouped_barh(labels, series_b, "weights (KiB)", f"weights per layer{more}"),
                        "weights per layer"))
        out.append(_img(plots.grouped_barh(labels, series_m, "MACs (millions)", f"MACs per layer{more}"),
                        "MACs per layer"))
        out.append(f"<details><summary>table: {_e(caption)}</summary>" + _table(
            ("layer", "op", "KiB before", "KiB after", "MACs before", "MACs after"),
            [(r[0], r[1], _kib(r[2]), _kib(r[3]), "-" if r[4] is None else f"{r[4]:,}", f"{r[5]:,}")
             for r in rows], {2, 3, 4, 5}) + "</details>")
    return "".join(out)


def _pass_log(manifest: dict[str, Any]) -> str:
    rows = [(f"{e.get('stage', '')}: {e.get('pass', '')}", "yes" if e.get("changed") else "no",
             f"{e.get('nodes_before')} → {e.get('nodes_after')}", e.get("seconds", ""))
            for e in manifest.get("passes", [])]
    return "<h2>Pass log</h2>" + (_table(("pass", "changed", "nodes", "seconds"), rows, {3}) if rows
                                  else _note("No passes recorded."))


def _pass_reports(manifest: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e["report"] for e in manifest.get("passes", []) if e.get("pass") == name
            and isinstance(e.get("report"), dict)]


def _quantization(manifest: dict[str, Any]) -> str:
    head = "<h2>Quantization: SQNR per layer</h2>"
    reports = [r for r in _pass_reports(manifest, "quantize_qdq") if r.get("layers")]
    if "quantization" not in manifest or not reports:
        return head + _note("Not quantized (compile with --quantize int8 to see per-layer SQNR).")
    from edgec.toolchain import plots

    q = manifest["quantization"]
    layers = reports[-1]["layers"]
    out = [head, _note(f"{q.get('mode')} weights, calibration: {q.get('calibration')}; SQNR = 10·log10(signal / "
                       "quantization noise), higher is better")]
    labels = [_short(layer.get("weight") or layer["layer"]) for layer in layers]
    series = {"weight SQNR dB": [layer.get("weight_sqnr_db") or 0.0 for layer in layers]}
    if any(layer.get("output_sqnr_db") is not None for layer in layers):
        series["output SQNR dB"] = [layer.get("output_sqnr_db") or 0.0 for layer in layers]
    out.append(_img(plots.grouped_barh(labels, series, "SQNR (dB)", "quantization SQNR per layer"),
                    "quantization SQNR per layer"))
    out.append(_table(("layer", "op", "precision", "weight SQNR dB", "output SQNR dB", "bytes float → quantized"),
                      [(lab, layer["op"], layer.get("precision", f"int{layer.get('bits')}"),
                        _num(layer.get("weight_sqnr_db"), ".1f"), _num(layer.get("output_sqnr_db"), ".1f"),
                        f"{layer.get('float_bytes', 0):,} → {layer.get('quantized_bytes', 0):,}")
                       for lab, layer in zip(labels, layers)], {3, 4}))
    return "".join(out)


def _pruning(manifest: dict[str, Any]) -> str:
    head = "<h2>Pruning: channels per layer</h2>"
    reports = [r for r in _pass_reports(manifest, "prune_channels") if r.get("layers")]
    if not reports:
        return head + _note("Not pruned (compile with --prune macs=0.5 to see channels per layer).")
    from edgec.toolchain import plots

    rep = reports[-1]
    layers = rep["layers"]
    out = [head, _note(f"criterion {rep.get('criterion')}, budget {json.dumps(rep.get('budget', {}))}; MACs "
                       f"{rep['macs'][0]:,} → {rep['macs'][1]:,} ({100 * rep.get('macs_removed', 0):.1f} % removed)")]
    labels = [layer["layer"] for layer in layers]
    out.append(_img(plots.grouped_barh(labels, {"before": [layer["out_channels"][0] for layer in layers],
                                                "after": [layer["out_channels"][1] for layer in layers]},
                                       "output channels", "output channels per layer"), "channels per layer"))
    out.append(_table(("layer", "op", "out channels", "in channels", "params", "MACs"),
                      [(layer["layer"], layer["op"], f"{layer['out_channels'][0]} → {layer['out_channels'][1]}",
                        "-" if not layer.get("in_channels") else
                        f"{layer['in_channels'][0]} → {layer['in_channels'][1]}",
                        f"{layer['params'][0]:,} → {layer['params'][1]:,}",
                        f"{layer['macs'][0]:,} → {layer['macs'][1]:,}") for layer in layers]))
    return "".join(out)


def _accuracy(manifest: dict[str, Any]) -> str:
    head = "<h2>Accuracy vs size</h2>"
    mp = (manifest.get("quantization") or {}).get("mixed_precision") or {}
    steps = [s for s in mp.get("steps") or [] if s.get("drop_pt") is not None and s.get("weight_bytes")]
    if not steps:
        return head + _note("Not measured at compile time (compile with --quantize int8 --max-drop PT --eval "
                            "val.npz to measure accuracy against size).")
    from edgec.toolchain import plots

    points = [(s["weight_bytes"] / 1024, -float(s["drop_pt"]), s["step"]) for s in steps]
    return head + _note(f"{mp.get('metric')} on {mp.get('measured_on')}: each step of the mixed-precision search; "
                        f"bound {mp.get('max_drop')} pt") + \
        _img(plots.scatter(points, "layer weights (KiB)", "accuracy change vs float (pt)",
                           "accuracy vs size"), "accuracy vs size") + \
        _table(("step", "weights KiB", "drop pt", "best"),
               [(s["step"], _kib(s["weight_bytes"]), f"{s['drop_pt']:+.2f}", "yes" if s.get("best") else "")
                for s in steps], {1, 2})


def _bench(benches: Sequence[tuple[str, dict[str, Any]]], manifest_sha256: str | None) -> str:
    head = "<h2>Latency</h2>"
    if not benches:
        return head + _note("No bench results given (edgec bench DIR --json b.json, then edgec report DIR -o "
                            "report.html --bench b.json).")
    from edgec.toolchain import plots

    out = [head]
    for name, b in benches:
        dev = b.get("device") or {}
        host = b.get("host") or {}
        title = f"{name}: device {dev.get('name')}" + (f" ({dev.get('key')})" if dev.get("key") else "") + \
            f", {b.get('threads')} thread(s), {len(b.get('samples_ms') or [])} runs"
        out.append(f"<h3>{_e(title)}</h3>")
        if dev.get("emulated"):
            out.append(_note("Emulated device: these times prove the timing path, they are not performance "
                             "figures."))
        pinned = (b.get("artifact") or {}).get("manifest_sha256")
        if manifest_sha256 and pinned and pinned != manifest_sha256:
            out.append(_note(f"Measured on another artifact (manifest sha256 {pinned[:12]}…, this one is "
                             f"{manifest_sha256[:12]}…)."))
        out.append(_note(f"host: {host.get('cpu')} ({host.get('arch')}); load {_num(b.get('load_ms'))} ms, "
                         f"first run {_num(b.get('first_run_ms'))} ms, peak RSS "
                         f"{_num((b.get('peak_rss_bytes') or 0) / 2**20, '.1f')} MiB"))
        lat = b.get("latency_ms") or {}
        keys = [k for k in ("min", "mean", "std", "p50", "p90", "p95", "p99", "max") if k in lat]
        rows = [["edgec", *(_num(lat[k], ".4g") for k in keys)]]
        for peer, c in (b.get("compare") or {}).items():
            rows.append([peer, *(_num((c.get("latency_ms") or {}).get(k), ".4g") for k in keys)])
            ratio = c.get("ratio") or {}
            rows.append([f"ratio edgec/{peer}", *(_num(ratio.get(k), ".3f") for k in keys)])
        out.append(_table(("ms", *keys), rows, set(range(1, len(keys) + 1))))
        samples = [float(x) for x in b.get("samples_ms") or []]
        if samples:
            marks = {k: float(lat[k]) for k in ("p50", "p90", "p99") if k in lat}
            out.append(_img(plots.histogram(samples, marks, "latency distribution"), "latency distribution"))
        else:
            out.append(_note("No per-run samples in this bench JSON."))
        profile = b.get("profile")
        if profile:
            out.append(_table(("op", "calls", "time ms", "%", "cumulative %"),
                              [(p.get("op"), p.get("calls"), _num(p.get("time_ms"), ".4g"),
                                _num(p.get("percent"), ".1f"), _num(p.get("cumulative_percent"), ".1f"))
                               for p in profile], {1, 2, 3, 4}))
        else:
            out.append(_note("No per-operator profile (edgec bench --profile records one)."))
    return "".join(out)


# ---------------------------------------------------------------------------------------------- page

def render_html(manifest: dict[str, Any], layers: dict[str, Any] | None,
                benches: Sequence[tuple[str, dict[str, Any]]] = (), manifest_sha256: str | None = None) -> str:
    """The whole page as one string: every chart inlined, no URL."""
    name = Path(str(manifest.get("source", {}).get("path", "model"))).name
    body = [f"<h1>edgec report: {_e(name)} for {_e(manifest.get('target', {}).get('name', '?'))}</h1>",
            _summary(manifest), _layers_section(layers), _bench(benches, manifest_sha256),
            _quantization(manifest), _pruning(manifest), _accuracy(manifest), _pass_log(manifest)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>edgec report: {_e(name)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def write_html_report(path: Path, manifest: dict[str, Any], layers: dict[str, Any] | None,
                      benches: Sequence[tuple[str, dict[str, Any]]] = (), manifest_sha256: str | None = None) -> None:
    """Write the page to ``path`` (the caller stages it: compile's artifact folder, or staged_file)."""
    Path(path).write_text(render_html(manifest, layers, benches, manifest_sha256), encoding="utf-8")


def load_bench(path: str | Path) -> dict[str, Any]:
    """A bench JSON of schema ``edgec.bench/1``, checked enough that the report can read it."""
    path = Path(path)
    hint = "give a file written by `edgec bench DIR --json FILE`"
    if not path.is_file():
        raise EdgecError(f"--bench {path} does not exist or is not a file", hint)
    if path.stat().st_size > MAX_BENCH_BYTES:
        raise EdgecError(f"--bench {path} is {path.stat().st_size} bytes, too large for a bench JSON", hint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EdgecError(f"--bench {path} is not valid JSON", hint) from None
    if not isinstance(data, dict) or data.get("schema") != BENCH_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else None
        raise EdgecError(f"--bench {path} has schema {got!r}, not {BENCH_SCHEMA!r}", hint)
    for key, kind in (("latency_ms", dict), ("samples_ms", list), ("device", dict)):
        if key in data and data[key] is not None and not isinstance(data[key], kind):
            raise EdgecError(f"--bench {path}: '{key}' must be a JSON {'object' if kind is dict else 'array'}", hint)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data.get("samples_ms") or []):
        raise EdgecError(f"--bench {path}: 'samples_ms' must hold numbers", hint)
    if data.get("profile") is not None and not (isinstance(data["profile"], list)
                                                and all(isinstance(p, dict) for p in data["profile"])):
        raise EdgecError(f"--bench {path}: 'profile' must be null or an array of objects", hint)
    return data


def report_artifact(artifact_dir: str | Path, output: str | Path, bench_paths: Sequence[str | Path] = ()) -> Path:
    """``edgec report``: the artifact (hash-checked) and bench files → one HTML page at ``output`` (staged)."""
    from edgec.toolchain.artifact import open_artifact
    from edgec.toolchain.writes import check_output_file, staged_file

    output = Path(output)
    check_output_file(output, [artifact_dir, *bench_paths])
    artifact = open_artifact(artifact_dir)
    layers = None
    if "layers.json" in artifact.manifest["files"]:
        try:
            layers = json.loads(artifact.verified_file("layers.json").read_text(encoding="utf-8"))
        except ValueError:
            raise EdgecError(f"{artifact.path}/layers.json is not valid JSON", "recompile the artifact") from None
    benches = [(Path(p).name, load_bench(p)) for p in bench_paths]
    with staged_file(output) as tmp:
        write_html_report(tmp, artifact.manifest, layers, benches, artifact.manifest_sha256)
    return output
