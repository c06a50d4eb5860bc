"""Low-bit weights in the artifact: int4 packed two per byte, binary (±1) eight per byte, unpacked at run time.

TVM 0.27's ONNX importer cannot read INT4 initializers (its tensor copy expects one byte per element) and ignores
DequantizeLinear's ``block_size``. So the QDQ model is prepared before import (:func:`widen_low_bit`):

* an INT4/UINT4 initializer becomes INT8/UINT8 holding the same values (a lossless widening for the importer);
* a blocked (group-wise) weight DequantizeLinear ``DQ(wq, s[.., K/B, ..], axis, block_size=B)`` becomes
  ``Mul(DQ(wq, 1.0), S)`` with ``S`` the scale repeated over each block: the same float weight, in a form the
  importer reads. ``edgec/targets/qdq_lower.py`` recognises it and lowers the layer to integer partial sums per
  block (see ``_Rewriter.grouped_core``).

After TVM has folded the weights into their final (blocked, VNNI-repacked) layouts, :func:`pack_int4_pass` replaces
every int8 constant argument of a kernel whose values all lie in [-8, 7] (the int4 weights: an int8 weight's
absmax always quantizes to ±127) by a packed uint8 constant of half the elements plus a call to an unpack kernel
(:func:`unpack_int4_te`) that rebuilds the int8 tensor in front of the integer conv/matmul. Packing is lossless,
so it never changes a result. Element ``f`` of the flattened tensor is nibble ``f % 2`` (low first) of byte
``f // 2``; the unpack sign-extends it: ``v = (b >> 4·(f % 2)) & 0xF; v − 16 if v ≥ 8``.

:func:`constant_bytes` measures what the compiled executable holds (every constant of the final Relax module):
the artifact's weight bytes in the manifest.

Binary weights (``--weights binary``: int8 ±1 times a scale α, see ``qmath.binarize_weight``) go through the same
pass: a constant whose values are all −1 or +1 (no int4 or int8 weight is: their absmax quantizes to ±7 / ±127) is
packed one bit per element, bit ``f % 8`` (least significant first) of byte ``f // 8``, 1 for +1 and 0 for −1; the
unpack is ``v = 2·((b >> (f % 8)) & 1) − 1``. A binary tensor that the layout padded with zeros (e.g. input
channels rounded up to the VNNI depth) is not all ±1: it falls back to int4 packing, still lossless.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["widen_low_bit", "pack_int4", "unpack_int4_reference", "unpack_int4_te", "pack_int4_pass",
           "pack_binary", "unpack_binary_reference", "pack_low_bit", "packed_bits", "constant_bytes",
           "empty_pack_stats"]

_LOW_BIT = {TensorProto.INT4: (TensorProto.INT8, np.int8), TensorProto.UINT4: (TensorProto.UINT8, np.uint8)}
MIN_PACKED_ELEMENTS = 32  # smaller int8 constants (zero points, tiny tables) are not worth a kernel launch
# set by pack_int4_pass: totals, and "binary" (1-bit) / "int4" entries with the same three counts


# ---------------------------------------------------------------------------------------------- ONNX side

def widen_low_bit(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that TVM's importer reads: INT4 → INT8 initializers, blocked DQ → DQ + Mul(scale)."""
    if not any(t.data_type in _LOW_BIT for t in model.graph.initializer) and not any(
            n.op_type == "DequantizeLinear" and any(a.name == "block_size" and a.i for a in n.attribute)
            for n in model.graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for t in list(graph.initializer):
        if t.data_type in _LOW_BIT:
            _, np_type = _LOW_BIT[t.data_type]
            wide = numpy_helper.from_array(numpy_helper.to_array(t).astype(np_type), t.name)
            t.CopyFrom(wide)
    new_nodes = []
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        block = int(attrs.get("block_size", 0) or 0)
        if node.op_type != "DequantizeLinear" or not block or node.input[0] not in inits \
                or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        q = numpy_helper.to_array(inits[node.input[0]])
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None and np.any(zp != 0):
            new_nodes.append(node)  # asymmetric blocked weights: not produced by edgec, left to the importer
            continue
        axis = int(attrs.get("axis", 1)) % q.ndim
        full = np.repeat(scale, block, axis=axis)
        full = np.take(full, np.arange(q.shape[axis]), axis=axis)  # the last block may be partial
        base = node.input[1]
        names = [_fresh(f"{base}_unit", taken), _fresh(f"{base}_unit_zp", taken), _fresh(f"{base}_full", taken),
                 _fresh(f"{node.output[0]}_int", taken)]
        graph.initializer.extend([numpy_helper.from_array(np.float32(1.0), names[0]),
                                  numpy_helper.from_array(np.zeros((), q.dtype), names[1]),
                                  numpy_helper.from_array(full.astype(np.float32), names[2])])
        new_nodes.append(helper.make_node("DequantizeLinear", [node.input[0], names[0], names[1]], [names[3]],
                                          name=(node.name or names[3]) + "_unit"))
        new_nodes.append(helper.make_node("Mul", [names[3], names[2]], [node.output[0]],
                                          name=(node.name or names[3]) + "_groupscale"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


# ---------------------------------------------------------------------------------------------- packing

def pack_int4(values: np.ndarray) -> np.ndarray:
    """int8 values in [-8, 7] → uint8, two per byte (element 2k in the low nibble of byte k, 2k+1 in the high)."""
    flat = np.asarray(values).reshape(-1).astype(np.int16)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError("values outside the int4 range [-8, 7]")
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int16)])
    nib = (flat & 0xF).astype(np.uint8)
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)


def unpack_int4_reference(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """numpy reference of the unpack kernel."""
    n = int(np.prod(shape))
    b = np.asarray(packed, np.uint8).astype(np.int16)
    v = np.empty(2 * b.size, np.int16)
    v[0::2], v[1::2] = b & 0xF, b >> 4
    v = np.where(v >= 8, v - 16, v)
    return v[:n].astype(np.int8).reshape(shape)


def pack_binary(values: np.ndarray) -> np.ndarray:
    """int8 values in {−1, +1} → uint8, eight per byte (element 8k + j is bit j of byte k; 1 for +1)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size and not np.all((flat == 1) | (flat == -1)):
        raise ValueError("binary packing needs every value to be -1 or +1")
    return np.packbits(flat == 1, bitorder="little")  # a partial last byte is padded with 0 bits (unused)


def unpack_binary_reference(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """numpy reference of the binary unpack kernel."""
    n = int(np.prod(shape))
    bits = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[:n]
    return (2 * bits.astype(np.int8) - 1).reshape(shape)


def packed_bits(value: np.ndarray) -> int | None:
    """How the pass packs an int8 constant: 1 (all ±1), 4 (all in [−8, 7]) or None (left as int8)."""
    if value.dtype != np.int8 or value.size < MIN_PACKED_ELEMENTS:
        return None
    lo, hi = int(value.min()), int(value.max())
    if lo >= -1 and hi <= 1 and not np.any(value == 0):
        return 1
    return 4 if lo >= -8 and hi <= 7 else None


def pack_low_bit(values: np.ndarray, bits: int) -> np.ndarray:
    return pack_binary(values) if bits == 1 else pack_int4(values)


def unpack_int4_te(packed, shape: tuple[int, ...], bits: int = 4):
    """TE compute: packed uint8 [ceil(n·bits/8)] → int8 tensor of ``shape`` (row-major element order); ``bits``
    4 (sign-extended nibbles) or 1 (bit 1 → +1, bit 0 → −1)."""
    from tvm import te, tirx

    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * int(shape[i + 1])

    def fn(*idx):
        flat = idx[0] * strides[0]
        for i, s in zip(idx[1:], strides[1:]):
            flat = flat + i * s
        if bits == 1:
            byte = packed[flat // 8].astype("int32")
            bit = (byte >> (flat % 8).astype("int32")) & 1
            return (bit * 2 - 1).astype("int8")
        byte = packed[flat // 2].astype("int32")
        nib = (byte >> ((flat % 2) * 4).astype("int32")) & 15
        return tirx.Select(nib >= 8, nib - 16, nib).astype("int8")

    return te.compute(tuple(int(d) for d in shape), fn, name=_KERNEL_NAME[bits])


_KERNEL_NAME = {4: "int4_unpack", 1: "binary_unpack"}


def _unpack_func(shape: tuple[int, ...], bits: int = 4):
    from tvm import s_tir, te

    n = int(np.prod(shape))
    packed = te.placeholder(((n * bits + 7) // 8,), "uint8", name="packed")
    out = unpack_int4_te(packed, shape, bits)
    func = te.create_prim_func([packed, out])
    sch = s_tir.Schedule(func)
    block = sch.get_sblock(_KERNEL_NAME[bits])
    loop = sch.fuse(*sch.get_loops(block))
    if n >= 4096:
        outer, _ = sch.split(loop, [None, 1024])
        sch.parallel(outer)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("global_symbol", _KERNEL_NAME[bits])


def empty_pack_stats() -> dict[str, Any]:
    """What :func:`pack_int4_pass` counts: tensors packed, their int8 and packed bytes, in all and per kind."""
    return {"tensors": 0, "int8_bytes": 0, "packed_bytes": 0,
            **{k: {"tensors": 0, "int8_bytes": 0, "packed_bytes": 0} for k in ("int4", "binary")}}


def pack_int4_pass(stats: dict[str, Any] | None = None):
    """Relax pass (after FoldConstant/FuseTIR): int8 kernel constants in [-8, 7] → packed uint8 + unpack kernel
    (all ±1: one bit per element, else two per byte). ``stats`` (from :func:`empty_pack_stats`, owned by the
    build that runs the pass) is reset and filled with what was packed."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="EdgecPackInt4")
    def _pass(mod, _ctx):
        counts = stats if stats is not None else {}
        counts.clear()
        counts.update(empty_pack_stats())
        call_tir = tvm.ir.Op.get("relax.call_tir")
        funcs: dict[tuple[tuple[int, ...], int], Any] = {}

        @relax.expr_functor.mutator
        class Packer(relax.PyExprMutator):
            def __init__(self, module):
                super().__init__(module)
                self.done: dict[Any, Any] = {}

            def unpacked(self, const, bits: int):
                key = const
                if key in self.done:
                    return self.done[key]
                value = const.value.numpy()
                shape = tuple(int(d) for d in value.shape)
                name = _KERNEL_NAME[bits]
                if (shape, bits) not in funcs:
                    funcs[(shape, bits)] = self.builder_.add_func(_unpack_func(shape, bits), f"{name}_{len(funcs)}")
                packed_np = pack_low_bit(value, bits)
                var = self.builder_.emit(relax.call_tir(funcs[(shape, bits)], [relax.const(packed_np, "uint8")],
                                                        out_ty=relax.TensorType(shape, "int8")),
                                         "w_binary" if bits == 1 else "w_int4")
                for entry in (counts, counts["binary" if bits == 1 else "int4"]):
                    entry["tensors"] += 1
                    entry["int8_bytes"] += int(value.nbytes)
                    entry["packed_bytes"] += int(packed_np.size)
                self.done[key] = var
                return var

            def visit_call_(self, call):
                call = super().visit_call_(call)
                if call.op != call_tir or not isinstance(call.args[1], relax.Tuple):
                    return call
                args, changed = [], False
                for a in call.args[1].fields:
                    bits = packed_bits(a.value.numpy()) if (isinstance(a, tvm.ir.expr.Constant)
                                                            and hasattr(a.value, "numpy")) else None
                    if bits is not None:
                        args.append(self.unpacked(a, bits))
                        changed = True
                    else:
                        args.append(a)
                if not changed:
                    return call
                return relax.Call(call.op, [call.args[0], relax.Tuple(args)] + list(call.args[2:]), call.attrs,
                                  call.ty_args)

        packer = Packer(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                packer.done = {}  # an unpacked variable belongs to one function's dataflow block
                packer.builder_.update_func(gv, packer.visit_expr(func))
        return packer.builder_.get()

    return _pass


# ---------------------------------------------------------------------------------------------- sizes

def constant_bytes(mod) -> dict[str, Any]:
    """Every constant the compiled Relax module holds (its parameters): bytes in total and by dtype."""
    import tvm
    from tvm import relax

    seen: dict[Any, Any] = {}

    def visit(expr) -> None:
        if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy"):  # tensors, not PrimValues
            seen.setdefault(expr, expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    by_dtype: dict[str, int] = {}
    for c in seen.values():
        arr = c.value
        n = int(np.prod([int(d) for d in arr.shape])) if len(arr.shape) else 1
        nbytes = n * np.dtype(str(arr.dtype)).itemsize
        by_dtype[str(arr.dtype)] = by_dtype.get(str(arr.dtype), 0) + nbytes
    return {"bytes": sum(by_dtype.values()), "tensors": len(seen), "by_dtype": by_dtype}
