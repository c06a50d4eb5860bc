"""Hand-written CUDA kernels for edgec's own ops (binary and adder layers) and the table of their Relax passes.

Why a package beside ``cpu/``: the CUDA builder (:mod:`edgec.targets.cuda`) schedules standard ops with dlight's
GPU rules, but edgec's ops reach Relax as their float bodies, which dlight can only run as float convs; these
kernels replace the bodies (found by the CPU kernels' matchers) before the zero pipeline. :mod:`.registry`
holds the ordered table, :mod:`.host_check` runs a kernel's arithmetic on a CPU for the tests.
"""
