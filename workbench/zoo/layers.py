"""Small helpers shared by the architecture families."""

from __future__ import annotations

from torch import nn


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1: how every family applies its width multiplier."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}.")
    return max(1, round(channels * width))


def norm2d(channels: int, batch_norm: bool) -> nn.Module:
    """BatchNorm2d, or Identity for the normalization-free variants."""
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
