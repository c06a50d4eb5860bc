"""Seeded mutations of real models, run through ``edgec inspect`` and ``edgec compile`` in this one process.

Not a test module (pytest does not collect it): tests/test_model_validation.py runs it as a child under a memory
cap (RLIMIT_AS) and checks the JSON it writes. Each mutation is one kind of damage a file meets in the wild or at
a user's hands: bytes flipped, the file cut short, a node dropped, duplicated or moved, a dim or attribute
changed, an initializer truncated, dropped or retyped, the opset changed.

    python tests/fuzz_models.py --model a.onnx --model b.onnx --count 200 --seed 0 --compiles 6 --out results.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Callable

import onnx
from click.testing import CliRunner

from edgec.toolchain.cli import main

Mutation = Callable[[random.Random, bytes], bytes]
WEIRD_DIMS = (0, -1, 1, 3, 7, 1 << 20, 1 << 40)


def _proto(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.ParseFromString(data)
    return model


def _pick(rng: random.Random, items):
    return items[rng.randrange(len(items))] if len(items) else None


def flip_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return bytes(buf)


def cut_file(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(1, len(data))]


def _node_edit(edit: Callable[[random.Random, onnx.ModelProto], None]) -> Mutation:
    def mutate(rng: random.Random, data: bytes) -> bytes:
        model = _proto(data)
        edit(rng, model)
        return model.SerializeToString()
    mutate.__name__ = edit.__name__
    return mutate


@_node_edit
def drop_node(rng, model):
    del model.graph.node[rng.randrange(len(model.graph.node))]


@_node_edit
def duplicate_node(rng, model):
    i = rng.randrange(len(model.graph.node))
    model.graph.node.insert(rng.randrange(len(model.graph.node)), model.graph.node[i])


@_node_edit
def move_node(rng, model):
    nodes = list(model.graph.node)
    node = nodes.pop(rng.randrange(len(nodes)))
    nodes.insert(rng.randrange(len(nodes) + 1), node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


@_node_edit
def drop_node_input(rng, model):
    node = _pick(rng, [n for n in model.graph.node if n.input])
    del node.input[rng.randrange(len(node.input))]


@_node_edit
def rewire_input(rng, model):
    """A node reads another name of the graph: a cycle, a shape clash, or a dangling name."""
    names = [o for n in model.graph.node for o in n.output] + ["nowhere"]
    node = _pick(rng, [n for n in model.graph.node if n.input])
    node.input[rng.randrange(len(node.input))] = _pick(rng, names)


@_node_edit
def rename_output(rng, model):
    node = _pick(rng, model.graph.node)
    node.output[0] = _pick(rng, [o for n in model.graph.node for o in n.output] + ["fresh"])


@_node_edit
def change_op_type(rng, model):
    _pick(rng, model.graph.node).op_type = _pick(rng, ["Relu", "Add", "Conv", "MatMul", "Frob", "Softmax"])


@_node_edit
def change_attribute(rng, model):
    node = _pick(rng, [n for n in model.graph.node if n.attribute])
    if node is None:
        return
    attr = _pick(rng, node.attribute)
    if attr.ints:
        attr.ints[rng.randrange(len(attr.ints))] = _pick(rng, [-3, 0, 5, 1 << 30])
    elif attr.type == onnx.AttributeProto.INT:
        attr.i = _pick(rng, [-3, 0, 5, 1 << 30])
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = _pick(rng, [float("nan"), -1.0, 1e30])
    else:
        node.attribute.remove(attr)


@_node_edit
def change_input_dim(rng, model):
    value = _pick(rng, model.graph.input)
    dims = value.type.tensor_type.shape.dim
    if dims:
        dims[rng.randrange(len(dims))].dim_value = _pick(rng, WEIRD_DIMS)


@_node_edit
def change_initializer_dim(rng, model):
    tensor = _pick(rng, [t for t in model.graph.initializer if t.dims])
    if tensor is not None:
        tensor.dims[rng.randrange(len(tensor.dims))] = _pick(rng, WEIRD_DIMS)


@_node_edit
def truncate_initializer(rng, model):
    tensor = _pick(rng, [t for t in model.graph.initializer if t.raw_data])
    if tensor is not None:
        tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data))]


@_node_edit
def drop_initializer(rng, model):
    del model.graph.initializer[rng.randrange(len(model.graph.initializer))]


@_node_edit
def retype_initializer(rng, model):
    _pick(rng, model.graph.initializer).data_type = _pick(rng, [onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
                                                                onnx.TensorProto.STRING, 99])


@_node_edit
def change_opset(rng, model):
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = _pick(rng, [1, 6, 11, 30, 99])


@_node_edit
def drop_graph_output(rng, model):
    value = _pick(rng, model.graph.output)
    if rng.random() < 0.5:
        model.graph.output.remove(value)
    else:
        value.type.tensor_type.ClearField("elem_type")


MUTATIONS: list[Mutation] = [flip_bytes, cut_file, drop_node, duplicate_node, move_node, drop_node_input,
                             rewire_input, rename_output, change_op_type, change_attribute, change_input_dim,
                             change_initializer_dim, truncate_initializer, drop_initializer, retype_initializer,
                             change_opset, drop_graph_output]


def run(models: list[Path], count: int, seed: int, compiles: int, workdir: Path) -> list[dict]:
    """Each mutant through inspect, then compile (those inspect accepts: the first ``compiles`` of them, since a
    full TVM build takes seconds). One record per command run."""
    rng = random.Random(seed)
    runner = CliRunner()
    sources = [p.read_bytes() for p in models]
    records: list[dict] = []
    built = 0
    for i in range(count):
        mutation = MUTATIONS[i % len(MUTATIONS)]
        source = i % len(sources)
        try:
            data = mutation(rng, sources[source])
        except Exception:  # the mutation did not apply to this model (no such field): mutate the bytes instead
            mutation, data = flip_bytes, flip_bytes(rng, sources[source])
        path = workdir / f"m{i}.onnx"
        path.write_bytes(data)
        with native_stderr(workdir / "fd2.txt") as native:
            inspected = runner.invoke(main, ["inspect", str(path)])
        records.append(_record(i, mutation.__name__, "inspect", inspected, native))
        if inspected.exit_code == 0:
            if built >= compiles:
                continue
            built += 1
        out = workdir / f"out{i}"
        with native_stderr(workdir / "fd2.txt") as native:
            compiled = runner.invoke(main, ["compile", str(path), "--target", "x86", "-o", str(out)])
        record = _record(i, mutation.__name__, "compile", compiled, native)
        record["output_exists"] = out.exists()
        record["hidden"] = sorted(p.name for p in workdir.iterdir() if p.name.startswith("."))
        records.append(record)
        path.unlink()
    return records


@contextlib.contextmanager
def native_stderr(path: Path):
    """What native code (TVM's C++ logging, onnxruntime) writes to file descriptor 2 meanwhile: a user sees
    it as stderr lines too. Yields a list that holds those lines afterwards."""
    lines: list[str] = []
    saved = os.dup(2)
    with open(path, "w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(ln for ln in sink.read().decode(errors="replace").splitlines() if ln.strip())


def _record(i: int, mutation: str, command: str, result, native: list[str]) -> dict:
    return {"i": i, "mutation": mutation, "command": command, "exit": result.exit_code,
            "stderr": [ln for ln in (result.stderr or "").splitlines() if ln.strip()] + native}


def cli_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", type=Path, required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compiles", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        records = run(args.model, args.count, args.seed, args.compiles, Path(tmp))
    args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    cli_main()
