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
  TVM's layout pass fails with "Invalid layout axis 16b".
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


CASES = {
    "neg_dim_output": (neg_dim_output, ["--input-shape", "1,3,8,8"]),
    "if_identity_outer": (lambda: if_identity(False), []),
    "if_identity_graph_output": (lambda: if_identity(True), []),
    "concat24": (concat24, []),
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
