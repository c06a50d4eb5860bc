"""Calibration data for quantization: where inputs come from (:mod:`.sources`) and streaming range observers
(:mod:`.observers`) that keep a fixed-size state however many samples they see."""
