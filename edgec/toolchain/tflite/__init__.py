"""TFLite in: a .tflite model read (reader.py), converted to an NCHW ONNX graph op by op (ops.py, layout.py) that
keeps the .tflite's interface, and the TFLite interpreter as the reference verification runs against
(reference.py)."""

from edgec.toolchain.tflite.convert import tflite_to_onnx
from edgec.toolchain.tflite.reference import interpreter_outputs

__all__ = ["tflite_to_onnx", "interpreter_outputs"]
