"""The register-tile search: for each conv that edgec's Conv2dNCHWc rule schedules (and the 1×1 conv of a fused
depthwise → 1×1 pair), the rule's other register tiles are measured and the fastest is logged. The rule's choice
is a heuristic, and a per-layer grid over its tile is what pays (the ResNet stem: 4x4 beats the heuristic's 14x2
by ~10 %). A tile is only used once search.py has re-measured it against the default (``verified_tile`` in the
side log), and compile then schedules the conv with :func:`with_tile`.
"""

from __future__ import annotations

import time
from typing import Any

from edgec.targets.cpu.options import DEFAULT, CpuOptions
from edgec.targets.cpu.tuning.database import SideLog, append_measured
from edgec.targets.cpu.tuning.measure import Run, measure

MAX_TILES = 12  # register tiles tried per conv by the tile search


def tile_candidates(func, target) -> list[tuple[int, int]]:
    """Register tiles (columns, channel blocks) to try for a conv that edgec's Conv2dNCHWc rule schedules, or the
    1×1 conv of a fused depthwise → 1×1 pair (kernels/dw_pointwise), the rule's own choice excluded: those that fit
    the register file with at least 8 accumulators, most first."""
    from tvm import s_tir

    from edgec.targets.cpu import sched
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.widened import NARROW

    sch = s_tir.Schedule(func)
    conv = sched.find_block(sch, "conv2d_NCHWc")
    if conv is None or sched.find_block(sch, NARROW) is not None or len(sch.get_loops(conv)) != 8:
        return []
    _, occ, _, ow, ocb, _, _, _ = sch.get_loops(conv)
    width, chunks = sched.extent(sch, ow), sched.extent(sch, occ)
    isa = isa_of(target)
    vec, registers = max(1, sched.extent(sch, ocb) // isa.lanes), isa.vector_registers
    default = sched.register_tile(width, chunks, vec, registers)
    tiles = [(r, o) for r in range(1, min(width, 28) + 1) if width % r == 0
             for o in range(1, min(chunks, 8) + 1) if chunks % o == 0
             if 8 <= r * o * vec and r * o * vec + o * vec + 1 <= registers and (r, o) != default]
    return sorted(tiles, key=lambda t: (-t[0] * t[1], -t[1]))[:MAX_TILES]


def with_tile(workload, tile, target, options: CpuOptions = DEFAULT):
    """The workload scheduled by the conv rule (or the fused depthwise → 1×1 rule) with register tile ``tile``."""
    import tvm

    from edgec.targets.cpu.kernels.direct import Conv2dNCHWc
    from edgec.targets.cpu.kernels.dw_pointwise import DepthwisePointwise

    rule = DepthwisePointwise if _is_depthwise_pointwise(workload["main"]) else Conv2dNCHWc
    with target:
        sch = rule(options, *tile).apply(workload["main"], target, False)
    return tvm.IRModule({"main": sch.mod["main"].with_attr("tirx.is_scheduled", True)})


def _is_depthwise_pointwise(func) -> bool:
    """Whether ``func`` is a fused depthwise → 1×1 pair (kernels/dw_pointwise), not a plain conv."""
    from tvm import s_tir

    from edgec.targets.cpu import sched

    return sched.find_block(s_tir.Schedule(func), "depthwise_conv2d_NCHWc") is not None


def tile_search_version(func) -> int:
    """Which tile search covers ``func``: 1 for plain convs, 2 for fused depthwise → 1×1 pairs (searched since
    version 2; a database whose search predates it searches them again)."""
    return 2 if _is_depthwise_pointwise(func) else 1


def search_tiles(run: Run, extracted: list, reports: list, wkeys: list[str], side: SideLog,
                 deadline: float) -> None:
    """Measure the conv rule's other register tiles for each conv task (a few seconds per conv), one task at a
    time until ``deadline`` (time.monotonic()), logging each task's fastest in the side log and its report.
    Tasks searched by an earlier run are skipped."""
    todo = [i for i in range(len(extracted)) if wkeys[i] not in side.tiles
            and side.tiles_searched.get(wkeys[i], 0) < tile_search_version(extracted[i].dispatched[0]["main"])]
    if not todo:
        return
    target = run.target()
    searched = measured = 0
    with run.session() as (builder, runner):
        for i in todo:
            if time.monotonic() >= deadline:
                break
            workload = extracted[i].dispatched[0]
            with target:
                tiles = tile_candidates(workload["main"], target)
            mods = [with_tile(workload, tile, target, run.options) for tile in tiles]
            times = {tile: secs[0] for tile, secs in zip(tiles, measure(mods, target, builder, runner)) if secs}
            entry: dict[str, Any] = {"w": wkeys[i], "tiles_searched": tile_search_version(workload["main"])}
            if times:
                best = min(times, key=times.get)
                entry["tile"] = list(best)
                reports[i].tile = best
                side.tiles[wkeys[i]] = entry["tile"]
                searched, measured = searched + 1, measured + len(times)
            append_measured(run.folder, entry)
    if searched:
        run.say(f"tiles: {measured} register tile(s) of edgec's conv rule measured for {searched} conv(s)")
