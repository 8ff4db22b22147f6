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

import hashlib
import json
import warnings

from workbench.alignment.registry import AlignmentMethod, get_method
from workbench.fingerprints import code_fingerprint

__all__ = ["method_fingerprint", "method_key"]

_UNCACHED: set[str] = set()  # methods whose code could not be fingerprinted (warned once)


def method_fingerprint(method: AlignmentMethod) -> str | None:
    """A short hash of everything that determines ``method``'s results (see the module
    docstring), or ``None``, with a warning once per method, when its code cannot be
    fingerprinted: its results are then not cached."""
    code = [code_fingerprint(method.function)]
    if method.merger is not None:
        code.append(code_fingerprint(method.merger))
    if None in code:
        if method.name not in _UNCACHED:
            _UNCACHED.add(method.name)
            name = f"{method.function.__module__}.{method.function.__qualname__}"
            warnings.warn(
                f"Results of method {method.name!r} are not cached: its code ({name}) reads "
                "something whose content cannot be fingerprinted (a C function, or a global "
                "that is neither code nor data), so a cached result could outlive a change "
                "to it.",
                stacklevel=3,
            )
        return None
    settings = [method.kind, method.needs_data, method.preserves_function, method.uses_statistics]
    settings += [method.any_width, dict(method.search), dict(method.defaults), dict(method.quick)]
    settings.append(code)
    text = json.dumps([method.name, settings], sort_keys=True, default=repr)
    return f"{method.name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def method_key(name: str) -> str | None:
    """The part of a cache key that stands for the registered method ``name`` (or its
    alias): :func:`method_fingerprint` (``None``: do not cache)."""
    return method_fingerprint(get_method(name))
