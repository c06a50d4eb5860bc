"""The ResNet-style model trained on the embedded data set for the pruning bench (issue 5): wider and one stage
deeper than the embedded model (32/64/128 channels at 28/14/7), trained deterministically with torch on
``mnist_split()["train"]`` (4,000 digits, 1 thread, fixed seed) and cached as ONNX in bench/.cache/prune/."""

from __future__ import annotations

import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "prune"
EPOCHS = 4


def build():
    from torch import nn

    from edgec.models.mnist_resnet import ResidualBlock, conv_bn

    class WideMnistResNet(nn.Module):
        def __init__(self, w: int = 32) -> None:
            super().__init__()
            self.stem = nn.Sequential(conv_bn(1, w), nn.ReLU())
            self.block1 = ResidualBlock(w)
            self.down1 = nn.Sequential(conv_bn(w, 2 * w, stride=2), nn.ReLU())
            self.block2 = ResidualBlock(2 * w)
            self.down2 = nn.Sequential(conv_bn(2 * w, 4 * w, stride=2), nn.ReLU())
            self.block3 = ResidualBlock(4 * w)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4 * w, 10)

        def forward(self, x):
            x = self.block1(self.stem(x))
            x = self.block2(self.down1(x))
            x = self.block3(self.down2(x))
            return self.fc(self.pool(x).flatten(1))

    return WideMnistResNet()


def resnet_path(log=print) -> Path:
    """The trained model's .onnx (trained and exported on first use, ~1-2 min on one core)."""
    path = CACHE / f"mnist_wide_resnet_e{EPOCHS}.onnx"
    if path.is_file():
        return path
    import numpy as np
    import torch

    from edgec.models import mnist_split

    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x, y = mnist_split()["train"]
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    net = build()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    steps = EPOCHS * ((len(y) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        net.train()
        order = torch.from_numpy(rng.permutation(len(y)))
        for i in range(0, len(y), 64):
            idx = order[i: i + 64]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log(f"# wide resnet: epoch {epoch + 1}/{EPOCHS} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(tmp), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    tmp.rename(path)
    return path


if __name__ == "__main__":
    print(resnet_path())
