"""Any timm model, as ``"timm:<name>"``, when the optional ``timm`` is installed
(``pip install 'merge-workbench[timm]'``); imported only when such a name is used."""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

from torch import nn


def _timm() -> ModuleType | None:
    """The ``timm`` module, or ``None`` when it is not installed."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        return None


def timm_names() -> list[str]:
    """timm's models (without the ``"timm:"`` prefix), sorted; empty without timm."""
    timm = _timm()
    return [] if timm is None else sorted(timm.list_models())


def timm_model(
    name: str,
    width: float = 1,
    num_classes: int = 1000,
    in_channels: int = 3,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build timm's model ``name`` (``timm.create_model(name, num_classes=...,
    in_chans=in_channels, pretrained=...)``, other keyword arguments passed on).

    ``pretrained=True`` needs a network or timm's cache. Width multipliers are not
    supported: timm's wide variants are separate names.
    """
    timm = _timm()
    if timm is None:
        raise ImportError(
            f"timm:{name} needs the optional package timm, which is not installed: "
            "pip install timm (or pip install 'merge-workbench[timm]')."
        )
    available = timm.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"timm has no model {name!r}.{hint} timm.list_models() lists them "
            "(workbench.architectures() with the 'timm:' prefix)."
        )
    if width != 1:
        raise ValueError(
            f"timm:{name} has no width multiplier (got width={width}); use width=1 or a "
            "wider variant of the model."
        )
    return timm.create_model(
        name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs
    )
