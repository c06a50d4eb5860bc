"""MnistResNet: the small ResNet-style CNN behind edgec's default model (this module, and only it, imports torch).

Layout for a 1x1x28x28 input (normalized with :data:`edgec.models.MNIST_MEAN` / :data:`edgec.models.MNIST_STD`):

    stem   conv3x3 1->16, BN, ReLU                                  16x28x28
    block1 residual: conv3x3-BN-ReLU-conv3x3-BN + identity, ReLU    16x28x28
    down   conv3x3 16->32 stride 2, BN, ReLU                        32x14x14
    block2 residual: conv3x3-BN-ReLU-conv3x3-BN + identity, ReLU    32x14x14
    head   global average pool, Linear 32->10                       10 logits

About 28.6k parameters. ``build()`` is a factory for ``edgec compile edgec.models.mnist_resnet:build``.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias: the BN that follows has one) and BatchNorm."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout))


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (channels and size unchanged)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, channels)
        self.conv2 = conv_bn(channels, channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x))
        y = self.conv2(y)
        return self.relu(y + x)


class MnistResNet(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, width), nn.ReLU())
        self.block1 = ResidualBlock(width)
        self.down = nn.Sequential(conv_bn(width, 2 * width, stride=2), nn.ReLU())
        self.block2 = ResidualBlock(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block1(x)
        x = self.down(x)
        x = self.block2(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def build() -> nn.Module:
    """An untrained MnistResNet in eval mode (input 1x1x28x28 float32, output 1x10 logits)."""
    return MnistResNet().eval()
