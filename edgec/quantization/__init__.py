"""Post-training quantization: arithmetic (:mod:`.qmath`), onnxruntime-driven collection (:mod:`.collect`) and
the ``quantize_model`` entry point (:mod:`.api`). The graph rewrite itself is the ``quantize_qdq`` pass."""
