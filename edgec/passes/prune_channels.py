"""Structured channel pruning as a pipeline pass (``edgec compile --prune macs=0.5``).

The work lives in :mod:`edgec.pruning` (dependency groups, criteria, budgets, rewrite, least-squares recovery),
which is too large for one pass module; this pass only carries the options and the report, so pruning shows up in
the artifact's pass log with per-layer channels, params and MACs before and after. It must run before
``fold_batchnorm``: BatchNorm scales are a criterion, and BN parameters are members of the channel groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.passes.base import EdgecPass, register_pass


@register_pass
class PruneChannels(EdgecPass):
    name = "prune_channels"
    description = "remove whole channels (coupled groups) by a ratio or MACs budget, optionally refit consumers"

    def __init__(self, ratio: float | None = None, macs: float | None = None,
                 layer_ratios: dict[str, float] | str | Path | None = None, criterion: str = "l1",
                 round_to: int = 1, calib: np.ndarray | str | Path | None = None, reconstruct: bool = False,
                 calib_samples: int = 256, max_group_ratio: float = 0.9, allocation: str = "score",
                 latency_ms: float | None = None, timer: Any = None,
                 latency_cache: str | Path | None = None) -> None:
        """``timer`` (a :class:`edgec.pruning.budget.LatencyTimer`) measures a ``latency_ms`` budget: the caller
        chooses how models are compiled and where they are timed; this pass only prunes ONNX."""
        super().__init__()
        from edgec.pruning.budget import Budget, load_layer_ratios
        from edgec.pruning.calib import load_calibration

        if isinstance(layer_ratios, (str, Path)):
            layer_ratios = load_layer_ratios(layer_ratios)
        self.budget = Budget(ratio=ratio, macs=macs, layer_ratios=layer_ratios, round_to=int(round_to),
                             max_group_ratio=max_group_ratio, allocation=allocation,
                             latency_ms=latency_ms, timer=timer,
                             latency_cache=str(latency_cache) if latency_cache is not None else None)
        self.budget.validate()  # a bad budget fails before any work
        self.criterion = criterion
        self.calib = load_calibration(calib) if isinstance(calib, (str, Path)) else calib
        self.reconstruct = bool(reconstruct)
        self.calib_samples = int(calib_samples)

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        from edgec.pruning import prune

        return prune(model, self.budget, self.criterion, self.calib, self.reconstruct, self.calib_samples)
