"""Built-in architectures: a small CNN for 8x8 digits and CIFAR ResNet-20/56."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DigitsCNN(nn.Module):
    """Four 3x3 conv layers with batch norm, global pooling and a linear classifier.

    About 0.97 test accuracy on scikit-learn's 8x8 digits after a few seconds of training.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(in_channels, 32), block(32, 64), nn.MaxPool2d(2), block(64, 64), block(64, 128)
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016) with 1x1-conv projection shortcuts."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        cin = 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for k in range(blocks_per_stage):
                layers.append(BasicBlock(cin, cout, stride if k == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """Small CNN for scikit-learn's 8x8 digits (the embedded default)."""
    return DigitsCNN(num_classes)


def resnet20(num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-20 (~41M MACs at 32x32)."""
    return CifarResNet(3, num_classes)


def resnet56(num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-56 (~126M MACs at 32x32)."""
    return CifarResNet(9, num_classes)
