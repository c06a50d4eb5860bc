"""One way to turn a Relax expression mutator into a module pass (the CPU backend's graph rewrites use it)."""

from __future__ import annotations

from typing import Any


def function_rewrite(name: str, mutator: Any):
    """A module pass that runs ``mutator`` (a ``relax.PyExprMutator`` class, built with the module) over every Relax
    function of the module."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = mutator(mod).visit_expr(func)
        return mod

    return _pass
