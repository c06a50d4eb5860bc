"""edgec's own operators (domain ``edgec``): binary (XNOR-popcount) and adder (L1) layers.

Each op is defined once, as an ONNX model-local function whose body uses only standard ops
(:mod:`edgec.ops.functions`), so onnxruntime or any ONNX runtime runs a model holding them unchanged; numpy
references (:mod:`edgec.ops.reference`) define the arithmetic a kernel must reproduce, and
:mod:`edgec.ops.packing` the bit layout of binary weights and activations. Nothing here imports torch.
"""
