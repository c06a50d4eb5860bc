"""The CPU builder, shared by every LLVM preset (x86 and Arm): Relax → scheduled TIR → shared library.

TVM's default CPU pipeline legalizes and fuses operators but schedules nothing: every loop nest runs as written,
which is why untuned code is 13–37× slower than onnxruntime. This builder runs the same pipeline with a
scheduling stage inserted right after fusion, where each fused PrimFunc is scheduled by (1) a tuning database
when one is given (records measured by `edgec tune`), then (2) the rules of edgec's kernel table (registry.py)
for whatever is left. A function already scheduled (``tirx.is_scheduled``) is never touched again.

Every kernel decision asks the target's ISA features (isa.py) and the :class:`CpuOptions` passed in; what the
build did comes back as a :class:`BuildReport` (no module globals in either direction).

Cross-compiled libraries (aarch64) are linked with Debian's cross g++, so the artifact is a real ELF for the board.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import onnx

from edgec.errors import EdgecError
from edgec.targets.base import BuildInfo, TargetPreset, register_builder
from edgec.targets.cpu.isa import isa_of
from edgec.targets.cpu.options import CpuOptions, l2_bytes
from edgec.targets.lower import to_relax


@dataclasses.dataclass
class BuildReport:
    """What a CPU build did, returned to its caller (and written into the manifest's ``target.build``)."""

    tvm_target: str = ""  # the resolved TVM target the build used
    isa: dict[str, Any] = dataclasses.field(default_factory=dict)  # resolved mcpu, lanes, features used
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    integer_layers: int = 0  # QDQ layers compiled to integer kernels (qdq_lower)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # constants the executable holds
    packed: dict[str, Any] = dataclasses.field(default_factory=dict)  # int4/binary weights packed (int4_pack)
    tuning: dict[str, Any] | None = None  # what the tuning database scheduled (tuning.apply_database_pass)
    kernels: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # kernel_list.kernel_table
    binary: dict[str, Any] = dataclasses.field(default_factory=dict)  # binary convs on the popcount kernel
    binary_gemm: dict[str, Any] = dataclasses.field(default_factory=dict)  # binary dense layers, same
    adder: dict[str, Any] = dataclasses.field(default_factory=dict)  # adder convs on the adder kernel
    adder_int8: dict[str, Any] = dataclasses.field(default_factory=dict)  # 8-bit adder convs (vpsadbw kernel)

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tvm_target": self.tvm_target, "isa": self.isa, "cpu_options": self.options,
                               "params": {**self.params, "int4_packed": dict(self.packed)},
                               "kernels": list(self.kernels)}
        if self.integer_layers:
            out["integer_layers"] = self.integer_layers
        if self.tuning is not None:
            out["tuning"] = dict(self.tuning)
        if self.binary.get("layers"):
            out["binary_conv"] = dict(self.binary)
        if self.binary_gemm.get("layers"):
            out["binary_gemm"] = dict(self.binary_gemm)
        if self.adder.get("layers"):
            out["adder_conv"] = dict(self.adder)
        if self.adder_int8.get("layers"):
            out["adder_conv_int8"] = dict(self.adder_int8)
        return out


def require_compiler(cc: str | None) -> None:
    if cc and shutil.which(cc) is None:
        package = cc.replace("-g++", "").replace("gcc", "")
        raise EdgecError(f"cross compiler {cc} not found",
                         f"install it: apt-get install g++-{package}" if package else "install a C++ compiler")


def target_l2(preset: TargetPreset) -> int | None:
    """The L2 size the depthwise → 1×1 threshold derives from: this host's for a host preset, else None (the
    default: 1 MiB, what it was measured against)."""
    return l2_bytes() if preset.tvm.get("mcpu") == "host" else None


def schedule_passes(target, options: CpuOptions, tuning_db: str | Path | None = None,
                    report: BuildReport | None = None) -> list:
    """The scheduling stage: tuned records first, then the kernel table's rules (registry.py).

    A process that schedules AMX kernels may run them in place (compile's verification, benches, tests): Linux
    kills it at the first tile instruction unless it asked for the tile state, so it asks here, once for every
    build path (a no-op on a CPU without AMX)."""
    from edgec.targets.cpu.registry import cpu_schedule_pass
    from edgec.targets.cpu.serial_small import mark_small_pass

    if options.amx and isa_of(target).amx_int8:
        from edgec.devices.device_main import request_amx_permission

        request_amx_permission()

    passes = []
    if tuning_db is not None:
        from edgec.targets.cpu.tuning import apply_database_pass

        applied: dict[str, Any] = {}
        if report is not None:
            report.tuning = applied
        passes.append(apply_database_pass(tuning_db, target, options, applied))
    passes.append(cpu_schedule_pass(options))
    passes.append(mark_small_pass(options.parallel_min_ns))  # kernels too small to share keep their loops serial
    return passes


def fusion_passes(target, options: CpuOptions, l2: int | None = None, packed: dict[str, Any] | None = None,
                  binary: dict[str, Any] | None = None, adder: dict[str, Any] | None = None,
                  binary_gemm: dict[str, Any] | None = None, adder_int8: dict[str, Any] | None = None) -> list:
    """Relax → fused PrimFuncs: blocked conv layouts, legalization (the kernel table's), fusion.

    The weights' layout transforms are constants here, so FoldConstant prepacks them. Tuning extracts its tasks
    from this same list, so a workload hashes identically when it is tuned and when it is compiled.
    """
    from tvm import relax

    from edgec.targets.cpu.fast_math import fast_math_pass
    from edgec.targets.cpu.kernels.adder_conv import adder_conv_pass
    from edgec.targets.cpu.kernels.adder_int8 import adder_int8_pass
    from edgec.targets.cpu.kernels.binary_conv import binary_conv_pass
    from edgec.targets.cpu.kernels.binary_gemm import binary_gemm_pass
    from edgec.targets.cpu.kernels.concat import legalize_concat_for
    from edgec.targets.cpu.kernels.conv1d import conv1d_pass
    from edgec.targets.cpu.kernels.dw_pointwise import fuse_depthwise_pointwise_pass
    from edgec.targets.cpu.kernels.int8_amx_matmul import legalize_matmul_for
    from edgec.targets.cpu.kernels.int8_matmul_vnni import vnni_matmul_pass
    from edgec.targets.cpu.kernels.int8_vnni import pad_input_channels_pass, unsigned_activations_pass
    from edgec.targets.cpu.kernels.matmul import pad_columns_pass
    from edgec.targets.cpu.kernels.resize import legalize_resize_for
    from edgec.targets.cpu.layout_sink import sink_layout_transforms_pass
    from edgec.targets.cpu.layout import (layout_pass, legalize_conv2d_for, legalize_round, split_channels_pass,
                                          squeeze_axes_pass)
    from edgec.targets.cpu.pad_channels import pad_output_channels_pass
    from edgec.targets.int4_pack import pack_int4_pass

    isa = isa_of(target)
    return [
        binary_conv_pass(isa, binary),  # edgec::BinaryConv's float body → bit-packed XNOR/popcount kernel
        binary_gemm_pass(isa, binary_gemm),  # edgec::BinaryGemm's → the same arithmetic as a dense kernel
        adder_int8_pass(isa, adder_int8),  # a quantized AdderConv (input and weights on one grid) → vpsadbw kernel
        adder_conv_pass(isa, adder),  # edgec::AdderConv's unfold + |·| + sum body → blocked direct adder kernel
        unsigned_activations_pass(isa),  # int8 × int8 convs (TFLite) read x + 128: uint8 × int8 for VNNI
        pad_input_channels_pass(isa),  # an image's 3 channels as 4: the int8 stem runs on VNNI
        vnni_matmul_pass(isa, options),  # int8 Gemm/MatMul with constant weights as 16×4 vpdpbusd blocks
        conv1d_pass(isa),  # 1-D convs as im2col + matmul (long kernels) or 2-D convs of unit height
        pad_columns_pass(isa),  # a matmul's columns padded to whole vectors (a 8210-class head)
        pad_output_channels_pass(isa, options),  # 42 output channels as 48: whole blocks, not TVM's generic conv
        split_channels_pass(),  # channel splits as slices: TVM's split keeps unblocked split points
        squeeze_axes_pass(),  # squeeze(axis=-1) as axis=2: TVM's layout pass crashes on a negative one
        layout_pass(target, options),
        sink_layout_transforms_pass(),  # T⁻¹(relu(add(T(y), r))) → relu(add(y, T⁻¹(r))): no round trip
        # depthwise → 1×1 conv pairs become one kernel (see kernels/dw_pointwise)
        fuse_depthwise_pointwise_pass(isa, options, l2),
        fast_math_pass(),  # exp / sigmoid / tanh / erf as vectorizable arithmetic, not one expf call per lane
        relax.transform.LegalizeOps({"relax.nn.conv2d": legalize_conv2d_for(target, options),
                                     "relax.matmul": legalize_matmul_for(target, options),  # AMX int8, else TVM's
                                     "relax.round": legalize_round,
                                     "relax.concat": legalize_concat_for(target),  # many inputs: copies
                                     "relax.image.resize2d": legalize_resize_for(target)}),  # 2×: fixed taps
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        pack_int4_pass(packed),  # int4 weights, now in their final layout: stored packed, unpacked at run time
        # A fused function that only reshapes becomes a view again (TVM runs this pass after scheduling, when the
        # scheduled loops no longer show the pattern): the image's NCHW → NCHW1c copy cost 10 µs per inference.
        relax.transform.RewriteDataflowReshape(),
    ]


def relax_pipeline(target, scheduling: Sequence[Any], options: CpuOptions, l2: int | None = None,
                   report: BuildReport | None = None):
    """TVM's CPU pipeline (cpu_generic) with edgec's fusion passes and ``scheduling`` before lowering; the
    constants the final module holds go into ``report.params``."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from edgec.targets.int4_pack import constant_bytes
    from edgec.targets.kernel_list import kernel_table

    packed = report.packed if report is not None else None
    binary = report.binary if report is not None else None
    adder = report.adder if report is not None else None
    binary_gemm = report.binary_gemm if report is not None else None
    adder_int8 = report.adder_int8 if report is not None else None

    @tvm.transform.module_pass(opt_level=0, name="EdgecCpuPipeline")
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + fusion_passes(target, options, l2,
                                                                                               packed, binary, adder,
                                                                                               binary_gemm, adder_int8)
                                           + list(scheduling) + cpu.dataflow_lower_passes(target)
                                           + cpu.finalize_passes(target))
            mod = seq(mod)
        if report is not None:
            report.params = constant_bytes(mod)  # what the executable holds: the artifact's weights
            report.kernels = kernel_table(mod)  # what ``edgec bench --profile`` times one by one
        return mod

    return _pipeline


def staged_module(mod, preset: TargetPreset, options: CpuOptions | None = None, scheduled: bool = True):
    """(``mod`` — imported Relax — as a CPU build sees it after fusion, and after its schedule stage with
    ``scheduled``; the TVM target): the fused PrimFuncs that tuning extracts and tests and benches inspect."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    options = options or CpuOptions()
    target = preset.tvm_target()
    with target:
        passes = cpu.library_dispatch_passes(target) + fusion_passes(target, options, target_l2(preset))
        if scheduled:
            passes += schedule_passes(target, options)
        return tvm.transform.Sequential(passes)(mod), target


def compile_cpu(model: onnx.ModelProto, preset: TargetPreset, options: CpuOptions | None = None,
                tuning_db: str | Path | None = None):
    """(executable, BuildReport) for ``model`` on ``preset``: the TVM build, not yet exported."""
    from tvm import relax

    from edgec.targets.cpu import stack_alloc
    from edgec.targets.qdq_lower import count_integer_layers

    options = options or CpuOptions()
    mod = to_relax(model)
    target = preset.tvm_target()
    report = BuildReport(tvm_target=str(target), isa=isa_of(target).summary(), options=options.to_dict(),
                         integer_layers=count_integer_layers(mod))
    pipeline = relax_pipeline(target, schedule_passes(target, options, tuning_db, report), options,
                              target_l2(preset), report)
    # "compiled": the Relax ``main`` itself becomes machine code (TVM's VM-TIR) instead of bytecode the VM
    # interprets call by call: 1.7-2 µs less per inference on the embedded model, 3 % of its pruned latency.
    # TIR: TVM's lowering, then per-row scratch buffers on the stack (stack_alloc.py); with options.bounds_check,
    # every buffer access asserts its index first (bounds_check.py, a debug mode).
    executable = relax.build(mod, target=target, relax_pipeline=pipeline,
                             tir_pipeline=stack_alloc.register(bounds_check=options.bounds_check),
                             exec_mode=options.exec_mode)
    return executable, report


@register_builder("cpu")
def build_cpu(model: onnx.ModelProto, preset: TargetPreset, lib_path: Path, options: dict[str, Any]) -> BuildInfo:
    """The registered builder: ``options["cpu"]`` (a CpuOptions) and ``options["tuning_db"]`` are read."""
    require_compiler(preset.cc)
    start = time.perf_counter()
    executable, report = compile_cpu(model, preset, options.get("cpu"), options.get("tuning_db"))
    if preset.cc:
        executable.export_library(str(lib_path), cc=preset.cc)
    else:
        executable.export_library(str(lib_path))
    return BuildInfo(seconds=time.perf_counter() - start, details=report.details())
