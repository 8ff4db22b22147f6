"""VGG for small images (CIFAR-style): 3x3 conv stacks, five max-pools, one linear classifier.

This is the variant used in the REPAIR and Git Re-Basin experiments on CIFAR-10. Pools use
``ceil_mode`` so that 28x28 inputs also reach a 1x1 map (for 32x32 inputs it changes nothing).
"""

from __future__ import annotations

import functools

from torch import nn

from workbench.zoo.layers import norm2d, scaled
from workbench.zoo.registry import register_architecture

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}  # fmt: skip


class VGG(nn.Module):
    """A VGG from a configuration list (channels and ``"M"`` for max-pool)."""

    def __init__(
        self,
        config: list[int | str],
        width: float = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            out = scaled(int(item), width)
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm),
                norm2d(out, batch_norm),
                nn.ReLU(),
            ]
            channels = out
        self.features = nn.Sequential(
            *(layer for layer in layers if not isinstance(layer, nn.Identity))
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg(name: str, **kwargs) -> VGG:
    """Build ``"vgg11"`` or ``"vgg16"``; ``batch_norm`` selects the ``_bn`` variant."""
    return VGG(CONFIGS[name], **kwargs)


for _depth in ("vgg11", "vgg16"):
    register_architecture(_depth, functools.partial(vgg, _depth, batch_norm=False))
    register_architecture(f"{_depth}_bn", functools.partial(vgg, _depth, batch_norm=True))
