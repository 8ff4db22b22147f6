"""Which keyword options a method's function takes, so that one set of options can be
handed to several functions, each taking its own."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["accepted_options", "takes"]


def takes(function: Callable, option: str) -> bool:
    """Whether ``function`` can be called with the keyword argument ``option``."""
    parameters = inspect.signature(function).parameters.values()
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == option and p.kind is not p.POSITIONAL_ONLY)
        for p in parameters
    )


def accepted_options(function: Callable, options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that ``function`` takes as keyword arguments (all of
    them if it takes ``**kwargs``): one call can then configure several methods."""
    return {name: value for name, value in options.items() if takes(function, name)}
