"""Compilation targets: preset tables and one builder per family (cpu, cuda)."""

from edgec.targets.base import BuildInfo, TargetPreset, get_builder, presets, resolve_target

__all__ = ["BuildInfo", "TargetPreset", "get_builder", "presets", "resolve_target"]
