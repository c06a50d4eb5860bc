#!/usr/bin/env python
"""The smallest graphs that reproduce the edgec failures bench/zoo.py found on real models, so each can be fixed
and tested without the wheels. Writes them into a folder and runs ``edgec compile`` on each:

    python bench/zoo_repro.py [OUT_DIR]      # default bench/.cache/zoo/repro

* ``neg_dim_output.onnx`` (ppocr_cls, paddle2onnx): an output whose declared dim is ``dim_value: -1``; the
  artifact's manifest keeps ``[-1, 3]`` and its own schema check refuses it;
* ``if_identity_outer.onnx`` (openWakeWord hey_jarvis): an If branch returning ``Identity(outer value)``;
  remove_identity (onnx_ir's IdentityEliminationPass) leaves the branch output unproduced;
* ``if_identity_graph_output.onnx`` (Silero VAD v5): the same where the outer value is also a main-graph output;
  the pass raises "already an output of a different graph";
* ``concat24.onnx`` (ddddocr's YOLOX detector, CSP block): two 1×1 convs to 24 channels, Concat, 1×1 conv;
  TVM's layout pass failed with "Invalid layout axis 16b" (fixed: targets/cpu/channel_groups.py);
* ``if_sample_rate.onnx`` (Silero VAD v5): the whole network inside an If on ``sr == 16000``, ``sr`` an input;
  the branch holds an LSTM, a nested If on the LSTM state's shape whose branches differ in shape (Squeeze or
  Identity: if_to_where cannot select between them) and a Squeeze of axis -1 (TVM's layout pass ends in
  std::bad_alloc). Compiled with ``--input-value sr=16000`` (run here), the If folds to its branch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def _model(nodes: list, inputs: list, outputs: list, opset: int, inits: list | None = None) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits or []),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _vi(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def neg_dim_output() -> onnx.ModelProto:
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    return _model(nodes, [_vi("x", [-1, 3, 8, 8])], [_vi("y", [-1, 3])], 11)


def if_identity(also_graph_output: bool) -> onnx.ModelProto:
    then_g = helper.make_graph([helper.make_node("Neg", ["s"], ["t"])], "then", [], [_vi("t", [1, 4])])
    else_g = helper.make_graph([helper.make_node("Identity", ["s"], ["e"])], "else", [], [_vi("e", [1, 4])])
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("ReduceMax", ["s"], ["mx"], keepdims=0),
             helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, [], [0.5])),
             helper.make_node("GreaterOrEqual", ["mx", "c"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    outputs = [_vi("y", [1, 4])] + ([_vi("s", [1, 4])] if also_graph_output else [])
    return _model(nodes, [_vi("x", [1, 4])], outputs, 13)


def concat24() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((0.1 * rng.standard_normal(shape)).astype(np.float32), name)
             for name, shape in (("wa", (24, 48, 1, 1)), ("wb", (24, 48, 1, 1)), ("wc", (48, 48, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"]), helper.make_node("Conv", ["x", "wb"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=1), helper.make_node("Conv", ["c", "wc"], ["y"])]
    return _model(nodes, [_vi("x", [1, 48, 16, 16])], [_vi("y", [1, 48, 16, 16])], 13, inits)


def if_sample_rate() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    hidden = 4
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)
             for name, shape in (("W", (1, 4 * hidden, 4)), ("R", (1, 4 * hidden, hidden)))]

    def const(name: str, values: list[int], dims: list[int]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, dims,
                                                                               values))

    squeezed = helper.make_graph([helper.make_node("Squeeze", ["h", "ax0"], ["hs"])], "squeeze", [],
                                 [_vi("hs", [1, hidden])])
    kept = helper.make_graph([helper.make_node("Identity", ["h"], ["hk"])], "keep", [], [_vi("hk", [1, 1, hidden])])
    then_g = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["", "h"], hidden_size=hidden),
         helper.make_node("Shape", ["h"], ["hshape"]), const("i0", [0], []), const("one", [1], []),
         helper.make_node("Gather", ["hshape", "i0"], ["dirs"]), helper.make_node("Equal", ["dirs", "one"], ["single"]),
         const("ax0", [0], [1]), helper.make_node("If", ["single"], ["hn"], then_branch=squeezed, else_branch=kept),
         const("ax2", [2], [1]), helper.make_node("Unsqueeze", ["hn", "ax2"], ["hu"]),
         helper.make_node("Relu", ["hu"], ["hr"]), const("axm1", [-1], [1]),
         helper.make_node("Squeeze", ["hr", "axm1"], ["t"])], "then", [], [_vi("t", [1, hidden])])
    else_g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["e"], axes=[0], keepdims=0)], "else", [],
                               [_vi("e", [1, hidden])])
    nodes = [helper.make_node("Constant", [], ["rate"], value=helper.make_tensor("rate", TensorProto.INT64, [],
                                                                                [16000])),
             helper.make_node("Equal", ["sr", "rate"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    inputs = [_vi("x", [3, 1, 4]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    return _model(nodes, inputs, [_vi("y", [1, hidden])], 16, inits)


CASES = {
    "neg_dim_output": (neg_dim_output, ["--input-shape", "1,3,8,8"]),
    "if_identity_outer": (lambda: if_identity(False), []),
    "if_identity_graph_output": (lambda: if_identity(True), []),
    "concat24": (concat24, []),
    "if_sample_rate": (if_sample_rate, ["--input-value", "sr=16000"]),
}


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / ".cache" / "zoo" / "repro"
    out.mkdir(parents=True, exist_ok=True)
    for name, (build, flags) in CASES.items():
        path = out / f"{name}.onnx"
        onnx.save(build(), str(path))
        done = subprocess.run([sys.executable, "-m", "edgec.toolchain.cli", "compile", str(path), *flags,
                               "-o", str(out / f"{name}_x86")], capture_output=True, text=True)
        last = ([ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()] or ["(no output)"])[-1]
        print(f"{name}: exit {done.returncode}: {last[:220]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
