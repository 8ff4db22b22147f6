"""The registry of population recipes: how N models trained together are kept together.

Every recipe runs in the same loop (:mod:`workbench.populations.loop`): the members take
one SGD step each on their own batch (the step of :func:`workbench.train_model`), then the
recipe's ``mix`` acts on all of them at once. Adding one is one decorated function in one
file::

    @register_population("average-every-epoch", options={"period": 40})
    def average_every(members, step, generator, *, period):
        '''Replace every member by the population average every ``period`` steps.'''
        if (step + 1) % period == 0:
            with torch.no_grad():
                for params in zip(*(m.parameters() for m in members)):
                    mean = torch.stack(params).mean(0)
                    for p in params:
                        p.copy_(mean)

``mix(members, step, generator, **options)`` changes the members in place after step
``step`` (0-based) of every member; ``generator`` is the population's own random stream.
``options`` are the recipe's arguments and their defaults (what
:func:`~workbench.train_population` accepts as ``**options``); ``check(options)`` raises a
clear error for bad values before any training. ``trunk``: the name of the option that
says for how many steps one trunk is trained before the members fork from it (Frankle et
al.'s instability analysis); without it every member starts from its own seed's
initialization.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "Mix",
    "PopulationMethod",
    "get_population_method",
    "population_methods",
    "register_population",
]

Mix = Callable[..., None]
"""``mix(members, step, generator, **options)``: the recipe's action after each step."""


@dataclass(frozen=True)
class PopulationMethod:
    """A registered population recipe (see the module docstring)."""

    name: str
    mix: Mix
    options: dict[str, Any] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None
    trunk: str | None = None
    description: str = ""

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The options of one run: the defaults updated with ``given``, checked. An option
        the recipe does not take is a ``TypeError`` that names those it does."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            takes = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "no options"
            raise TypeError(
                f"method={self.name!r} takes no option {', '.join(map(repr, unknown))}; it "
                f"takes {takes}. Options of other recipes: see "
                "workbench.populations.population_methods()."
            )
        options = {**self.options, **given}
        if self.check is not None:
            self.check(options)
        return options

    def trunk_steps(self, options: Mapping[str, Any]) -> int | None:
        """Steps of the shared trunk before the members fork (``None``: no trunk)."""
        return None if self.trunk is None else int(options[self.trunk])


_REGISTRY: dict[str, PopulationMethod] = {}


def register_population(
    name: str,
    *,
    options: Mapping[str, Any] | None = None,
    check: Callable[[dict[str, Any]], None] | None = None,
    trunk: str | None = None,
) -> Callable[[Mix], Mix]:
    """Decorator registering ``mix`` as the population recipe ``name`` (see the module
    docstring for the arguments)."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"A population recipe needs a non-empty name, got {name!r}.")
    if trunk is not None and trunk not in (options or {}):
        raise ValueError(f"trunk={trunk!r} must name one of the options {list(options or {})}.")

    def decorate(mix: Mix) -> Mix:
        if name in _REGISTRY:
            raise ValueError(f"A population recipe named {name!r} is already registered.")
        _REGISTRY[name] = PopulationMethod(
            name=name,
            mix=mix,
            options=dict(options or {}),
            check=check,
            trunk=trunk,
            description=(mix.__doc__ or "").strip().split("\n\n")[0],
        )
        return mix

    return decorate


def population_methods() -> list[str]:
    """The registered recipes' names."""
    return list(_REGISTRY)


def get_population_method(name: str) -> PopulationMethod:
    """The registered recipe ``name``; a clear error that lists them otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"method must be one of {population_methods()}, got {name!r}.{hint} A new recipe "
            "is registered with workbench.populations.register_population."
        )
    return _REGISTRY[name]


def parameter_groups(members: list[nn.Module]) -> list[tuple[torch.Tensor, ...]]:
    """The members' parameters, tensor by tensor: each tuple holds the same tensor of every
    member (in ``named_parameters`` order)."""
    return list(zip(*(list(m.parameters()) for m in members), strict=True))
