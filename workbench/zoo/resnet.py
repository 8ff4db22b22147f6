"""ResNet20 for 32x32 images (He et al., 2016, CIFAR variant) with a width multiplier.

Three stages of three basic blocks with ``(16, 32, 64) * width`` channels. A shortcut that
changes shape is a 1x1 convolution (with BatchNorm), as in the Git Re-Basin and REPAIR
experiments.
"""

from __future__ import annotations

from torch import nn

from workbench.zoo.layers import norm2d, scaled
from workbench.zoo.registry import register_architecture


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm)
        self.bn1 = norm2d(cout, batch_norm)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not batch_norm)
        self.bn2 = norm2d(cout, batch_norm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=not batch_norm), norm2d(cout, batch_norm)
            )
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet20 with ``(16, 32, 64) * width`` channels per stage."""

    def __init__(
        self,
        width: float = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        c1, c2, c3 = (scaled(c, width) for c in (16, 32, 64))
        self.conv1 = nn.Conv2d(in_channels, c1, 3, 1, 1, bias=not batch_norm)
        self.bn1 = norm2d(c1, batch_norm)
        self.relu = nn.ReLU()
        stages, cin = [], c1
        for cout, stride in ((c1, 1), (c2, 2), (c3, 2)):
            blocks = [BasicBlock(cin, cout, stride, batch_norm)]
            blocks += [BasicBlock(cout, cout, 1, batch_norm) for _ in range(2)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


register_architecture("resnet20", ResNet20)
