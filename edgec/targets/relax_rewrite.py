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


def rewrite_with_builder(mod: Any, mutator: Any) -> Any:
    """``mod`` with every Relax function visited by one ``mutator`` (a ``relax.PyExprMutator`` built with the
    module) whose builder also receives the functions the rewrite adds (``call_te``, ``add_func``): the builder's
    module. :func:`function_rewrite` serves mutators that add none."""
    from tvm import relax

    rewriter = mutator(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def constant_value(expr: Any, lookup: Any) -> Any:
    """The numpy value of ``expr`` when it is a constant tensor, or a transpose of one (ONNX Gemm's transB arrives
    as permute_dims of the stored weight; FoldConstant runs later), else None. ``lookup`` maps a dataflow variable
    to the expression bound to it (a mutator's ``lookup_binding``)."""
    import numpy as np
    import tvm
    from tvm import relax

    while isinstance(expr, relax.Var) and lookup(expr) is not None:
        expr = lookup(expr)

    def constant(e: Any) -> bool:  # relax.const builds a GenericConst; tensors, not PrimValues
        return isinstance(e, tvm.ir.expr.Constant) and hasattr(e.value, "numpy")

    if constant(expr):
        return expr.value.numpy()
    if (isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == "relax.permute_dims"
            and constant(expr.args[0])):
        axes = expr.attrs.axes
        return np.transpose(expr.args[0].value.numpy(), [int(a) for a in axes] if axes is not None else None)
    return None


def static_shape(expr: Any) -> tuple[int, ...] | None:
    """The static shape of a Relax tensor expression, or None (unknown or symbolic)."""
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(v) for v in shape)
    except (TypeError, ValueError):  # symbolic
        return None
