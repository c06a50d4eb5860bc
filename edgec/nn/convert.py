"""Swap a float model's layers for binary or adder ones, and distill the result from the float model."""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgec.errors import EdgecError
from edgec.nn.adder import AdderConv2d
from edgec.nn.binary import BinaryConv2d, BinaryLinear


def _binary(module: nn.Module) -> nn.Module | None:
    if isinstance(module, nn.Conv2d) and module.groups == 1 and not isinstance(module.padding, str):
        new = BinaryConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.dilation, bias=module.bias is not None)
    elif isinstance(module, nn.Linear):
        new = BinaryLinear(module.in_features, module.out_features, bias=module.bias is not None)
    else:
        return None
    return new


def _adder(module: nn.Module) -> nn.Module | None:
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or isinstance(module.padding, str):
        return None
    return AdderConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                       module.dilation, bias=module.bias is not None)


# to= value → the factory making the replacement of one module (None: not convertible). One row per kind.
FACTORIES = {"binary": _binary, "adder": _adder}


def convert(model: nn.Module, to: str = "binary", skip_first_last: bool = True) -> nn.Module:
    """Replace ``model``'s convertible layers (in place; returned) by ``to`` layers with the same weights.

    Binary: Conv2d (group 1) and Linear; adder: Conv2d (group 1). ``skip_first_last`` keeps the first and the
    last convertible layer (in module order) in float, as BNN and AdderNet practice does.
    """
    if to not in FACTORIES:
        raise EdgecError(f"convert(to='{to}') is not a conversion edgec knows", f"use one of: {', '.join(FACTORIES)}")
    make = FACTORIES[to]
    found = [(name, m) for name, m in model.named_modules() if name and make(m) is not None
             and not isinstance(m, (BinaryConv2d, BinaryLinear, AdderConv2d))]
    if skip_first_last:
        found = found[1:-1]
    if not found:
        raise EdgecError(f"the model has no layer to convert to {to}"
                         + (" besides the first and last" if skip_first_last else ""),
                         "pass a model with Conv2d/Linear layers (or skip_first_last=False)")
    for name, old in found:
        new = make(old)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        new.to(old.weight.device)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def distill(student: nn.Module, teacher: nn.Module, data: Iterable[torch.Tensor] | torch.Tensor, steps: int = 200,
            lr: float = 1e-3, temperature: float = 2.0, batch_size: int = 64) -> list[float]:
    """Train ``student`` to match ``teacher``'s logits (KL at ``temperature``) on unlabeled inputs; returns the
    losses. ``data``: a tensor of inputs (sampled in batches) or an iterable of batches (cycled)."""
    teacher = copy.deepcopy(teacher).eval()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    student.train()
    gen = torch.Generator().manual_seed(0)
    batches = None if isinstance(data, torch.Tensor) else list(data)
    losses = []
    for step in range(steps):
        if batches is None:
            x = data[torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen)]
        else:
            x = batches[step % len(batches)]
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / temperature, dim=1)
        out = F.log_softmax(student(x) / temperature, dim=1)
        loss = F.kl_div(out, target, log_target=True, reduction="batchmean") * temperature ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    student.eval()
    return losses
