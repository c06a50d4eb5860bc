"""ONNX → Relax: the one place that calls TVM's ONNX importer.

The importer reports unsupported operators as a bare Python error deep in a traceback; users need the op *and*
the node that uses it, so the graph is checked against the importer's own convert map first.
"""

from __future__ import annotations

import onnx

from edgec.errors import EdgecError


def supported_ops() -> set[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map())


def check_supported(model: onnx.ModelProto) -> None:
    known = supported_ops()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            raise EdgecError(f"operator {op} (node '{node.name or node.output[0]}') is not supported by TVM's "
                             f"ONNX importer",
                             "replace it in the model (or export without it); `edgec inspect` lists the ops")


def to_relax(model: onnx.ModelProto):
    """Import a canonical (static-shape, folded) ONNX model into a Relax IRModule with weights bound."""
    from tvm.relax.frontend.onnx import from_onnx

    check_supported(model)
    shapes = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    try:
        return from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
        raise EdgecError(f"TVM's ONNX importer failed: {first}",
                         "run `edgec inspect` on the model and report the failing op; --verbose shows the trace"
                         ) from exc
