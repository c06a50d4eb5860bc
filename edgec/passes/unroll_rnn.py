"""Unroll ONNX ``LSTM``, ``GRU`` and ``RNN`` nodes with a static sequence length into plain ONNX ops.

Why: TVM's Relax ONNX importer has no LSTM, GRU or RNN converter, so every CRNN text recognizer (CNN + BiLSTM +
CTC: PaddleOCR rec models, ddddocr) and every small speech/keyword model was refused. Once input shapes are fixed
the sequence length is a constant, and a recurrence of known length is just a chain of MatMul, Add, Sigmoid, Tanh
and Mul that every importer reads and TVM fuses (the gate arithmetic of one step becomes one or two kernels).

How, per node:

* The input projection ``X·Wᵀ + b`` does not depend on the state, so it is one MatMul over all timesteps and both
  directions (``[seq·batch, input] × [input, dirs·gates·hidden]``, 2-D so that a CPU kernel reuses each weight
  tile across rows): the big matrix product runs once, at full width, instead of once per step. Only the
  recurrent ``H·Rᵀ`` stays inside the loop, one small MatMul per step.
* Biases that add outside a nonlinearity's inner products (``Wb + Rb``; GRU's ``Rbh`` only when
  ``linear_before_reset=0``) are folded into that one projection.
* Each gate is a Slice of the step's projection plus a Slice of its recurrent product, with its own Sigmoid/Tanh
  (LSTM's gate rows reordered from ONNX's i, o, f, c to i, f, o, c), so each op has one reader and TVM fuses a
  step's gate arithmetic into two kernels (C', then H') after the recurrent MatMul: openWakeWord's LSTM head ran
  311 kernel calls with Splits and one Sigmoid over three gates, and spent 60 % of its time between them.
* A zero (or absent) initial state skips the first step's recurrent MatMul (torch always exports zeros).
* Reverse directions walk the steps backwards and write each state at its own time position, as ONNX does.

Refused with a one-line :class:`EdgecError` naming the node and attribute (the result would be wrong otherwise):
non-default activations, ``clip``, ``input_forget=1``, peepholes ``P`` that are not all
zero, ``sequence_lens`` that is not a constant equal to the sequence length, weights that are not constants, and
a sequence length that is not static.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.passes.base import PRECISION_HINT, EdgecPass, node_delta, ops_histogram, register_pass

RNN_OPS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
# ONNX stores LSTM gates as i, o, f, c; i, f, o, c puts the three sigmoid gates side by side.
LSTM_GATE_ORDER = (0, 2, 1, 3)

REFUSAL_HINT = ("TVM's ONNX importer has no {op}; edgec unrolls it with the default activations and without "
                "clip, input_forget, peepholes or per-sample sequence_lens: re-export the model without it")


@dataclass
class RnnSpec:
    """One LSTM/GRU/RNN node, checked and with its constants read (weights in ONNX gate order)."""

    node: ir.Node
    op: str
    name: str
    reverse: list[bool]  # per direction: does it walk the sequence backwards
    hidden: int
    layout: int
    seq_len: int
    w: np.ndarray  # [dirs, gates·hidden, input]
    r: np.ndarray  # [dirs, gates·hidden, hidden]
    b: np.ndarray  # [dirs, 2·gates·hidden]: Wb then Rb
    linear_before_reset: bool

    @property
    def dirs(self) -> int:
        return len(self.reverse)


def _label(node: ir.Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs and node.outputs[0].name else "?")


def _refuse(node: ir.Node, what: str) -> EdgecError:
    return EdgecError(f"{node.op_type} node '{_label(node)}' has {what}, which edgec cannot unroll",
                      REFUSAL_HINT.format(op=node.op_type))


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _const(node: ir.Node, index: int, what: str) -> np.ndarray | None:
    value = _input(node, index)
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        raise _refuse(node, f"{what} computed at run time (not a constant)")
    return tensor.numpy()


def read_rnn(node: ir.Node) -> RnnSpec:
    """Check that ``node`` is an RNN op this pass can unroll exactly, and read its constants; else EdgecError."""
    op = node.op_type
    attrs = {k: a.value for k, a in node.attributes.items()}
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise _refuse(node, f"direction={direction!r}")
    reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    activations = attrs.get("activations")
    if activations is not None:
        default = DEFAULT_ACTIVATIONS[op] * len(reverse)
        if [a.lower() for a in activations] != [a.lower() for a in default]:
            raise _refuse(node, f"activations={list(activations)} (only {list(DEFAULT_ACTIVATIONS[op])} is "
                                "supported)")
    # activation_alpha/beta are ignored: Sigmoid and Tanh take no parameters
    if "clip" in attrs:
        raise _refuse(node, f"clip={attrs['clip']}")
    if attrs.get("input_forget", 0):
        raise _refuse(node, "input_forget=1")
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise _refuse(node, f"layout={layout}")
    lbr = int(attrs.get("linear_before_reset", 0))
    if lbr not in (0, 1):
        raise _refuse(node, f"linear_before_reset={lbr}")

    w = _const(node, 1, "weights W")
    r = _const(node, 2, "recurrence weights R")
    if w is None or r is None or w.ndim != 3 or r.ndim != 3 or w.shape[0] != len(reverse):
        raise _refuse(node, "weights W/R of an unexpected shape")
    gates = GATES[op]
    hidden = int(r.shape[-1])
    if w.shape[1] != gates * hidden or r.shape[:2] != (len(reverse), gates * hidden):
        raise _refuse(node, f"weights W {w.shape} / R {r.shape} that do not fit hidden_size {hidden}")
    b = _const(node, 3, "bias B")
    b = np.zeros((len(reverse), 2 * gates * hidden), w.dtype) if b is None else b
    if b.shape != (len(reverse), 2 * gates * hidden):
        raise _refuse(node, f"a bias B of shape {b.shape} that does not fit hidden_size {hidden}")

    x = node.inputs[0]
    seq_axis = 1 if layout else 0
    dims = list(x.shape) if x is not None and x.shape is not None else None
    if dims is None or len(dims) != 3 or not isinstance(dims[seq_axis], int):
        raise EdgecError(f"{op} node '{_label(node)}' has a sequence length that is not static "
                         f"(input shape {dims if dims is not None else 'unknown'})",
                         "fix the model's input shape with --input-shape so the sequence length is known")
    seq_len = int(dims[seq_axis])

    lens = _const(node, 4, "sequence_lens")
    if lens is not None and np.any(lens.reshape(-1) != seq_len):
        raise _refuse(node, f"sequence_lens={lens.reshape(-1).tolist()} that differ from the sequence length "
                            f"{seq_len}")
    if op == "LSTM":
        peep = _const(node, 7, "peepholes P")
        if peep is not None and np.any(peep):
            raise _refuse(node, "peepholes (input P)")
    return RnnSpec(node=node, op=op, name=node.name or x.name or op, reverse=reverse, hidden=hidden,
                   layout=layout, seq_len=seq_len, w=w, r=r, b=b, linear_before_reset=bool(lbr))


class GraphWriter:
    """Creates nodes and initializers for one rewrite with names unique in the graph (prefixed by the RNN node),
    so the unrolled graph stays readable in Netron and never clashes with an exporter's ``val_N`` names."""

    def __init__(self, graph: ir.Graph, taken: set[str], prefix: str, dtype: np.dtype, opset: int) -> None:
        self.graph = graph
        self.taken = taken
        self.prefix = prefix
        self.dtype = dtype
        self.opset = opset
        self.nodes: list[ir.Node] = []
        self.ir_dtype = ir.DataType.from_numpy(dtype)

    def unique(self, tag: str) -> str:
        name, i = f"{self.prefix}/{tag}", 1
        while name in self.taken:
            name, i = f"{self.prefix}/{tag}_{i}", i + 1
        self.taken.add(name)
        return name

    def const(self, array: np.ndarray, tag: str) -> ir.Value:
        name = self.unique(tag)
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        self.graph.register_initializer(value)
        return value

    def op(self, op_type: str, inputs: list[ir.Value | None], tag: str, attributes: dict[str, Any] | None = None,
           outputs: int = 1) -> list[ir.Value]:
        """One node; its outputs carry the RNN's float dtype (every value this pass makes has it)."""
        outs = [ir.Value(name=self.unique(tag if outputs == 1 else f"{tag}_{i}")) for i in range(outputs)]
        for value in outs:
            value.dtype = self.ir_dtype
        node = ir.node(op_type, inputs, attributes=attributes or {}, outputs=outs, name=self.unique(f"{tag}_node"))
        self.nodes.append(node)
        return outs

    def one(self, op_type: str, inputs: list[ir.Value | None], tag: str,
            attributes: dict[str, Any] | None = None) -> ir.Value:
        return self.op(op_type, inputs, tag, attributes)[0]

    def float_matmul(self, x: ir.Value, weight: ir.Value, tag: str) -> ir.Value:
        """A MatMul of the recurrence, marked for quantization to stay float (``PRECISION_HINT``), as onnxruntime
        keeps a whole LSTM/GRU/RNN float: quantized, a step's error is fed back into every later step
        (openWakeWord's LSTM wake-word head: 24.4 dB SQNR with every MatMul int8, 26.8 with the recurrent ones
        float, 51 dB with the input projection float too; onnxruntime's quantize_static 27.4)."""
        value = self.one("MatMul", [x, weight], tag)
        self.nodes[-1].metadata_props[PRECISION_HINT] = "float"
        return value

    def slice(self, x: ir.Value, starts: list[int], ends: list[int], axes: list[int], tag: str) -> ir.Value:
        """``x[starts:ends]`` along ``axes``: bounds as inputs from opset 10, as attributes before."""
        if self.opset < 10:
            return self.one("Slice", [x], tag, {"starts": starts, "ends": ends, "axes": axes})
        bounds = [self.const(np.array(v, np.int64), f"{tag}_{what}")
                  for v, what in ((starts, "starts"), (ends, "ends"), (axes, "axes"))]
        return self.one("Slice", [x, *bounds], tag)

    def split(self, x: ir.Value, sizes: list[int], axis: int, tag: str) -> list[ir.Value]:
        """Pieces of ``sizes`` along ``axis``, one Slice each.

        Why not Split: a Split is one kernel with a tuple of outputs, and TVM's FuseOps fuses nothing across a
        tuple, so every step of an unrolled LSTM ran as ~10 kernels and openWakeWord's LSTM head spent 60 % of
        its 0.23 ms between 311 kernel calls. A Slice is one injective op that fuses into the op reading it."""
        if len(sizes) == 1:
            return [x]
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        return [self.slice(x, [lo], [lo + size], [axis], f"{tag}_{i}") for i, (lo, size) in enumerate(zip(starts, sizes))]

    def concat(self, values: list[ir.Value], axis: int, tag: str) -> ir.Value:
        return values[0] if len(values) == 1 else self.one("Concat", values, tag, {"axis": axis})


def _gate_rows(matrix: np.ndarray, op: str, hidden: int) -> np.ndarray:
    """Reorder the gate blocks along axis 0 (LSTM: i, o, f, c → i, f, o, c); others keep their order."""
    if op != "LSTM":
        return matrix
    blocks = [matrix[g * hidden:(g + 1) * hidden] for g in range(4)]
    return np.concatenate([blocks[g] for g in LSTM_GATE_ORDER], axis=0)


def _initial_state(spec: RnnSpec, index: int, out: GraphWriter, tag: str) -> list[ir.Value | None]:
    """Per direction, the initial state as a [1, batch, hidden] value, or None where it is zero (absent or a
    constant zero: the first step then needs no recurrent MatMul)."""
    value = _input(spec.node, index)
    if value is None:
        return [None] * spec.dirs
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is not None:
        array = tensor.numpy().astype(out.dtype)
        if spec.layout:
            array = array.transpose(1, 0, 2)
        return [None if not np.any(array[d]) else out.const(array[d:d + 1], f"{tag}{d}") for d in range(spec.dirs)]
    if spec.layout:
        value = out.one("Transpose", [value], f"{tag}_seq_major", {"perm": [1, 0, 2]})
    return out.split(value, [1] * spec.dirs, 0, tag)


def unroll(spec: RnnSpec, out: GraphWriter) -> dict[int, ir.Value]:
    """Emit the unrolled graph for ``spec``; returns the new value for each of the node's outputs in use."""
    op, hid, dirs, steps = spec.op, spec.hidden, spec.dirs, spec.seq_len
    gates = GATES[op]
    x = spec.node.inputs[0]
    if spec.layout:  # [batch, seq, input] → [seq, batch, input]
        x = out.one("Transpose", [x], "x_seq_major", {"perm": [1, 0, 2]})

    # --- the input projection of every step and direction: one MatMul, biases folded in
    w_cols, biases, pieces = [], [], []
    rec_weights: list[list[ir.Value]] = []
    rec_bias: list[ir.Value | None] = []
    for d in range(dirs):
        wb, rb = spec.b[d, :gates * hid], spec.b[d, gates * hid:]
        w_cols.append(_gate_rows(spec.w[d], op, hid).T)
        rt = _gate_rows(spec.r[d], op, hid).T  # [hidden, gates·hidden]
        if op == "GRU" and spec.linear_before_reset:  # Rbh stays inside r ⊙ (H·Rhᵀ + Rbh)
            biases.append(np.concatenate([wb[:2 * hid] + rb[:2 * hid], wb[2 * hid:]]))
            rec_bias.append(out.const(rb[2 * hid:].astype(out.dtype), f"rbh{d}") if np.any(rb[2 * hid:])
                            else None)
            rec_weights.append([out.const(rt.astype(out.dtype), f"rt{d}")])
        else:
            biases.append(_gate_rows(wb + rb, op, hid))
            rec_bias.append(None)
            if op == "GRU":  # H·Rzrᵀ first, then (r ⊙ H)·Rhᵀ
                rec_weights.append([out.const(rt[:, :2 * hid].astype(out.dtype), f"rt_zr{d}"),
                                    out.const(rt[:, 2 * hid:].astype(out.dtype), f"rt_h{d}")])
            else:
                rec_weights.append([out.const(rt.astype(out.dtype), f"rt{d}")])
        pieces += [2 * hid, hid] if op == "GRU" else [gates * hid]
    wt = out.const(np.concatenate(w_cols, axis=1).astype(out.dtype), "wt")
    # 2-D rows (seq·batch) × weights: a matmul whose rows share each weight tile, not seq matmuls of batch rows
    rows = out.one("Reshape", [x, out.const(np.array([-1, wt.const_value.shape[0]], np.int64), "x_rows_shape")],
                   "x_rows")
    xw = out.float_matmul(rows, wt, "xw")
    bias = np.concatenate(biases).astype(out.dtype)
    if np.any(bias):
        xw = out.one("Add", [xw, out.const(bias, "xw_bias")], "xw_biased")
    xw = out.one("Reshape", [xw, out.const(np.array([steps, -1, wt.const_value.shape[1]], np.int64), "xw_shape")],
                 "xw_steps")
    per_piece = out.split(xw, pieces, 2, "xw_dir")
    # per piece: the [1, batch, width] slice of each step. A kernel of its own per step (C' and H' both read it),
    # but one that every step shares: sliced per gate straight from the projection, each step's gate kernels
    # carried its own bounds, and openWakeWord's LSTM head compiled in 50 s instead of 25 for no faster run.
    per_step = [out.split(p, [1] * steps, 0, f"xw_steps{i}") for i, p in enumerate(per_piece)]

    h0 = _initial_state(spec, 5, out, "h0")
    c0 = _initial_state(spec, 6, out, "c0") if op == "LSTM" else [None] * dirs
    hs: list[list[ir.Value]] = [[None] * steps for _ in range(dirs)]  # type: ignore[list-item]
    last_c: list[ir.Value | None] = [None] * dirs
    for d in range(dirs):
        h, c = h0[d], c0[d]
        order = range(steps - 1, -1, -1) if spec.reverse[d] else range(steps)
        for t in order:
            tag = f"d{d}t{t}"
            if op == "LSTM":
                h, c = _lstm_step(out, per_step[d][t], h, c, rec_weights[d][0], hid, tag)
            elif op == "GRU":
                zr_in, h_in = per_step[2 * d][t], per_step[2 * d + 1][t]
                h = _gru_step(out, zr_in, h_in, h, rec_weights[d], rec_bias[d], spec.linear_before_reset, hid, tag)
            else:
                pre = _gate_sums(out, per_step[d][t], None if h is None else
                                 out.float_matmul(h, rec_weights[d][0], f"{tag}_rec"), [hid], tag)[0]
                h = out.one("Tanh", [pre], f"{tag}_h")
            hs[d][t] = h
        last_c[d] = c

    # --- outputs in ONNX's shapes: Y [seq, dirs, batch, hidden], Y_h / Y_c [dirs, batch, hidden] (layout 0)
    new: dict[int, ir.Value] = {}
    wanted = [i for i, v in enumerate(spec.node.outputs) if v is not None and (v.uses() or v.is_graph_output())]
    if 0 in wanted:
        flat = out.concat([hs[d][t] for t in range(steps) for d in range(dirs)], 0, "y_flat")
        shape = out.const(np.array([steps, dirs, -1, hid], np.int64), "y_shape")
        y = out.one("Reshape", [flat, shape], "y")
        new[0] = out.one("Transpose", [y], "y_batch_major", {"perm": [2, 0, 1, 3]}) if spec.layout else y
    finals = {1: [hs[d][0 if spec.reverse[d] else steps - 1] for d in range(dirs)], 2: last_c}
    for index, tag in ((1, "y_h"), (2, "y_c")):
        if index in wanted:
            state = out.concat(finals[index], 0, tag)  # type: ignore[arg-type]
            new[index] = out.one("Transpose", [state], f"{tag}_batch_major", {"perm": [1, 0, 2]}) \
                if spec.layout else state
    return new


def _lstm_step(out: GraphWriter, xw: ir.Value, h: ir.Value | None, c: ir.Value | None, rt: ir.Value, hid: int,
               tag: str) -> tuple[ir.Value, ir.Value]:
    """i, f, o = σ(·), g = tanh(·); C' = f⊙C + i⊙g; H' = o⊙tanh(C'). Gates are in i, f, o, c order."""
    # Every gate its own Slice + Add + Sigmoid (Tanh for g), read once: TVM fuses a step's gate arithmetic into two
    # kernels (C', then H') after the recurrent MatMul. A Split (a tuple: nothing fuses across it), one Sigmoid
    # over three gates, or the Add before the gates are sliced each cost a kernel of their own per step.
    pre = _gate_sums(out, xw, None if h is None else out.float_matmul(h, rt, f"{tag}_rec"), [hid] * 4, tag)
    i, f, o, cand_in = (out.one("Sigmoid", [p], f"{tag}_{gate}") if gate != "g" else p for gate, p in zip("ifog", pre))
    ig = out.one("Mul", [i, out.one("Tanh", [cand_in], f"{tag}_g")], f"{tag}_ig")
    c_new = ig if c is None else out.one("Add", [out.one("Mul", [f, c], f"{tag}_fc"), ig], f"{tag}_c")
    h_new = out.one("Mul", [o, out.one("Tanh", [c_new], f"{tag}_tanh_c")], f"{tag}_h")
    return h_new, c_new


def _gate_sums(out: GraphWriter, xw: ir.Value, rec: ir.Value | None, sizes: list[int], tag: str) -> list[ir.Value]:
    """Per gate: its slice of the step's input projection ``xw``, plus its slice of the recurrent product ``rec``
    (one Add per gate, which fuses with the gate's nonlinearity; the whole-vector Add was a kernel of its own)."""
    x_gates = out.split(xw, sizes, 2, f"{tag}_x")
    if rec is None:
        return x_gates
    rec_gates = out.split(rec, sizes, 2, f"{tag}_rec_split")
    return [out.one("Add", [a, b], f"{tag}_pre{k}") for k, (a, b) in enumerate(zip(x_gates, rec_gates))]


def _gru_step(out: GraphWriter, xw_zr: ir.Value, xw_h: ir.Value, h: ir.Value | None, rt: list[ir.Value],
              rbh: ir.Value | None, linear_before_reset: bool, hid: int, tag: str) -> ir.Value:
    """z, r = σ(·); h̃ = tanh(Xh + (r⊙H)·Rhᵀ) or tanh(Xh + r⊙(H·Rhᵀ + Rbh)); H' = h̃ + z⊙(H − h̃)."""
    if h is None:
        rec_zr, rec_h = None, rbh  # H·Rᵀ is zero; only Rbh is left of the recurrent term
    elif linear_before_reset:
        rec_zr, rec_h = out.split(out.float_matmul(h, rt[0], f"{tag}_rec"), [2 * hid, hid], 2, f"{tag}_rec_split")
        if rbh is not None:
            rec_h = out.one("Add", [rec_h, rbh], f"{tag}_rec_h")
    else:
        rec_zr, rec_h = out.float_matmul(h, rt[0], f"{tag}_rec_zr"), None
    z, r = (out.one("Sigmoid", [piece], f"{tag}_{gate}")  # one per gate, as in _lstm_step
            for gate, piece in zip("zr", _gate_sums(out, xw_zr, rec_zr, [hid, hid], f"{tag}_zr")))
    if linear_before_reset:
        cand_pre = xw_h if rec_h is None else out.one("Add", [xw_h, out.one("Mul", [r, rec_h], f"{tag}_r_rec")],
                                                      f"{tag}_cand_pre")
    elif h is None:
        cand_pre = xw_h
    else:
        rh = out.float_matmul(out.one("Mul", [r, h], f"{tag}_rh"), rt[1], f"{tag}_rec_h")
        cand_pre = out.one("Add", [xw_h, rh], f"{tag}_cand_pre")
    cand = out.one("Tanh", [cand_pre], f"{tag}_cand")
    if h is None:  # H' = (1 − z)⊙h̃
        return out.one("Sub", [cand, out.one("Mul", [z, cand], f"{tag}_zc")], f"{tag}_h")
    delta = out.one("Mul", [z, out.one("Sub", [h, cand], f"{tag}_diff")], f"{tag}_zdiff")
    return out.one("Add", [cand, delta], f"{tag}_h")


def _value_names(graph: ir.Graph) -> set[str]:
    names = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
    for node in graph.all_nodes():
        names.update(v.name for v in node.outputs if v.name)
        if node.name:
            names.add(node.name)
    return names


@register_pass
class UnrollRnn(EdgecPass):
    name = "unroll_rnn"
    description = "LSTM / GRU / RNN with a static sequence length → one input MatMul + per-step MatMul and gates"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        graph = model.graph
        targets = [n for n in graph if n.op_type in RNN_OPS and n.domain in ("", "ai.onnx")]
        nested = [n for n in graph.all_nodes() if n.op_type in RNN_OPS and n.graph is not graph]
        if nested:  # inside an If/Loop body: the importer refuses those bodies anyway; name the node clearly
            node = nested[0]
            raise EdgecError(f"{node.op_type} node '{_label(node)}' is inside an If/Loop/Scan body, which edgec "
                             "cannot unroll",
                             "an If that branches on an input's value (Silero VAD's sample rate 'sr') is decided "
                             "at compile time with --input-value NAME=VALUE; else re-export the model without "
                             "the branch")
        if not targets:
            return {"changed": False}
        before = ops_histogram(model)
        specs = [read_rnn(n) for n in targets]  # every node is checked before the graph is touched
        opset = graph.opset_imports.get("", 13)
        taken = _value_names(graph)
        unrolled: dict[str, int] = {}
        steps = 0
        for spec in specs:
            dtype = spec.w.dtype if spec.w.dtype in (np.float16, np.float32, np.float64) else np.dtype(np.float32)
            out = GraphWriter(graph, taken, spec.name, np.dtype(dtype), opset)
            new = unroll(spec, out)
            old_values = [spec.node.outputs[i] for i in sorted(new)]
            consts = [v for v in spec.node.inputs if v is not None and v.is_initializer()]
            ir.convenience.replace_nodes_and_values(graph, spec.node, [spec.node], out.nodes, old_values,
                                                    [new[i] for i in sorted(new)])
            for value in consts:  # the original W/R/B/states: the rewrite holds them transposed and reordered
                if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                    graph.initializers.pop(value.name, None)
            unrolled[spec.op] = unrolled.get(spec.op, 0) + 1
            steps += spec.seq_len * spec.dirs
        return {"changed": True, "unrolled": unrolled, "steps": steps,
                "nodes": node_delta(before, ops_histogram(model))}
