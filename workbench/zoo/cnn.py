"""A small convolutional network for 28x28 digit images: the quickstart architecture."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from workbench.zoo.layers import scaled
from workbench.zoo.registry import register_architecture


class SimpleCNN(nn.Module):
    """Three conv blocks, global average pooling and a two-layer classifier.

    Channels are ``(16, 32, 64)`` times ``width``, the hidden classifier layer has
    ``128 * width`` units. Global pooling makes it accept any input size >= 8x8.
    """

    def __init__(
        self,
        width: float = 1,
        num_classes: int = 10,
        in_channels: int = 1,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        c1, c2, c3, hidden = (scaled(c, width) for c in (16, 32, 64, 128))
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (cin, cout) in enumerate([(in_channels, c1), (c1, c2), (c2, c3)], start=1):
            blocks[f"conv{i}"] = nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)
            if batch_norm:
                blocks[f"bn{i}"] = nn.BatchNorm2d(cout)
            blocks[f"relu{i}"] = nn.ReLU()
            if i < 3:
                blocks[f"pool{i}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(c3, hidden),
                relu=nn.ReLU(),
                fc2=nn.Linear(hidden, num_classes),
            )
        )

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


register_architecture("cnn", SimpleCNN)
