"""The cache key of a registered method: what its results depend on, its code included.

A user iterates on a method in a notebook: registers it, runs a comparison, fixes a bug
(perhaps in a helper the method calls) and registers it again under the same name. Every
cached result that a method computed is keyed by :func:`method_key`, a hash of the
method's registration (kind, flags, grids, defaults, quick preset) and of its code
(:func:`~workbench.fingerprints.code_fingerprint`: its function and merger, the user's
helpers they call, the globals they read), so the fixed method's results are computed
anew. Code that cannot be fingerprinted is not cached, and says so once.
"""

from __future__ import annotations

from workbench.alignment.registry import AlignmentMethod, get_method
from workbench.fingerprints import registered_fingerprint

__all__ = ["method_fingerprint", "method_key"]


def method_fingerprint(method: AlignmentMethod) -> str | None:
    """A short hash of everything that determines ``method``'s results (see the module
    docstring), or ``None``, with a warning once per method, when its code cannot be
    fingerprinted: its results are then not cached."""
    functions = [method.function] + ([method.merger] if method.merger is not None else [])
    settings = [method.kind, method.needs_data, method.preserves_function, method.uses_statistics]
    settings += [method.any_width, dict(method.search), dict(method.defaults), dict(method.quick)]
    return registered_fingerprint("method", method.name, functions, settings)


def method_key(name: str) -> str | None:
    """The part of a cache key that stands for the registered method ``name`` (or its
    alias): :func:`method_fingerprint` (``None``: do not cache)."""
    return method_fingerprint(get_method(name))
