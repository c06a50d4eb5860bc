"""Calibration data for quantization and pruning: where inputs come from (:mod:`.sources`), how a model's
intermediate activations are read on them (:mod:`.capture`, the one path both use), and streaming range
observers (:mod:`.observers`) whose state is bounded however many samples they see."""
