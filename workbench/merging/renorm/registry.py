"""The registry of BatchNorm handlings: what corrects a merged or interpolated network's
statistics before it is used.

Every consumer reads the handlings from here: :func:`~workbench.merge_many`, NP Merge,
the LMC curves and planes, :func:`~workbench.compare_methods`, the sweeps and
diagnostics, the dashboards' choices, the command line's ``--bn`` and the figures'
labels and line styles. Adding one is one decorated function in one file::

    @register_bn("reset-half", label="RESET/2", needs_batchnorm=True)
    def reset_half(endpoints, data, *, spec, batch_size, max_batches):
        half = data.subset(torch.arange(len(data) // 2))
        return lambda work, weights: reset_bn_(work, half, batch_size, max_batches)

The function is called once per merge or per path, with the models being combined
(``endpoints``: the aligned models, in the order their weights come) and the data it may
measure on, and returns a :data:`Correction`: ``correct(work, weights)`` fixes, in place,
a working model loaded with ``sum_i weights[i] * endpoints[i]``. It measures what it
needs from the endpoints once (REPAIR's target statistics), so that a curve of many
points pays for it once. ``None`` means nothing to correct (``"none"``).

``None`` is accepted for ``"none"`` wherever a handling is named (:func:`check_bn`
normalizes it at the edge); inside the package and in every result, ``"none"`` is the one
spelling.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from workbench.data import DataLike
from workbench.figures import set_bn_style
from workbench.fingerprints import registered_fingerprint
from workbench.graph import PermutationSpec
from workbench.modules import clone, has_batchnorm

__all__ = [
    "BatchNormHandling",
    "Correction",
    "bn_modes",
    "check_bn",
    "get_bn",
    "register_bn",
    "unregister_bn",
]

Correction = Callable[[nn.Module, Sequence[float]], object]
"""Called on a working model after a point ``sum_i w[i] * endpoints[i]`` is loaded into it,
with the point's weights ``w``; fixes its statistics in place."""
Prepare = Callable[..., Correction | None]


@dataclass(frozen=True)
class BatchNormHandling:
    """A registered BatchNorm handling and what its consumers need to know about it.

    ``prepare(endpoints, data, *, spec, batch_size, max_batches)`` returns the
    :data:`Correction` for points between ``endpoints`` (see the module docstring).
    ``label``: what figures, tables and dashboards append to a method's name (``"RESET"``;
    ``""`` for none); ``linestyle``: how figures draw its curves. ``needs_batchnorm``: it
    only applies to networks with BatchNorm layers. ``needs_data``: it measures on data.
    ``needs_endpoints``: its targets are the endpoints' own statistics (REPAIR), so merges
    that have no aligned endpoints (ZipIt!, learned coefficients) cannot use it, and its
    targets are only defined for weights in [0, 1] (no extrapolation, no plane beyond its
    three models). ``keeps_endpoints``: the correction leaves a model at an end of a path
    as it is (so B's own numbers need no correction). ``batch_statistics``: the merged
    model's statistics are measured again afterwards, so a merge that learns (NP Merge)
    may run BatchNorm on batch statistics while it learns.
    """

    name: str
    prepare: Prepare
    label: str
    linestyle: str = "-"
    needs_batchnorm: bool = False
    needs_data: bool = True
    needs_endpoints: bool = False
    keeps_endpoints: bool = False
    batch_statistics: bool = False
    description: str = ""

    @property
    def cache_key(self) -> str | None:
        """The part of a cache key that stands for this handling: its name, flags and
        code (a handling registered again with other code gets new results); ``None``
        when its code cannot be fingerprinted (not cached)."""
        flags = [self.needs_batchnorm, self.needs_data, self.needs_endpoints]
        flags += [self.keeps_endpoints, self.batch_statistics]
        return registered_fingerprint("BatchNorm handling", self.name, [self.prepare], flags)

    def applies_to(self, model: nn.Module) -> bool:
        """Whether this handling can correct ``model`` (BatchNorm layers where needed)."""
        return not self.needs_batchnorm or has_batchnorm(model)

    def correction(
        self,
        endpoints: Sequence[nn.Module],
        data: DataLike | None,
        *,
        spec: PermutationSpec | None = None,
        batch_size: int | None = None,
        max_batches: int | None = None,
    ) -> Correction | None:
        """The correction of points between ``endpoints`` (``None``: nothing to do)."""
        if self.needs_data and data is None:
            raise ValueError(f"bn={self.name!r} measures statistics on data: pass data.")
        return self.prepare(
            list(endpoints), data, spec=spec, batch_size=batch_size, max_batches=max_batches
        )

    def apply(
        self,
        merged: nn.Module,
        endpoints: Sequence[nn.Module],
        weights: Sequence[float],
        data: DataLike | None,
        *,
        spec: PermutationSpec | None = None,
        batch_size: int | None = None,
        max_batches: int | None = None,
    ) -> nn.Module:
        """A corrected copy of ``merged``, the ``weights``-combination of ``endpoints``."""
        correct = self.correction(
            endpoints, data, spec=spec, batch_size=batch_size, max_batches=max_batches
        )
        merged = clone(merged)
        if correct is not None:
            correct(merged, list(weights))
        return merged.eval()


_REGISTRY: dict[str, BatchNormHandling] = {}


def register_bn(
    name: str,
    *,
    label: str,
    linestyle: str = "-",
    needs_batchnorm: bool = False,
    needs_data: bool = True,
    needs_endpoints: bool = False,
    keeps_endpoints: bool = False,
    batch_statistics: bool = False,
    replace: bool = False,
) -> Callable[[Prepare], Prepare]:
    """Decorator registering ``prepare`` as the BatchNorm handling ``name`` (see
    :class:`BatchNormHandling` for the flags). Registering a taken name raises unless
    ``replace=True``."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"A BatchNorm handling needs a non-empty name, got {name!r}.")

    def decorate(prepare: Prepare) -> Prepare:
        if name in _REGISTRY and not replace:
            raise ValueError(
                f"A BatchNorm handling named {name!r} is already registered; pass "
                "replace=True to replace it, or choose another name."
            )
        _REGISTRY[name] = BatchNormHandling(
            name=name,
            prepare=prepare,
            label=label,
            linestyle=linestyle,
            needs_batchnorm=needs_batchnorm,
            needs_data=needs_data,
            needs_endpoints=needs_endpoints,
            keeps_endpoints=keeps_endpoints,
            batch_statistics=batch_statistics,
            description=(prepare.__doc__ or "").strip().split("\n\n")[0],
        )
        set_bn_style(name, label, linestyle)
        return prepare

    return decorate


def unregister_bn(name: str) -> None:
    """Remove a registered handling (tests, notebooks that redefine one)."""
    get_bn(name)
    del _REGISTRY[name]
    set_bn_style(name, None)


def bn_modes(model: nn.Module | None = None) -> list[str]:
    """The registered handlings' names (``"none"`` first), those that apply to ``model``
    when it is given."""
    names = sorted(_REGISTRY, key=lambda n: (n != "none", list(_REGISTRY).index(n)))
    return [n for n in names if model is None or _REGISTRY[n].applies_to(model)]


def get_bn(bn: str | None) -> BatchNormHandling:
    """The registered handling ``bn`` (``None`` is ``"none"``); a clear error otherwise."""
    name = "none" if bn is None else bn
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"bn must be one of {bn_modes()} (None for 'none'), got {bn!r}.{hint} A new "
            "handling is registered with workbench.register_bn."
        )
    return _REGISTRY[name]


def check_bn(
    bn: str | None, model: nn.Module | None = None, *, no_endpoints: str | None = None
) -> str:
    """``bn``'s registered name (``None`` -> ``"none"``), checked against ``model``: a
    handling that needs BatchNorm layers on a network without them is an error that
    names the handlings that do apply. ``no_endpoints``: why the caller has no aligned
    endpoints to correct towards (a merge method's own space, learned coefficients, a
    plane beyond its three models); a handling that needs them is then an error."""
    found = get_bn(bn)
    usable = bn_modes(model)
    if model is not None and not found.applies_to(model):
        raise ValueError(
            f"bn={found.name!r} needs BatchNorm layers and {type(model).__name__} has none; "
            f"use one of {usable}."
        )
    if no_endpoints is not None and found.needs_endpoints:
        usable = [n for n in usable if not _REGISTRY[n].needs_endpoints]
        raise ValueError(
            f"bn={found.name!r} corrects towards the endpoints' own statistics, and "
            f"{no_endpoints}: use one of {usable}."
        )
    return found.name
