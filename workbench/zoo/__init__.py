"""Architectures by name, each with a width multiplier, ``num_classes`` and ``in_channels``.

``create_model`` records how a model was built on the model itself
(``model.workbench_architecture``), so that a checkpoint can rebuild it from metadata alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from workbench.zoo.cnn import SimpleCNN
from workbench.zoo.resnet import ResNet20
from workbench.zoo.torchvision_models import torchvision_model
from workbench.zoo.vgg import VGG, vgg

__all__ = ["VGG", "ResNet20", "SimpleCNN", "create_model", "list_models"]

ARCHITECTURE_ATTR = "workbench_architecture"

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "cnn": SimpleCNN,
    "vgg11": lambda **kw: vgg("vgg11", **{"batch_norm": False, **kw}),
    "vgg11_bn": lambda **kw: vgg("vgg11", **{"batch_norm": True, **kw}),
    "vgg16": lambda **kw: vgg("vgg16", **{"batch_norm": False, **kw}),
    "vgg16_bn": lambda **kw: vgg("vgg16", **{"batch_norm": True, **kw}),
    "resnet20": ResNet20,
}


def list_models() -> list[str]:
    """Names of the zoo's own architectures (torchvision models are ``"tv:<name>"``)."""
    return list(_BUILDERS)


def create_model(
    name: str,
    width: float = 1,
    num_classes: int = 10,
    in_channels: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """Build architecture ``name`` with freshly initialized weights.

    ``name`` is one of :func:`list_models` (``"cnn"``, ``"vgg11"``, ``"vgg11_bn"``,
    ``"vgg16"``, ``"vgg16_bn"``, ``"resnet20"``) or ``"tv:<torchvision name>"``.
    Extra keyword arguments go to the builder (``batch_norm=False`` for the zoo's
    normalization-free variants, ``weights="DEFAULT"`` for torchvision). Initialization
    uses torch's global RNG: seed it (or use :func:`workbench.train_models`) to reproduce.
    """
    if name.startswith("tv:"):
        model = torchvision_model(
            name[3:], width=width, num_classes=num_classes, in_channels=in_channels, **kwargs
        )
    elif name in _BUILDERS:
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}."
            )
        model = _BUILDERS[name](
            width=width, num_classes=num_classes, in_channels=in_channels, **kwargs
        )
    else:
        raise ValueError(
            f"Unknown model {name!r}; expected one of {', '.join(map(repr, _BUILDERS))} "
            "or 'tv:<name>' for a torchvision model."
        )
    setattr(
        model,
        ARCHITECTURE_ATTR,
        {
            "name": name,
            "width": width,
            "num_classes": num_classes,
            "in_channels": in_channels,
            **kwargs,
        },
    )
    return model
