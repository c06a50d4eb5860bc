"""``edgec substitute``: a float ONNX model → the same model with binary or adder layers in edgec's function form.

The output runs in onnxruntime (the edgec ops carry their definitions as model-local functions) and compiles with
``edgec compile``. Substitution changes what the model computes: it gives the structure and storage a binary or
adder net needs; accuracy comes from training with :mod:`edgec.nn` (or distillation).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgec.errors import EdgecError

# --to value → the pass that does it; one row per kind.
PASSES = {"binary": "substitute_binary", "adder": "substitute_adder"}


@dataclasses.dataclass(frozen=True)
class SubstituteOptions:
    to: str
    skip: tuple[str, ...] = ()
    input_shapes: tuple[str, ...] = ()


@dataclasses.dataclass
class SubstituteResult:
    output: Path
    report: dict[str, Any]
    notes: list[str]


def substitute(source: str | Path, output: Path, options: SubstituteOptions) -> SubstituteResult:
    """Load ``source``, run the substitution pass, check the result in onnx's checker, write it (staged)."""
    import onnx
    import onnx_ir as ir

    from edgec.passes import get_pass
    from edgec.toolchain.dynamic_dims import restore_dynamic, source_dims
    from edgec.toolchain.load import load_model
    from edgec.toolchain.writes import check_output_file, staged_file

    if options.to not in PASSES:
        raise EdgecError(f"--to {options.to} is not a substitution edgec knows",
                         f"use one of: {', '.join(PASSES)}")
    output = Path(output)
    if output.suffix != ".onnx":
        raise EdgecError(f"output {output} is not an .onnx path", "pass -o sub.onnx")
    check_output_file(output, [source])
    model = load_model(source, list(options.input_shapes))
    step = get_pass(PASSES[options.to], skip=options.skip)
    report = step(model).report
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    proto, note = restore_dynamic(proto, source_dims(source))
    with staged_file(output) as tmp:
        onnx.save(proto, str(tmp))
    return SubstituteResult(output, report, [note] if note else [])


def format_report(report: dict[str, Any]) -> list[str]:
    """One row per converted layer (bytes for binary layers), then the skipped ones."""
    lines = []
    for row in report["layers"]:
        size = (f"  {row['float_bytes']:,} B fp32 -> {row['bits_bytes']:,} B bits "
                f"({row['weight_ratio']}x) + {row['scale_shift_bias_bytes']:,} B scale/shift/bias"
                if "bits_bytes" in row else "")
        lines.append(f"{row['layer']}: {row['op']}, {row['weights']:,} weights{size}")
    if report.get("skipped"):
        lines.append(f"kept float: {', '.join(report['skipped'])}")
    return lines
