"""The pass pipeline driver: run named passes in order and keep a log of what each one changed.

The log is part of the artifact's manifest: it is how a user finds out why the compiled graph differs from the
model they gave us (and how a later CI gate can tell which rewrite moved accuracy or size).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import onnx_ir as ir

import edgec.passes  # noqa: F401  (registers the built-in passes)
from edgec.passes.base import EdgecPass, PassReport, count_nodes, get_pass

# Cleanup that every compile runs. fold_constants runs again after BN folding and identity removal because those
# expose new constant expressions; it is cheap when there is nothing left to fold. unroll_rnn runs after the first
# fold (an LSTM's weights and zero initial states are often computed by Slice/Concat/Expand) and before the rest,
# so later passes (and quantization) see its MatMuls. if_to_where comes first: TVM has no If, and a branch may
# hold an LSTM (Silero VAD).
DEFAULT_PASSES: tuple[str, ...] = ("fold_constants", "if_to_where", "remove_identity", "unroll_rnn", "fold_batchnorm",
                                   "fuse_pad_into_conv", "canonicalize_clip", "scalar_constants",
                                   "conv_transpose_to_conv",
                                   "fold_constants", "remove_dead")


def run_pipeline(model: ir.Model, passes: Sequence[str | EdgecPass] = DEFAULT_PASSES
                 ) -> tuple[ir.Model, list[dict[str, Any]]]:
    """Run ``passes`` in place on ``model``; return it with the pass log (one JSON-able dict per pass)."""
    log: list[dict[str, Any]] = []
    for item in passes:
        p = get_pass(item) if isinstance(item, str) else item
        nodes_before = count_nodes(model)
        start = time.perf_counter()
        result = p(model)
        model = result.model
        log.append({
            "pass": p.name,
            "changed": bool(result.modified),
            "seconds": round(time.perf_counter() - start, 4),
            "nodes_before": nodes_before,
            "nodes_after": count_nodes(model),
            **({"report": result.report} if isinstance(result, PassReport) and result.report else {}),
        })
    return model, log
