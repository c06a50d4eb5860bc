"""What several test modules share: the CLI's one-line-error check, an in-process x86 compile, a tiny ONNX
graph builder for hand-stated channel groups, and the tail of the QDQ layer builders (not a test module: pytest
does not collect it)."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper


def assert_user_error(code: int, err: str, *needles: str) -> None:
    """A user mistake: exit 2 and one ``edgec: error:`` line (no traceback) containing every needle."""
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgec: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def finish_qdq_layer(nodes: list, init: list, inputs: list[str], kind: str, xshape: list[int], *, k: int = 3,
                     stride: int = 1, pad: int = 1, group: int = 1, relu: bool = True, out_q: bool = True,
                     sy: float = 0.05, zy: int | None = None, opset: int = 13, ir_version: int = 8
                     ) -> onnx.ModelProto:
    """The int8/int4 layer builders' shared tail: Conv/Gemm/MatMul on ``inputs`` (dequantized x, weight[, bias])
    → [Relu] → Q/DQ at scale ``sy`` and zero point ``zy`` (0 after a ReLU, else 128) or Identity → 'out'."""
    if kind == "conv":
        nodes.append(helper.make_node("Conv", inputs, ["y"], kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[pad] * 4, group=group))
    elif kind == "gemm":
        nodes.append(helper.make_node("Gemm", inputs, ["y"], transB=1))
    else:
        nodes.append(helper.make_node("MatMul", inputs, ["y"]))
    last = "y"
    if relu:
        nodes.append(helper.make_node("Relu", ["y"], ["yr"]))
        last = "yr"
    if out_q:
        zy = (0 if relu else 128) if zy is None else zy
        init += [numpy_helper.from_array(np.float32(sy), "sy"), numpy_helper.from_array(np.uint8(zy), "zy")]
        nodes.append(helper.make_node("QuantizeLinear", [last, "sy", "zy"], ["yq"]))
        nodes.append(helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"]))
    else:
        nodes.append(helper.make_node("Identity", [last], ["out"]))
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def compile_x86(model: onnx.ModelProto):
    """``model`` through edgec's CPU pipeline for this host: (the imported Relax module, x → numpy output,
    the BuildReport)."""
    import tvm
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import BuildReport, relax_pipeline, schedule_passes
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.lower import to_relax

    target = resolve_target("x86").tvm_target()
    mod = to_relax(model)
    options, report = CpuOptions(), BuildReport()
    ex = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target, schedule_passes(target, options),
                                                                       options, report=report))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return mod, lambda x: vm["main"](tvm.runtime.tensor(x)).numpy(), report


class GraphBuilder:
    """Tiny graph builder: named Conv/BN/... nodes with random weights, NCHW float32. ``fan_in_scaled`` divides
    conv weights by √(cin·k) so deep stacks keep activations near unit scale."""

    def __init__(self, cin: int = 3, hw: int = 8, seed: int = 1, fan_in_scaled: bool = False) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])
        self.rng = np.random.default_rng(seed)
        self.fan_in_scaled = fan_in_scaled

    def w(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def conv(self, name: str, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = False) -> str:
        weight = self.rng.standard_normal((cout, cin // group, k, k))
        if self.fan_in_scaled:
            weight = weight / np.sqrt(cin * k)
        ins = [x, self.w(f"{name}.W", weight)]
        if bias:
            ins.append(self.w(f"{name}.B", self.rng.standard_normal(cout)))
        self.nodes.append(helper.make_node("Conv", ins, [name], name=name, pads=[k // 2] * 4, group=group,
                                           kernel_shape=[k, k]))
        return name

    def bn(self, name: str, x: str, c: int) -> str:
        params = [self.w(f"{name}.{p}", v) for p, v in (
            ("scale", self.rng.uniform(0.5, 1.5, c)), ("bias", self.rng.uniform(-0.2, 0.2, c)),
            ("mean", self.rng.uniform(-0.5, 0.5, c)), ("var", self.rng.uniform(1.0, 2.0, c)))]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *params], [name], name=name, epsilon=1e-5))
        return name

    def op(self, op: str, name: str, *inputs: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def model(self, out: str, out_shape: list[int]) -> ir.Model:
        graph = helper.make_graph(self.nodes, "g", [self.input],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        onnx.checker.check_model(proto, full_check=True)
        return ir.serde.deserialize_model(proto)


def conv_model(n, cin, cout, hw, k, stride=1, pads=None, dilation=1, groups=1, act=None, residual=False):
    """Conv (+ residual add) (+ ReLU / ReLU6), random weights; ``hw`` a side or (height, width)."""
    rng = np.random.default_rng(cin * 100 + cout)
    height, width = (hw, hw) if isinstance(hw, int) else hw
    pads = pads if pads is not None else [k // 2] * 4
    w = numpy_helper.from_array((rng.standard_normal((cout, cin // groups, k, k)) * 0.2).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=pads, strides=[stride, stride],
                              dilations=[dilation, dilation], group=groups)]
    last = "c"
    if residual:
        nodes.append(helper.make_node("Add", [last, "x"], ["r"]))
        last = "r"
    if act == "relu":
        nodes.append(helper.make_node("Relu", [last], ["a"]))
        last = "a"
    elif act == "relu6":
        lo = numpy_helper.from_array(np.array(0.0, np.float32), "lo")
        hi = numpy_helper.from_array(np.array(6.0, np.float32), "hi")
        nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["a"]))
        last = "a"
    inits = [w, b] + ([lo, hi] if act == "relu6" else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, cin, height, width])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def concat_model(shapes, axis: int):
    """Sigmoid of each input (a producer FuseOps would inline into the concat), joined along ``axis``."""
    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(s)) for i, s in enumerate(shapes)]
    nodes = [helper.make_node("Sigmoid", [f"x{i}"], [f"s{i}"]) for i in range(len(shapes))]
    nodes.append(helper.make_node("Concat", [f"s{i}" for i in range(len(shapes))], ["y"], axis=axis))
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    graph = helper.make_graph(nodes, "concat", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def matmul_model(a_shape, k, n, bias=True):
    rng = np.random.default_rng(k + n)
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"])]
    inits = [w]
    out = "m"
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
        out = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(a_shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def dw_pw_model(n=1, c=32, cout=16, hw=14, k=3, stride=1, pads=None, act="relu6", residual=False,
                tap_dw=False):
    """depthwise k×k conv (+ act) → 1×1 conv (+ residual add): a MobileNet block's second half."""
    rng = np.random.default_rng(c * 7 + cout)
    height, width = (hw, hw) if isinstance(hw, int) else hw
    pads = pads if pads is not None else [k // 2] * 4
    inits = [numpy_helper.from_array((rng.standard_normal((c, 1, k, k)) * 0.3).astype(np.float32), "wd"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "bd"),
             numpy_helper.from_array((rng.standard_normal((cout, c, 1, 1)) * 0.2).astype(np.float32), "wp"),
             numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "bp"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "wd", "bd"], ["d"], pads=pads, strides=[stride, stride], group=c)]
    mid = "d"
    if act == "relu6":
        nodes.append(helper.make_node("Clip", ["d", "lo", "hi"], ["a"]))
        mid = "a"
    elif act == "relu":
        nodes.append(helper.make_node("Relu", ["d"], ["a"]))
        mid = "a"
    nodes.append(helper.make_node("Conv", [mid, "wp", "bp"], ["p"]))
    out = "p"
    if residual:
        nodes.append(helper.make_node("Add", ["p", "x"], ["r"]))
        out = "r"
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
    if tap_dw:  # the depthwise result is also a model output: it must still be computed on its own
        outputs.append(helper.make_tensor_value_info(mid, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, height, width])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def runnable_preset(target: str) -> str:
    """``target`` where this host can run its code (its ISA features are the host's or fewer), else the host's own
    preset ``x86``: a test pins the preset whose kernel choices it checks, and compares outputs where it can."""
    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of

    preset = resolve_target(target)
    if preset.arch != "x86_64":
        return target
    need = isa_of(preset.tvm_target()).features
    return target if need <= isa_of(resolve_target("x86").tvm_target()).features else "x86"


def edgec_ops_model(seed: int = 0) -> onnx.ModelProto:
    """One input ``x`` [1, 40, 8, 8] (40 channels: one whole 32-bit word and part of another) and one output per
    edgec op applied to ``x`` itself — no layer feeds another, so each output is checked on its own:

    * ``bin_int``: BinaryConv 3×3/1 pad 1 (the flat form), alpha 1, bias 0, shift 0: exactly the integer part;
    * ``bin``: BinaryConv 3×3/2 pad 1 (the row form), 17 outputs, real alpha, bias and shift;
    * ``gemm_int``: BinaryGemm on x flattened (K = 2560), 37 outputs, alpha 1, bias 0, shift 0;
    * ``gemm``: BinaryGemm, 20 outputs, real alpha, bias and shift;
    * ``adder``: AdderConv 3×3/1 pad 1, 12 outputs; ``adder_s2``: AdderConv 3×3/2 pad 1, 8 outputs.

    The function form is attached, so onnxruntime runs it as it stands."""
    from edgec.ops.functions import add_functions
    from edgec.ops.packing import pack_signs

    rng = np.random.default_rng(seed)
    c, hw = 40, 8
    k = c * hw * hw
    inits, nodes, outputs = [], [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def vectors(name: str, o: int, n_in: int, unit: bool) -> list[str]:
        alpha = np.ones(o, np.float32) if unit else rng.uniform(0.05, 0.5, o).astype(np.float32)
        bias = np.zeros(o, np.float32) if unit else rng.standard_normal(o).astype(np.float32)
        shift = np.zeros(n_in, np.float32) if unit else (rng.standard_normal(n_in) * 0.3).astype(np.float32)
        return [const(f"{name}_alpha", alpha), const(f"{name}_shift", shift), const(f"{name}_b", bias)]

    for name, o, stride, unit in (("bin_int", 10, 1, True), ("bin", 17, 2, False)):
        w = pack_signs(rng.standard_normal((o, c, 3, 3)), axis=1, word_bits=8)
        alpha, shift, bias = vectors(name, o, c, unit)
        nodes.append(helper.make_node("BinaryConv", ["x", const(f"{name}_w", w), alpha, shift, bias], [name],
                                      domain="edgec", strides=[stride] * 2, pads=[1] * 4, dilations=[1, 1]))
        side = (hw - 1) // stride + 1
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, o, side, side]))
    nodes.append(helper.make_node("Reshape", ["x", const("flat_shape", np.array([1, k], np.int64))], ["x_flat"]))
    for name, o, unit in (("gemm_int", 37, True), ("gemm", 20, False)):
        w = pack_signs(rng.standard_normal((o, k)), axis=1, word_bits=8)
        alpha, shift, bias = vectors(name, o, k, unit)
        nodes.append(helper.make_node("BinaryGemm", ["x_flat", const(f"{name}_w", w), alpha, shift, bias], [name],
                                      domain="edgec"))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, o]))
    for name, o, stride in (("adder", 12, 1), ("adder_s2", 8, 2)):
        w = (rng.standard_normal((o, c, 3, 3)) * 0.5).astype(np.float32)
        nodes.append(helper.make_node("AdderConv", ["x", const(f"{name}_w", w),
                                                    const(f"{name}_b", rng.standard_normal(o).astype(np.float32))],
                                      [name], domain="edgec", strides=[stride] * 2, pads=[1] * 4, dilations=[1, 1]))
        side = (hw - 1) // stride + 1
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, o, side, side]))
    graph = helper.make_graph(nodes, "edgec_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [1, c, hw, hw])], outputs, inits)
    return add_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


EDGEC_OPS_INPUT = (1, 40, 8, 8)


@functools.cache
def edgec_ops_arm_asm(preset: str):
    """:func:`edgec_ops_model` through ``edgec compile``'s pipeline and CPU builder for the Arm ``preset``, built,
    not run: test_isa_codegen's ``Build`` (LLVM's assembly split into functions). Cached: the binary, binary
    dense and adder kernel tests read the same build."""
    import tempfile
    from pathlib import Path

    from test_isa_codegen import compile_asm

    from edgec.targets import resolve_target
    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edgec_ops.onnx"
        onnx.save(edgec_ops_model(), str(path))
        model, _ = run_pipeline(load_model(path))
    return compile_asm(ir.serde.serialize_model(model), resolve_target(preset))


@functools.cache
def edgec_ops_on_qemu(target: str = "arm:cortex-a72", seed: int = 1) -> dict:
    """`edgec compile --target TARGET` of :func:`edgec_ops_model`, run once on the emulated aarch64 device
    (qemu-user, edgec/devices/qemu_aarch64.py): ``{"build": the manifest's build record, "outputs": name → the
    device's output, "reference": name → onnxruntime's on the function form}`` for one random input. Cached (one
    emulated run costs ~20 s, mostly ``import tvm`` under qemu); skips where the cross compiler or qemu is
    missing."""
    import shutil
    import tempfile
    from pathlib import Path

    import pytest

    from edgec.toolchain import api

    missing = [tool for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64-static") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: g++-aarch64-linux-gnu, qemu-user-static)")
    model = edgec_ops_model()
    x = np.random.default_rng(seed).standard_normal(EDGEC_OPS_INPUT).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edgec_ops.onnx"
        onnx.save(model, str(path))
        result = api.compile(path, target=target, output=Path(folder) / "art", verify=False)
        outputs = api.run(Path(folder) / "art", {"x": x}, device="qemu-aarch64").outputs
        reference = api.onnxruntime_outputs(path, {"x": x})
    names = [o.name for o in model.graph.output]
    return {"build": result.artifact.manifest["target"]["build"], "outputs": outputs,
            "reference": dict(zip(names, reference))}
def edgec_layers_model(layers: list[tuple], n: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A model of independent ``edgec`` op layers with random weights, one input ``x{i}`` and output ``y{i}`` per
    layer (so each layer's output is compared on its own, not through the next layer's signs):
    ``("binary_conv" | "adder_conv" | "float_conv", C, O, H, W, k, stride, pad, dilation)`` or ``("binary_gemm", K,
    O)``; batch ``n``. ``float_conv``: a plain ONNX Conv, the float layer the others replace. What tests/test_gpu_kernels.py and bench/device_check.py (set ``g``) run the GPU kernels on."""
    from edgec.ops.functions import DOMAIN, add_functions
    from edgec.ops.packing import pack_signs

    rng = np.random.default_rng(seed)
    nodes, inputs, outputs, inits = [], [], [], []
    for i, (kind, *dims) in enumerate(layers):
        def init(name: str, value: np.ndarray) -> str:
            inits.append(numpy_helper.from_array(value, f"{name}{i}"))
            return f"{name}{i}"

        if kind == "binary_gemm":
            k, o = dims
            xshape = [n, k]
            names = [init("w", pack_signs(rng.standard_normal((o, k)).astype(np.float32), axis=1)),
                     init("a", rng.uniform(0.05, 0.5, o).astype(np.float32)),
                     init("s", (0.1 * rng.standard_normal(k)).astype(np.float32)),
                     init("b", rng.standard_normal(o).astype(np.float32))]
            nodes.append(helper.make_node("BinaryGemm", [f"x{i}", *names], [f"y{i}"], domain=DOMAIN))
            yshape = [n, o]
        else:
            c, o, h, w, k, stride, pad, dilation = dims
            xshape = [n, c, h, w]
            weights = rng.standard_normal((o, c, k, k)).astype(np.float32)
            if kind == "binary_conv":
                names = [init("w", pack_signs(weights, axis=1)),
                         init("a", rng.uniform(0.05, 0.5, o).astype(np.float32)),
                         init("s", (0.1 * rng.standard_normal(c)).astype(np.float32)),
                         init("b", rng.standard_normal(o).astype(np.float32))]
                op = "BinaryConv"
            else:
                names = [init("w", weights if kind == "adder_conv" else weights * np.float32(0.05)),
                         init("b", rng.standard_normal(o).astype(np.float32))]
                op = "AdderConv" if kind == "adder_conv" else "Conv"
            nodes.append(helper.make_node(op, [f"x{i}", *names], [f"y{i}"], strides=[stride] * 2, pads=[pad] * 4,
                                          dilations=[dilation] * 2, **({} if op == "Conv" else {"domain": DOMAIN})))
            yshape = [n, o] + [(d + 2 * pad - dilation * (k - 1) - 1) // stride + 1 for d in (h, w)]
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, xshape))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, yshape))
    graph = helper.make_graph(nodes, "edgec_layers", inputs, outputs, inits)
    model = add_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    onnx.checker.check_model(model, full_check=True)
    return model


def binary_block_model(work, n: int = 1, c: int = 16, hw: tuple[int, int] = (12, 12), stride: int = 1,
                       also_output_conv: bool = False) -> onnx.ModelProto:
    """A binary residual block, `edgec substitute --to binary` of the float block (random weights)
    ``r = relu(x); c1 = conv1(r); out = relu(conv2(relu(c1)) + shortcut)`` — the shortcut ``r``, or ``c1`` when
    conv1 has ``stride`` 2 — with conv2's output also a graph output when ``also_output_conv``; ``work`` a folder
    for the float model."""
    from pathlib import Path

    from edgec.toolchain.substitute import SubstituteOptions, substitute

    rng = np.random.default_rng(5)
    init = [numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32), f"w{i}")
            for i in (1, 2)] + [numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"b{i}")
                                for i in (1, 2)]
    shortcut = "r" if stride == 1 else "c1"
    oh, ow = (-(-d // stride) for d in hw)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Conv", ["r", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[stride, stride]),
             helper.make_node("Relu", ["c1"], ["a"]),
             helper.make_node("Conv", ["a", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", shortcut], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, c, oh, ow])]
    if also_output_conv:
        outputs.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, [n, c, oh, ow]))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, *hw])],
                              outputs, init)
    float_path, path = Path(work) / "block.float.onnx", Path(work) / "block.binary.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(float_path))
    substitute(str(float_path), path, SubstituteOptions(to="binary"))
    return onnx.load(str(path))


def assert_bounds_checked_equal(model: onnx.ModelProto, tmp_path, target: str, options=None,
                                atol: float = 1e-4, seeds: tuple[int, ...] = (3, 4)) -> None:
    """``model`` built for ``target`` with every buffer access checked (CpuOptions.bounds_check, plus
    ``options``' other fields), run on fresh inputs from each seed: no out-of-bounds access, and each output within
    ``atol`` × max(1, max |reference|) of onnxruntime's."""
    import edgec
    from edgec.targets.cpu.options import CpuOptions
    from edgec.toolchain.api import onnxruntime_outputs, random_inputs

    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    options = (options or CpuOptions()).replace(bounds_check=True)
    result = edgec.compile(path, target=target, output=tmp_path / "art", verify=False, cpu_options=options)
    for seed in seeds:
        feed = random_inputs(result.artifact.inputs, seed=seed)
        got = list(edgec.run(tmp_path / "art", feed).outputs.values())[0]
        ref = onnxruntime_outputs(path, feed)[0]
        assert got.shape == ref.shape
        assert np.max(np.abs(got - ref)) <= atol * max(1.0, float(np.max(np.abs(ref))))


def staged(path, target: str, options=None, scheduled: bool = True):
    """(Relax module, TVM target) of the ONNX file ``path`` through edgec's pass pipeline and the CPU build up to
    fusion (and, with ``scheduled``, the schedule stage), for ``target`` with ``options``."""
    import onnx_ir as ir

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.lower import to_relax
    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    model, _ = run_pipeline(load_model(path))
    return staged_module(to_relax(ir.serde.serialize_model(model)), resolve_target(target), options, scheduled)
