"""Architectures by name (a registry: :mod:`workbench.zoo.registry`), each with a width
multiplier, ``num_classes`` and ``in_channels``.

The zoo's own architectures are one file each and register themselves: ``"cnn"``
(:mod:`.cnn`), ``"vgg11[_bn]"`` and ``"vgg16[_bn]"`` (:mod:`.vgg`), ``"resnet20"``
(:mod:`.resnet`). torchvision's models are ``"tv:<name>"``, timm's (optional)
``"timm:<name>"``; a user's own is one :func:`register_architecture` call.
"""

from __future__ import annotations

# The zoo's files register their architectures on import, in this order.
from workbench.zoo.registry import (  # isort: skip
    ARCHITECTURE_ATTR,
    architectures,
    create_model,
    list_models,
    register_architecture,
    unregister_architecture,
)
from workbench.zoo.cnn import SimpleCNN  # isort: skip
from workbench.zoo.vgg import VGG  # isort: skip
from workbench.zoo.resnet import ResNet20  # isort: skip

__all__ = [
    "ARCHITECTURE_ATTR",
    "VGG",
    "ResNet20",
    "SimpleCNN",
    "architectures",
    "create_model",
    "list_models",
    "register_architecture",
    "unregister_architecture",
]
