"""Elementwise chains that a layout transform undoes run in the plain layout instead (a Relax pass after the
layout pass).

Why: TVM's ConvertLayout gives an elementwise op the blocked layout of one of its inputs, even where everything
around it is plain. Between two kernels that read and write NCHW (edgec's binary and adder convs) a residual add
whose other input comes from a blocked conv became ``T⁻¹(relu(add(T(y), r)))``: the plain output blocked, added,
and unblocked again, while ``T⁻¹(r)`` was already computed for the next kernel. On the embedded model's BNN those two
transforms were 8 of its 82 µs. Here such a chain is rebuilt in the plain layout, from

* ``T(x)`` whose ``T`` the final transform undoes → ``x`` itself,
* a value whose unblocked copy ``T⁻¹(v)`` the function already computes (earlier) → that copy,
* a constant → ``T⁻¹(constant)``, folded at build time,

and only when every input is one of those, so the rewrite never adds a transform that runs; the old chain, now
unused, is removed by dead-code elimination. Each op of the chain must have one use (the next op), so no work is
duplicated.
"""

from __future__ import annotations

from typing import Any

from edgec.targets.relax_rewrite import static_shape

UNARY = {"relax.nn.relu", "relax.sigmoid", "relax.tanh", "relax.exp", "relax.negative", "relax.abs",
         "relax.nn.silu", "relax.sqrt", "relax.square"}
BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum"}


def undoes(outer: Any, inner: Any) -> bool:
    """Whether index map ``outer`` applied after ``inner`` is the identity (NCHW8c → NCHW after NCHW → NCHW8c)."""
    import tvm

    if len(outer.initial_indices) != len(inner.final_indices):
        return False
    analyzer = tvm.sym.Analyzer()
    back = outer.map_indices(list(inner.final_indices))
    return len(back) == len(inner.initial_indices) and all(
        analyzer.can_prove_equal(b, i) for b, i in zip(back, inner.initial_indices))


def _is_constant(expr: Any) -> bool:
    """A constant tensor (relax.const builds a GenericConst)."""
    import tvm

    return isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy")


def sink_layout_transforms_pass():
    """Relax pass: see the module docstring. Runs DeadCodeElimination after itself."""
    import tvm
    from tvm import relax

    from edgec.targets.relax_rewrite import rewrite_with_builder

    @relax.expr_functor.mutator
    class _Sink(relax.PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.uses: dict[Any, int] = {}
            self.order: dict[Any, int] = {}
            self.unblocked: list[tuple[Any, Any, Any]] = []  # (source var, index map, var holding T⁻¹(source))

        def visit_function_(self, func: Any) -> Any:
            self.uses.clear()
            self.order.clear()
            self.unblocked.clear()
            for block in getattr(func.body, "blocks", []):
                for binding in block.bindings:
                    self.order[binding.var] = len(self.order)
                    value = binding.value
                    for var in relax.analysis.free_vars(value) if isinstance(value, relax.Expr) else []:
                        self.uses[var] = self.uses.get(var, 0) + 1
                    if self._transform(value) is not None and isinstance(value.args[0], relax.Var):
                        self.unblocked.append((value.args[0], value.attrs.index_map, binding.var))
            for var in relax.analysis.free_vars(func.body.body):
                self.uses[var] = self.uses.get(var, 0) + 1
            return super().visit_function_(func)

        @staticmethod
        def _transform(expr: Any) -> Any:
            if (isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == "relax.layout_transform"
                    and expr.attrs.pad_value is None):
                return expr.attrs.index_map
            return None

        def _bound(self, var: Any) -> Any:
            return self.lookup_binding(var) if isinstance(var, relax.Var) else None

        def _plain(self, expr: Any, index_map: Any, blocked: tuple, plain: tuple, before: int) -> Any:
            """``expr`` (blocked, shape ``blocked``) in the plain layout without a new run-time transform: a
            function that emits what that takes and returns the plain expression, or None."""
            if _is_constant(expr):
                return lambda: relax.op.layout_transform(expr, index_map)
            if not isinstance(expr, relax.Var) or static_shape(expr) != blocked:
                return None
            value = self._bound(expr)
            inner = self._transform(value)
            if inner is not None and static_shape(value.args[0]) == plain and undoes(index_map, inner):
                return lambda: self.visit_expr(value.args[0])
            for source, imap, var in self.unblocked:
                if source.same_as(expr) and self.order.get(var, before) < before and imap.is_equivalent_to(index_map):
                    return lambda var=var: self.visit_expr(var)
            op = getattr(getattr(value, "op", None), "name", None)
            if self.uses.get(expr, 0) != 1 or op not in UNARY | BINARY:
                return None
            if any(_is_constant(arg) and static_shape(arg) != blocked for arg in value.args):
                return None  # a broadcast constant in the blocked layout: not this simple rewrite
            parts = [self._plain(arg, index_map, blocked, plain, before) for arg in value.args]
            if any(p is None for p in parts):
                return None
            return lambda: self.builder_.emit(relax.Call(value.op, [p() for p in parts], value.attrs))

        def visit_var_binding_(self, binding: Any) -> None:
            value = binding.value
            index_map = self._transform(value)
            if (index_map is not None and isinstance(value.args[0], relax.Var)
                    and isinstance(binding.var, relax.DataflowVar)):
                source = value.args[0]
                blocked, plain = static_shape(source), static_shape(binding.var)
                op = getattr(getattr(self._bound(source), "op", None), "name", None)
                if blocked is not None and plain is not None and (op in UNARY or op in BINARY):
                    build = self._plain(source, index_map, blocked, plain, self.order.get(binding.var, 0))
                    if build is not None:
                        self.set_var_remap(binding.var, build())
                        return
            super().visit_var_binding_(binding)

    @tvm.transform.module_pass(opt_level=0, name="EdgecSinkLayoutTransforms")
    def _pass(mod: Any, _ctx: Any) -> Any:
        return relax.transform.DeadCodeElimination()(rewrite_with_builder(mod, _Sink))

    return _pass
