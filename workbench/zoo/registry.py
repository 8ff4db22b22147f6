"""The registry of architectures: every name :func:`create_model` takes, in the style of
torchvision's ``get_model`` and timm's ``create_model``.

Three sources of names: the registered builders (the zoo's own, one file each, and the
user's: :func:`register_architecture`), every torchvision classification model as
``"tv:<name>"``, and, when the optional ``timm`` is installed, every timm model as
``"timm:<name>"``. :func:`architectures` lists them all. Adding one is one call::

    @register_architecture("mlp-mixer-tiny")
    def mixer(width=1, num_classes=10, in_channels=3, **kwargs):
        return MyMixer(int(64 * width), num_classes, in_channels, **kwargs)

A builder takes the keyword arguments ``width``, ``num_classes`` and ``in_channels`` (and
any others the caller passes to :func:`create_model`). :func:`create_model` records how a
model was built on the model itself (``model.workbench_architecture``), so that a
checkpoint rebuilds it from its metadata alone, once the name is registered.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from workbench.zoo.timm_models import timm_model, timm_names
from workbench.zoo.torchvision_models import torchvision_model, torchvision_names

__all__ = [
    "ARCHITECTURE_ATTR",
    "architectures",
    "create_model",
    "list_models",
    "register_architecture",
    "unregister_architecture",
]

ARCHITECTURE_ATTR = "workbench_architecture"
Builder = Callable[..., nn.Module]
# name prefix -> (builder of that library's models, the names it offers)
_LIBRARIES: dict[str, tuple[Builder, Callable[[], list[str]]]] = {
    "tv:": (torchvision_model, torchvision_names),
    "timm:": (timm_model, timm_names),
}
_ARGUMENTS = ("width", "num_classes", "in_channels")
_REGISTRY: dict[str, Builder] = {}


def _qualified_name(function: Callable) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


def _check_builder(name: str, builder: Builder) -> None:
    """Refuse, at registration, a builder that :func:`create_model` could not call."""
    if not callable(builder):
        raise TypeError(f"The builder of {name!r} must be callable, got {type(builder).__name__}.")
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return  # no signature to read (a builtin): the first call will tell
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    names = {p.name for p in parameters if p.kind is not p.POSITIONAL_ONLY}
    missing = [a for a in _ARGUMENTS if a not in names]
    if missing:
        raise TypeError(
            f"The builder of {name!r} ({_qualified_name(builder)}) does not take "
            f"{', '.join(missing)}: create_model calls it as builder(width=..., "
            "num_classes=..., in_channels=..., **kwargs); add those keyword arguments "
            "(ignore width if the architecture has no width multiplier)."
        )


def register_architecture(
    name: str, builder: Builder | None = None, *, replace: bool = False
) -> Callable[[Builder], Builder] | Builder:
    """Register ``builder`` as the architecture ``name``: as a call with the builder, or as
    a decorator without it; the builder is returned unchanged (see the module docstring
    for how it is called). A taken name raises unless ``replace=True``; registering the
    same function again (a notebook cell run twice) replaces it."""
    if not isinstance(name, str) or not name or name.split() != [name]:
        raise ValueError(f"An architecture name must be a word without spaces, got {name!r}.")
    prefix = next((p for p in _LIBRARIES if name.startswith(p)), None)
    if prefix is not None:
        raise ValueError(
            f"Names starting with {prefix!r} are the library's own models; register "
            f"{name!r} under a name without that prefix."
        )

    def decorate(function: Builder) -> Builder:
        _check_builder(name, function)
        existing = _REGISTRY.get(name)
        if (
            existing is not None
            and not replace
            and _qualified_name(existing) != _qualified_name(function)
        ):
            raise ValueError(
                f"An architecture named {name!r} is already registered "
                f"({_qualified_name(existing)}); pass replace=True to replace it, or choose "
                "another name."
            )
        _REGISTRY[name] = function
        return function

    return decorate if builder is None else decorate(builder)


def unregister_architecture(name: str) -> None:
    """Remove the registered architecture ``name`` (tests, notebooks that redefine one)."""
    if name not in _REGISTRY:
        raise ValueError(f"No architecture named {name!r} is registered; see list_models().")
    del _REGISTRY[name]


def list_models() -> list[str]:
    """The registered architectures: the zoo's own first, then the user's (the library
    models, ``"tv:<name>"`` and ``"timm:<name>"``, are in :func:`architectures`)."""
    return list(_REGISTRY)


def architectures() -> list[str]:
    """Every name :func:`create_model` takes: the registered architectures, then every
    torchvision classification model as ``"tv:<name>"``, then, when ``timm`` is
    installed, every timm model as ``"timm:<name>"``."""
    names = list_models()
    for prefix, (_, listed) in _LIBRARIES.items():
        names += [prefix + name for name in listed()]
    return names


def create_model(
    name: str,
    width: float = 1,
    num_classes: int = 10,
    in_channels: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """Build architecture ``name`` with freshly initialized weights.

    ``name`` is one of :func:`list_models` (the zoo's ``"cnn"``, ``"vgg11"``,
    ``"vgg11_bn"``, ``"vgg16"``, ``"vgg16_bn"``, ``"resnet20"`` and the registered ones),
    ``"tv:<torchvision name>"`` or ``"timm:<timm name>"`` (:func:`architectures`). Extra
    keyword arguments go to the builder (``batch_norm=False`` for the zoo's
    normalization-free variants, ``weights="DEFAULT"`` for torchvision, ``pretrained=True``
    for timm). Initialization uses torch's global RNG: seed it (or use
    :func:`workbench.train_models`) to reproduce.
    """
    prefix = next((p for p in _LIBRARIES if isinstance(name, str) and name.startswith(p)), None)
    if prefix is not None:
        build = _LIBRARIES[prefix][0]
        model = build(
            name[len(prefix) :],
            width=width,
            num_classes=num_classes,
            in_channels=in_channels,
            **kwargs,
        )
    elif name in _REGISTRY:
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}."
            )
        model = _REGISTRY[name](
            width=width, num_classes=num_classes, in_channels=in_channels, **kwargs
        )
    else:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}; expected one of {', '.join(map(repr, _REGISTRY))} "
            f"or 'tv:<name>' for a torchvision model, 'timm:<name>' for a timm model.{hint} "
            "Register your own with workbench.register_architecture."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The builder of {name!r} returned {type(model).__name__}, not an nn.Module."
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
