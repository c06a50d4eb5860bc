"""Give a written ONNX model back the dynamic batch dim its source had (quantize, prune).

edgec works on static shapes (loading fixes them and folds shape arithmetic), but a user's exported model usually
has a dynamic batch, and onnxruntime's own quantizer keeps it: a quantized or pruned model that only runs at
batch 1 is a regression. So after the work, the source's dynamic dims go back on the inputs, the intermediate
shape annotations are dropped, and onnxruntime must run the result at batch 8 with the same per-sample outputs as
at batch 1. Where it cannot (the graph computed a shape from the batch, now folded into a constant, such
as a Reshape to [1, -1]), the static model is written and a note says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx

from edgec.toolchain.load import is_static

CHECK_BATCH = 8


@dataclasses.dataclass(frozen=True)
class SourceDims:
    """The source model's input dims by input name: an int for a fixed dim, a name for a dynamic one."""

    dims: dict[str, list[int | str]]

    def dynamic_batch(self) -> bool:
        return any(dims and isinstance(dims[0], str) for dims in self.dims.values())


def source_dims(source: str | Path) -> SourceDims:
    """The input dims of an .onnx source (-1, '?' and empty dims become names); other sources have none."""
    path = Path(str(source))
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return SourceDims({})
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    dims: dict[str, list[int | str]] = {}
    for value in model.graph.input:
        if value.name in inits or not value.type.tensor_type.HasField("shape"):
            continue
        row: list[int | str] = []
        for i, d in enumerate(value.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and is_static(d.dim_value):
                row.append(int(d.dim_value))
            else:
                row.append(d.dim_param if d.HasField("dim_param") and d.dim_param not in ("", "?")
                           else "batch" if i == 0 else f"{value.name}_dim{i}")
        dims[value.name] = row
    return SourceDims(dims)


def with_dynamic_batch(proto: onnx.ModelProto, source: SourceDims) -> onnx.ModelProto:
    """A copy of ``proto`` whose inputs have the source's dynamic batch dim (the first) back, and whose other
    shapes are left to inference. Other dynamic dims (an image's height and width) stay at the size the model
    was made for: only the batch is checked (:func:`runs_batched`), so only the batch is given back."""
    out = onnx.ModelProto.FromString(proto.SerializeToString())
    for value in out.graph.input:
        want = source.dims.get(value.name, [])
        dims = value.type.tensor_type.shape.dim
        if want and isinstance(want[0], str) and len(dims):
            dims[0].Clear()
            dims[0].dim_param = want[0]
    for value in out.graph.output:
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del out.graph.value_info[:]
    return out


def runs_batched(proto: onnx.ModelProto, static: onnx.ModelProto) -> bool:
    """onnxruntime runs ``proto`` at batch CHECK_BATCH, and its first sample equals ``static`` on that sample."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a probe: a graph that fails at batch 8 answers False, not an error log line
    try:
        dynamic = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        fixed = ort.InferenceSession(static.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any refusal means: not runnable with these dims
        return False
    rng = np.random.default_rng(0)
    feed, one = {}, {}
    for spec in fixed.get_inputs():
        shape = [int(d) for d in spec.shape]
        dtype = np.float32 if "float" in spec.type else np.int64
        batch = rng.standard_normal([CHECK_BATCH, *shape[1:]]).astype(dtype)
        feed[spec.name], one[spec.name] = batch, batch[:1]
    try:
        many = dynamic.run(None, feed)
        ref = fixed.run(None, one)
    except Exception:  # noqa: BLE001
        return False
    for got, want in zip(many, ref):
        if got.shape[:1] != (CHECK_BATCH,) or got.shape[1:] != want.shape[1:]:
            return False
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        if want.size and float(np.max(np.abs(got[:1].astype(np.float64) - want))) > 1e-2 * scale:
            return False
    return True


def restore_dynamic(proto: onnx.ModelProto, source: SourceDims) -> tuple[onnx.ModelProto, str | None]:
    """``proto`` with the source's dynamic batch where onnxruntime runs it batched; else ``proto`` and a note."""
    if not source.dynamic_batch():
        return proto, None
    candidate = with_dynamic_batch(proto, source)
    if runs_batched(candidate, proto):
        return candidate, None
    return proto, (f"the written model keeps batch 1: its graph computed a shape from the batch, now folded "
                   f"(onnxruntime refused it, or gave other results, at batch {CHECK_BATCH})")
