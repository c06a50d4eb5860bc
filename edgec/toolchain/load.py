"""Read a user's model, whatever form it comes in, into one canonical ONNX ModelProto.

Canonical means: static input shapes, weights as initializers (real models often store them as Constant nodes)
and shape-computing subgraphs folded away. TVM's importer rejects models that compute shapes at run time, and
every later pass wants to see weights as initializers, so this is done once, here, for every source format.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Callable, Sequence

import onnx
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.limits import Limits
from edgec.toolchain.validate import check_conv_channels, check_external_data, validate_model

InputShapes = dict[str, tuple[int, ...]]

# Default opset for models we export ourselves (torch): 17 is the newest every consumer here reads well.
EXPORT_OPSET = 17


def parse_input_shapes(spec: str | Sequence[str] | None) -> dict[str | None, tuple[int, ...]]:
    """Parse ``1,3,224,224`` (the only input) or ``x:1,3,224,224`` entries (several may be given).

    The ``None`` key means "the model's single input, whatever its name".
    """
    if not spec:
        return {}
    items = [spec] if isinstance(spec, str) else list(spec)
    shapes: dict[str | None, tuple[int, ...]] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(";"))):
            name, _, dims = part.rpartition(":")
            try:
                shape = tuple(int(d) for d in dims.lower().replace("x", ",").split(","))
            except ValueError:
                raise EdgecError(f"cannot read input shape '{part}'",
                                 "write it as 1,3,224,224 or name:1,3,224,224") from None
            if any(d <= 0 for d in shape):
                raise EdgecError(f"input shape '{part}' has a dimension ≤ 0", "every dimension must be positive")
            shapes[name or None] = shape
    return shapes


# --------------------------------------------------------------------------------------------------------------
# Source formats. Each reader turns a source into an onnx.ModelProto; `_READERS` maps a predicate to a reader so
# a format is added by writing one function and one table row.

def _read_onnx(source: str, shapes: dict[str | None, tuple[int, ...]]) -> onnx.ModelProto:
    path = Path(source)
    if path.is_dir():
        raise EdgecError(f"{path} is a folder, not a model file", "pass the .onnx file inside it")
    try:
        if path.stat().st_size == 0:
            raise EdgecError(f"{path} is empty", "pass a complete .onnx file (re-export the model)")
        model = onnx.load(str(path), load_external_data=False)
    except PermissionError:
        raise EdgecError(f"cannot read {path}: permission denied", "make the file readable (chmod +r)") from None
    except EdgecError:
        raise
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError depending on the damage
        raise EdgecError(f"{path} is not a valid ONNX file ({type(exc).__name__})",
                         "re-export the model; the file may be truncated or not ONNX") from None
    if not model.graph.node:
        raise EdgecError(f"{path} holds no graph nodes", "pass a complete .onnx file (re-export the model)")
    check_external_data(model, path.parent)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except OSError as exc:
        raise EdgecError(f"cannot read the external data of {path.name}: {exc.strerror or exc}",
                         "keep the .data files, readable, next to the .onnx file they belong to") from None
    return model


def _read_torch_factory(source: str, shapes: dict[str | None, tuple[int, ...]]) -> onnx.ModelProto:
    module_name, _, attr = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EdgecError(f"cannot import '{module_name}': {exc}",
                         "make the module importable (PYTHONPATH) or pass an .onnx file") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise EdgecError(f"'{module_name}' has no attribute '{attr}'", "name a function that returns an nn.Module")
    net = factory() if callable(factory) and not _is_torch_module(factory) else factory
    if not _is_torch_module(net):
        raise EdgecError(f"'{source}' did not give a torch.nn.Module (got {type(net).__name__})",
                         "the factory must return an nn.Module")
    return _export_torch(net, shapes, source)


def _read_pt2(source: str, shapes: dict[str | None, tuple[int, ...]]) -> onnx.ModelProto:
    import torch

    try:
        program = torch.export.load(source)
    except Exception as exc:
        raise EdgecError(f"cannot load {source} as a torch.export program ({type(exc).__name__})",
                         "save it with torch.export.save") from None
    return _export_torch(program, shapes, source)


def _is_torch_module(obj: object) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _export_torch(net, shapes: dict[str | None, tuple[int, ...]], source: str) -> onnx.ModelProto:
    import torch

    if isinstance(net, torch.export.ExportedProgram):
        example = net.example_inputs[0] if net.example_inputs else None
        args = tuple(example) if example else None
    else:
        net = net.eval()
        args = None
    if args is None:
        if not shapes:
            raise EdgecError(f"{source} needs an input shape to be exported", "pass --input-shape 1,3,224,224")
        args = tuple(torch.randn(*s) for s in shapes.values())
    names = [k if k else f"input{i}" if len(shapes) > 1 else "input" for i, k in enumerate(shapes)] or None
    try:
        with torch.no_grad():
            program = torch.onnx.export(net, args, input_names=names, opset_version=EXPORT_OPSET, dynamo=True,
                                        verbose=False, optimize=True)
    except Exception as exc:
        raise EdgecError(f"torch.onnx.export failed for {source}: {str(exc).splitlines()[0][:200]}",
                         "check that the model runs on the given --input-shape") from None
    return program.model_proto


def _read_tflite(source: str, shapes: dict[str | None, tuple[int, ...]]) -> onnx.ModelProto:
    from edgec.toolchain.tflite import tflite_to_onnx

    path = Path(source)
    if path.is_dir():
        raise EdgecError(f"{path} is a folder, not a model file", "pass the .tflite file inside it")
    try:
        return tflite_to_onnx(path)
    except PermissionError:
        raise EdgecError(f"cannot read {path}: permission denied", "make the file readable (chmod +r)") from None


_READERS: list[tuple[Callable[[str], bool], Callable[[str, dict], onnx.ModelProto]]] = [
    (lambda s: s.lower().endswith(".onnx"), _read_onnx),
    (lambda s: s.lower().endswith(".tflite"), _read_tflite),
    (lambda s: s.lower().endswith((".pt2", ".pte")), _read_pt2),
    (lambda s: bool(re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", s)), _read_torch_factory),
]


def read_source(source: str | Path, shapes: dict[str | None, tuple[int, ...]] | None = None,
                limits: Limits | None = None) -> onnx.ModelProto:
    """Read a model file or ``package.module:factory`` into ONNX, without canonicalising it, and validate it
    (:func:`edgec.toolchain.validate.validate_model`): every command refuses a broken graph here, in one line."""
    source = str(source)
    shapes = shapes or {}
    looks_like_path = "/" in source or Path(source).suffix != ""
    if looks_like_path and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", source) and not Path(source).exists():
        raise EdgecError(f"model file {source} does not exist", "check the path")
    for matches, reader in _READERS:
        if matches(source):
            model = reader(source, shapes)
            validate_model(model, limits or Limits.from_env(), Path(source) if Path(source).is_file() else None)
            return model
    raise EdgecError(f"unsupported model source '{source}'",
                     "pass an .onnx or .tflite file, a .pt2 torch.export program, or package.module:factory "
                     "for PyTorch")


# --------------------------------------------------------------------------------------------------------------

def is_static(dim: object) -> bool:
    """A dim with a fixed size. ``-1`` (paddle2onnx and others write dynamic dims so), a name, ``?`` and an
    empty dim are all dynamic."""
    return isinstance(dim, int) and dim >= 0


def fix_input_shapes(model: ir.Model, shapes: dict[str | None, tuple[int, ...]],
                     notes: list[str] | None = None) -> None:
    """Replace the graph inputs' dims by the given static shapes; refuse what does not fit.

    A given dim must equal the model's dim where that one is already static: a 1×3×224×224 model fed 1×3×32×32 is
    a user mistake we catch here instead of deep inside TVM. An input whose only dynamic dim is the first (the batch
    of almost every exported model) and that no shape was given for runs at batch 1; the assumption is appended to
    ``notes``. Any other dynamic dim must be given, and the message lists them.
    """
    inputs = {v.name: v for v in model.graph.inputs}
    if None in shapes:
        if len(inputs) != 1:
            raise EdgecError(f"the model has {len(inputs)} inputs ({', '.join(inputs)}): a bare shape is ambiguous",
                             "name each one: --input-shape name:1,3,224,224")
        shapes = {next(iter(inputs)): shapes[None]}
    for name, shape in shapes.items():
        if name not in inputs:
            raise EdgecError(f"the model has no input named '{name}'", f"its inputs are: {', '.join(inputs)}")
        value = inputs[name]
        current = list(value.shape) if value.shape is not None else None
        if current is not None:
            if len(current) != len(shape):
                raise EdgecError(f"input '{name}' has rank {len(current)} {_fmt_dims(current)}, "
                                 f"but the shape given has rank {len(shape)} {tuple(shape)}",
                                 f"pass a shape with {len(current)} dimensions")
            for i, (old, new) in enumerate(zip(current, shape)):
                if is_static(old) and old not in (0, new):
                    raise EdgecError(f"input '{name}' needs {_fmt_dims(current)}, but the shape given is "
                                     f"{tuple(shape)} (dim {i}: {old} ≠ {new})",
                                     "pass a shape that matches the model's fixed dimensions")
        value.shape = ir.Shape(list(shape))
    for name, value in inputs.items():
        dims = list(value.shape) if value.shape is not None else None
        if dims is not None and 0 in dims:
            raise EdgecError(f"input '{name}' has a dimension of size 0 {_fmt_dims(dims)}: an empty tensor",
                             f"give its real size with --input-shape {name}:...")
        if dims is not None and all(is_static(d) for d in dims):
            continue
        if dims and not is_static(dims[0]) and all(is_static(d) for d in dims[1:]):
            value.shape = ir.Shape([1, *dims[1:]])
            if notes is not None:
                notes.append(f"input '{name}' has a dynamic batch dim {_fmt_dims(dims)}: compiled for batch 1 "
                             f"(--input-shape {name}:N,{','.join(str(d) for d in dims[1:])} for another)")
            continue
        shown = _fmt_dims(dims) if dims is not None else "(unknown rank)"
        which = ", ".join(str(i) for i, d in enumerate(dims or []) if not is_static(d))
        example = ",".join(str(d) if is_static(d) else "1" if i == 0 else "N" for i, d in enumerate(dims or [1]))
        raise EdgecError(f"input '{name}' has dynamic dimensions {shown}" + (f" (dims {which})" if which else ""),
                         f"fix them with --input-shape {name}:{example}, N the size to compile for")


def _fmt_dims(dims: list) -> str:
    return "(" + ", ".join(str(d) if is_static(d) else (str(d) if not isinstance(d, int) and str(d) else "?")
                           for d in dims) + ")"


# What loading runs after fixing input shapes; recorded in the pass log like any pipeline.
CANONICAL_PASSES = ("lift_constants", "fold_constants")


def canonicalize(model: onnx.ModelProto, shapes: dict[str | None, tuple[int, ...]],
                 log: list[dict] | None = None, limits: Limits | None = None) -> ir.Model:
    """Static shapes, Constant weights lifted, shape subgraphs folded: what every pass and target expects.

    The canonicalising passes' log entries are appended to ``log`` (marked ``"stage": "load"``) when given, after
    one ``input_shapes`` entry per assumption made about a dynamic dim (its ``report["note"]`` says which).
    Folding makes no tensor over ``limits``, and a model in which shape inference finds one is refused here,
    before anything allocates it.
    """
    from edgec.passes import get_pass
    from edgec.toolchain.pipeline import run_pipeline

    limits = limits or Limits.from_env()
    ir_model = ir.serde.deserialize_model(model)
    # Initializers listed as graph inputs (old exporters do this) are weights, not inputs.
    init_names = set(ir_model.graph.initializers)
    for value in list(ir_model.graph.inputs):
        if value.name in init_names:
            ir_model.graph.inputs.remove(value)
    notes: list[str] = []
    fix_input_shapes(ir_model, shapes, notes)
    for value in ir_model.graph.inputs:
        itemsize = value.dtype.itemsize if value.dtype is not None else 4
        limits.check(f"input '{value.name}'", list(value.shape or []), itemsize)
    nodes = len(ir_model.graph)
    passes = [get_pass(name, limits=limits) if name == "fold_constants" else name for name in CANONICAL_PASSES]
    ir_model, entries = run_pipeline(ir_model, passes)
    check_value_sizes(ir_model, limits)
    check_conv_channels(ir_model)
    if log is not None:
        log.extend({"stage": "load", "pass": "input_shapes", "changed": True, "nodes_before": nodes,
                    "nodes_after": nodes, "report": {"note": note}} for note in notes)
        log.extend({"stage": "load", **e} for e in entries)
    return ir_model


def check_value_sizes(model: ir.Model, limits: Limits) -> None:
    """Every tensor of the graph whose shape inference knows fits ``limits``: the compiled model, onnxruntime
    during verification and the runner would each allocate it."""
    for node in model.graph.all_nodes():
        for value in node.outputs:
            shape, dtype = value.shape, value.dtype
            if shape is None or dtype is None or not all(isinstance(d, int) for d in shape):
                continue
            limits.check(f"tensor '{value.name}' (output of {node.op_type} node '{node.name}')", list(shape),
                         dtype.itemsize)


def load_model(source: str | Path, input_shapes: str | Sequence[str] | dict | None = None,
               log: list[dict] | None = None, limits: Limits | None = None) -> ir.Model:
    """Read ``source`` (ONNX or TFLite file, .pt2, or ``module:factory``) and canonicalise it. The one entry point.

    ``limits`` bounds every tensor edgec makes; by default what ``EDGEC_MAX_TENSOR_MB`` says."""
    limits = limits or Limits.from_env()
    shapes = input_shapes if isinstance(input_shapes, dict) else parse_input_shapes(input_shapes)
    proto = read_source(source, shapes, limits)
    return canonicalize(proto, shapes, log, limits)


def input_signature(model: ir.Model) -> list[dict]:
    return [_value_spec(v) for v in model.graph.inputs]


def output_signature(model: ir.Model) -> list[dict]:
    return [_value_spec(v) for v in model.graph.outputs]


def _value_spec(value: ir.Value) -> dict:
    dtype = value.dtype.numpy().name if value.dtype is not None else "unknown"
    # -1 (paddle2onnx) is a dynamic dim like a name: null in signatures and manifests.
    shape = [d if is_static(d) else None for d in value.shape] if value.shape is not None else None
    return {"name": value.name, "dtype": dtype, "shape": shape}
