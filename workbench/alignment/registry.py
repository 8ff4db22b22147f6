"""The registry of alignment methods.

Every consumer reads the methods from here: :func:`~workbench.alignment.align` and
:func:`~workbench.alignment.match`, :func:`~workbench.merge_many` (and its validation
search), :func:`~workbench.compare_methods`, the LMC and plane functions, the diagnostics,
the dashboards' method choices, the command line's ``--methods`` and the figures' styles.
Adding a method is therefore one decorated function in one file::

    @register_method("reverse", needs_data=False, preserves_function=True)
    def reverse(model_a, model_b, spec, data=None, **options) -> Permutation:
        return {name: torch.arange(g.size).flip(0) for name, g in spec.groups.items()}

A method is called as ``function(model_a, model_b, spec=spec, data=data, **options)`` and
returns, for ``kind="permutation"``, a :data:`Permutation` (group -> LongTensor: the order
of B's channels that matches A's), or, for ``kind="linear"``, :data:`LinearMaps` (group ->
square matrix taking B's channels into A's space, or a
:class:`~workbench.graph.transforms.GroupMap`; groups it leaves out keep their
channels). A ``kind="merge"`` method merges N models at once into a space of its own
(ZipIt!, NP Merge), so it has no "B in A's space": it is called as
``function(models, spec=spec, data=data, **options)`` and returns the merged model
(before BatchNorm handling), or a :class:`Merged` holding it and the method's own report,
which :func:`~workbench.merge_many` puts in ``result.report.details``; serves :func:`~workbench.merge_many` and
:func:`~workbench.compare_methods`, and is refused by the pairwise consumers (alignment,
LMC curves, planes, diagnostics; :func:`pairwise_methods` lists the others). Hyperparameters the method wants chosen on held-out data are declared with
``search`` (a grid per name); :func:`~workbench.merge_many` tries them on a validation
split, never on test data.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from workbench.alignment.keywords import accepted_options, takes
from workbench.alignment.returned import Merged, check_aligned_models, check_merged_model
from workbench.data import DataLike
from workbench.figures import PALETTE, forget_method_style, set_method_style
from workbench.fingerprints import registered_fingerprint
from workbench.graph import PermutationSpec
from workbench.graph.transforms import (
    GroupMap,
    LinearMaps,
    Permutation,
    check_linear_maps,
    check_permutation,
    identity_permutation,
)

__all__ = [
    "AlignmentMethod",
    "Merged",
    "canonical_method",
    "get_method",
    "matching_methods",
    "methods",
    "pairwise_methods",
    "register_method",
    "unregister_method",
]

Kind = Literal["permutation", "linear", "merge"]
MethodFunction = Callable[..., Permutation | LinearMaps]
Merger = Callable[..., list[nn.Module]]
F = TypeVar("F", bound=Callable[..., Any])

_KINDS = ("permutation", "linear", "merge")
# Names that tables and figures show, accepted wherever a method is named.
_ALIASES = {"naive": "none"}
_EXPECTED = {
    "permutation": "a Permutation (a dict group -> LongTensor of B's channel order)",
    "linear": "LinearMaps (a dict group -> square matrix, B's channels into A's space)",
    "merge": "the merged nn.Module",
}


@dataclass(frozen=True)
class AlignmentMethod:
    """A registered alignment method and what its consumers need to know about it.

    ``function(model_a, model_b, spec=spec, data=data, **options)`` returns a
    :data:`Permutation` (``kind="permutation"``) or :data:`LinearMaps` (``"linear"``);
    a ``"merge"`` method's ``function(models, spec=spec, data=data, **options)`` returns
    the merged model of all ``models`` (see :meth:`merge`).
    ``needs_data``: it measures activations, so ``data`` is required.
    ``preserves_function``: B aligned by it computes B's function (always true of a
    permutation; CCA's maps do not). ``search``: hyperparameter -> values to try on a
    validation split (:func:`workbench.merge_many`); ``defaults``: the values used where
    nothing is searched (:func:`~workbench.alignment.align`). ``merger``: an optional
    N-model path, ``merger(models, spec, **options) -> models in one neuron order``,
    used by ``merge_many`` instead of aligning every model to a reference (MergeMany for
    weight matching). ``uses_statistics``: ``function`` takes ``statistics=``, the joint
    activation statistics of (A, B) from :func:`collect_statistics`, so that a caller
    that has them (a search over the grid, the diagnostics) saves the data pass.
    ``any_width``: a linear method whose B may have other widths than A (one architecture):
    its function takes ``spec_b=`` (B's spec) and returns GroupMaps ``A x B`` (OT fusion).
    ``quick``: options for a quick look (fewer learning steps), used with the searched
    hyperparameters fixed at their defaults (:func:`~workbench.alignment.options.quick_options`).
    ``renamed``: former option name -> current name; a former name still works for one
    release, with a ``FutureWarning`` (:func:`~workbench.alignment.options.renamed_options`).
    """

    name: str
    function: MethodFunction
    needs_data: bool
    preserves_function: bool
    kind: Kind = "permutation"
    search: Mapping[str, tuple] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    merger: Merger | None = None
    uses_statistics: bool = False
    any_width: bool = False
    quick: Mapping[str, Any] = field(default_factory=dict)
    renamed: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"Alignment method {self.name!r}"
        if not isinstance(self.name, str) or not self.name or self.name.split() != [self.name]:
            raise ValueError(f"A method name must be a word without spaces, got {self.name!r}.")
        if self.name in _ALIASES:
            raise ValueError(f"{self.name!r} is another name of {_ALIASES[self.name]!r}.")
        if self.kind not in _KINDS:
            raise ValueError(f"{where}: kind must be one of {_KINDS}, got {self.kind!r}.")
        if self.kind == "permutation" and not self.preserves_function:
            raise ValueError(
                f"{where}: a permutation always preserves the function; register a method "
                "that changes it with kind='linear'."
            )
        if self.kind == "merge" and self.merger is not None:
            raise ValueError(
                f"{where}: a kind='merge' method is its own N-model path; register its "
                "merge as the function, without merger=."
            )
        if (self.kind == "linear" or self.uses_statistics) and not self.needs_data:
            raise ValueError(
                f"{where}: linear maps (BatchNorm statistics are measured again after the "
                "map) and activation statistics need data; register it with needs_data=True."
            )
        if self.any_width and self.kind != "linear":
            raise ValueError(f"{where}: only a kind='linear' method can change widths.")
        grids = {name: tuple(values) for name, values in self.search.items()}
        empty = [name for name, values in grids.items() if not values]
        if empty:
            raise ValueError(f"{where}: the search grids of {empty} are empty.")
        object.__setattr__(self, "search", MappingProxyType(grids))
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "quick", MappingProxyType(dict(self.quick)))
        object.__setattr__(self, "renamed", MappingProxyType(dict(self.renamed)))
        wrong = [name for name in [*self.quick, *self.renamed.values()] if not self.accepts(name)]
        if wrong:
            raise ValueError(f"{where}: quick= or renamed= name options it does not take: {wrong}.")

    def accepts(self, option: str) -> bool:
        """Whether ``option`` means something to this method (a searched hyperparameter,
        or a keyword its function or merger takes)."""
        return (
            option in self.search
            or takes(self.function, option)
            or (self.merger is not None and takes(self.merger, option))
        )

    @property
    def cache_key(self) -> str | None:
        """What this method's results depend on, for the result cache: a hash of its
        registration (kind, flags, grids, defaults, quick preset) and of its code (its
        function and merger, the user's helpers they call, the globals they read), so that
        a method fixed in a notebook and registered again gets new results. ``None``,
        with a warning once per method, when its code cannot be fingerprinted: its
        results are then not cached."""
        functions = [self.function] + ([self.merger] if self.merger is not None else [])
        settings = [self.kind, self.needs_data, self.preserves_function, self.uses_statistics]
        settings += [self.any_width, dict(self.search), dict(self.defaults), dict(self.quick)]
        return registered_fingerprint("method", self.name, functions, settings)

    def search_space(self, options: Mapping[str, Any]) -> dict[str, tuple]:
        """The values to try for each searched hyperparameter: the declared grid when
        ``options`` leaves it out or sets it to ``None``, the given values when it is a
        list or tuple, else the one given value."""
        space = {}
        for name, grid in self.search.items():
            value = options.get(name)
            if value is None:
                space[name] = grid
            elif isinstance(value, (list, tuple)):
                space[name] = tuple(value)
            else:
                space[name] = (value,)
        return space

    def find(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        spec: PermutationSpec,
        data: DataLike | None = None,
        **options: Any,
    ) -> Permutation | LinearMaps:
        """Run the method (``defaults`` filled in) and check what it returned."""
        self.check_pairwise()
        found = self.function(
            model_a, model_b, spec=spec, data=data, **{**self.defaults, **options}
        )
        where = f"Alignment method {self.name!r} ({_qualified_name(self.function)})"
        if not isinstance(found, Mapping) or not all(
            isinstance(value, (torch.Tensor, GroupMap)) for value in found.values()
        ):
            raise TypeError(
                f"{where} returned {type(found).__name__}; a {self.kind} method must return "
                f"{_EXPECTED[self.kind]}."
            )
        try:
            if self.kind == "permutation":
                check_permutation(spec, found)
            else:
                check_linear_maps(options.get("spec_b") or spec, found)
        except ValueError as error:
            raise ValueError(f"{where} returned an invalid {self.kind}: {error}") from error
        return found

    def check_pairwise(self) -> None:
        """Raise ``ValueError`` if this method only merges N models at once (kind
        ``"merge"``) and so cannot align one model to another."""
        if self.kind == "merge":
            raise ValueError(
                f"method={self.name!r} merges models into a space of its own and does not "
                "align one model to another, so it has no alignment, LMC curve, plane or "
                f"matching diagnostics: use merge_many(models, data, {self.name!r}) or "
                f"compare_methods, or one of {pairwise_methods()} here."
            )

    def merge(
        self,
        models: Sequence[nn.Module],
        spec: PermutationSpec,
        data: DataLike | None = None,
        **options: Any,
    ) -> Merged:
        """Run a ``kind="merge"`` method (``defaults`` filled in): the merged model and the
        method's report (a bare model returned by the method has none)."""
        if self.kind != "merge":
            raise ValueError(f"method={self.name!r} is a {self.kind} method, not a merge.")
        found = self.function(list(models), spec=spec, data=data, **{**self.defaults, **options})
        found = found if isinstance(found, Merged) else Merged(found)
        where = f"Alignment method {self.name!r} ({_qualified_name(self.function)})"
        check_merged_model(where, models, found.model, data)
        return found

    def run_merger(
        self, models: Sequence[nn.Module], spec: PermutationSpec, **options: Any
    ) -> list[nn.Module]:
        """Run the method's N-model ``merger`` (the options it takes from ``options``) and
        check what it returned: one model per input, each of their architecture, finite."""
        if self.merger is None:
            raise ValueError(f"method={self.name!r} has no N-model merger.")
        found = self.merger(list(models), spec, **accepted_options(self.merger, options))
        check_aligned_models(
            f"Alignment method {self.name!r} ({_qualified_name(self.merger)})", models, found
        )
        return list(found)


_REGISTRY: dict[str, AlignmentMethod] = {}


def _qualified_name(function: Callable) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


def register_method(
    name: str,
    *,
    needs_data: bool,
    preserves_function: bool,
    kind: Kind = "permutation",
    search: Mapping[str, Sequence] | None = None,
    defaults: Mapping[str, Any] | None = None,
    merger: Merger | None = None,
    uses_statistics: bool = False,
    any_width: bool = False,
    quick: Mapping[str, Any] | None = None,
    renamed: Mapping[str, str] | None = None,
    label: str | None = None,
    color: str | None = None,
    marker: str | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as the alignment method ``name`` (see
    :class:`AlignmentMethod` for the arguments); the function is returned unchanged.

    ``label``, ``color`` and ``marker``: how tables and figures show it (default the name,
    and the first colour and marker no other method has:
    :func:`~workbench.figures.set_method_style`).

    A name can be registered once; registering the same definition again (a notebook
    cell run twice) replaces it, anything else raises ``ValueError``: pick another name
    or :func:`unregister_method` first.
    """

    def decorator(function: F) -> F:
        method = AlignmentMethod(
            name,
            function,
            needs_data,
            preserves_function,
            kind,
            search or {},
            defaults or {},
            merger,
            uses_statistics,
            any_width,
            quick or {},
            renamed or {},
        )
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified_name(existing.function) != _qualified_name(function):
            raise ValueError(
                f"An alignment method named {name!r} is already registered "
                f"({_qualified_name(existing.function)}); choose another name, or call "
                f"unregister_method({name!r}) first."
            )
        _REGISTRY[name] = method
        set_method_style(name, label, color, marker)
        return function

    return decorator


def unregister_method(name: str) -> None:
    """Remove the method ``name`` from the registry."""
    name = get_method(name).name
    del _REGISTRY[name]
    forget_method_style(name)


def canonical_method(method: str) -> str:
    """The registry name of ``method``: ``"naive"``, the name tables and figures show for
    no alignment, is accepted for ``"none"``."""
    return _ALIASES.get(method, method)


def methods(kind: Kind | None = None) -> list[str]:
    """The names of the registered alignment methods (of one ``kind`` if given), in the
    order they were registered: the built-in ones first."""
    return [name for name, m in _REGISTRY.items() if kind is None or m.kind == kind]


def pairwise_methods() -> list[str]:
    """The methods that align one model to another (every kind but ``"merge"``): the
    choices of the alignment, LMC, plane and diagnostics views."""
    return [name for name, m in _REGISTRY.items() if m.kind != "merge"]


def matching_methods() -> list[str]:
    """The methods that pair each of B's units with one of A's: the permutation methods
    but ``"none"`` (which pairs unit i with unit i)."""
    return [name for name in methods("permutation") if name != "none"]


def get_method(name: str) -> AlignmentMethod:
    """The registered method ``name`` (or its alias); ``ValueError`` lists the registered
    names and suggests the nearest."""
    method = _REGISTRY.get(canonical_method(name)) if isinstance(name, str) else None
    if method is None:
        names = methods()
        close = difflib.get_close_matches(str(name), [*names, *_ALIASES], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"method must be one of {names} ('naive' is 'none'), got {name!r}.{hint} "
            "Register new ones with workbench.register_method."
        )
    return method


@register_method(
    "none",
    needs_data=False,
    preserves_function=True,
    label="naive",
    color=PALETTE["vermillion"],
    marker="s",
)
def no_alignment(
    model_a: nn.Module, model_b: nn.Module, spec: PermutationSpec, data: DataLike | None = None
) -> Permutation:
    """No alignment (shown as "naive"): B keeps its channel order, so that merging is
    plain weight averaging, the baseline every method must beat."""
    return identity_permutation(spec)
