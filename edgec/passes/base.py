"""The contract every graph pass follows, on top of onnx_ir's pass infrastructure.

A pass is an ``onnx_ir.passes.InPlacePass`` that also says *what* it changed: its ``call`` returns a
:class:`PassReport`, an ``onnx_ir`` ``PassResult`` carrying a JSON-able ``report`` dict. The pipeline driver puts
those reports in the artifact's pass log, so a user can see why the compiled model differs from the source.
Passes know ONNX only (never TVM), so each one can be checked against onnxruntime on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import onnx_ir as ir
import onnx_ir.passes

# A node's metadata_props key through which the pass that made the node asks quantization for a precision
# ("float", "int8", ...); a user's per-layer override wins (passes/quantize_qdq.layer_precision).
PRECISION_HINT = "edgec.precision"


@dataclasses.dataclass
class PassReport(onnx_ir.passes.PassResult):
    report: dict[str, Any] = dataclasses.field(default_factory=dict)


class EdgecPass(onnx_ir.passes.InPlacePass):
    """Base class: subclasses set ``name`` and implement ``rewrite`` returning a report dict.

    ``rewrite`` must put ``"changed": bool`` in the report; the base turns it into onnx_ir's ``modified`` flag.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        raise NotImplementedError

    def call(self, model: ir.Model) -> PassReport:
        report = self.rewrite(model)
        changed = bool(report.pop("changed"))
        return PassReport(model, modified=changed, report=report)


_PASSES: dict[str, type[EdgecPass]] = {}


def register_pass(cls: type[EdgecPass]) -> type[EdgecPass]:
    """Class decorator: make a pass available to pipelines by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    _PASSES[cls.name] = cls
    return cls


def get_pass(name: str, **options: Any) -> EdgecPass:
    from edgec.errors import EdgecError

    if name not in _PASSES:
        raise EdgecError(f"unknown pass '{name}'", f"use one of: {', '.join(sorted(_PASSES))}")
    return _PASSES[name](**options)


def pass_names() -> list[str]:
    return sorted(_PASSES)


def count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


def ops_histogram(model: ir.Model) -> dict[str, int]:
    hist: dict[str, int] = {}
    for node in model.graph.all_nodes():
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
    return hist


def node_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per-op change in node count (negative: removed), for readable pass reports."""
    ops = set(before) | set(after)
    return {op: after.get(op, 0) - before.get(op, 0) for op in sorted(ops) if after.get(op, 0) != before.get(op, 0)}


PassFactory = Callable[..., EdgecPass]


def replace_value(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Every use of ``old`` becomes ``new``, graph outputs included; a graph output keeps its name (what users and
    the manifest know it by), so ``new`` takes it."""
    name = old.name if old.is_graph_output() else None
    for i, out in enumerate(graph.outputs):
        if out is old:
            graph.outputs[i] = new
    old.replace_all_uses_with(new)
    if name is not None:
        old.name = None
        new.name = name
