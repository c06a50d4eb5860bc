"""Graph passes on onnx_ir. Importing this package registers every built-in pass."""

from edgec.passes import (  # noqa: F401  (registration)
    broadcast_constants,
    canonicalize_clip,
    conv_transpose_to_conv,
    decompose_activations,
    fold_batchnorm,
    fold_constants,
    fuse_pad_into_conv,
    if_to_where,
    lift_constants,
    quantize_qdq,
    prune_channels,
    remove_dead,
    remove_identity,
    substitute_adder,
    substitute_binary,
    unroll_rnn,
)
from edgec.passes.base import EdgecPass, PassReport, get_pass, pass_names, register_pass

__all__ = ["EdgecPass", "PassReport", "get_pass", "pass_names", "register_pass"]
