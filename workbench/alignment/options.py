"""The options of registered methods: which a method takes, and a call's options checked
against the methods it calls.

One call can configure several methods (:func:`~workbench.compare_methods`), so options
go to the methods that take them. An option that none of the called methods takes would
be silently ignored, and a misplaced one (``steps``, which is STE's, given to NP Merge,
whose option is ``learn_steps``) would run with the defaults: :func:`check_options`
refuses it before any work, naming the methods that take it and the nearest option.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from workbench.alignment.registry import AlignmentMethod, get_method, methods

__all__ = ["check_options", "option_names", "quick_options"]

_GIVEN = {"model_a", "model_b", "models", "spec", "data"}  # passed by the caller, not options


def option_names(method: AlignmentMethod) -> list[str]:
    """The options ``method`` takes by name: its searched hyperparameters and the
    keywords of its function and merger (not the models, spec and data it is given)."""
    names = set(method.search)
    for function in (method.function, method.merger):
        if function is not None:
            for p in inspect.signature(function).parameters.values():
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _GIVEN:
                    names.add(p.name)
    return sorted(names)


def quick_options(method: AlignmentMethod) -> dict[str, Any]:
    """The options of a quick run: every searched hyperparameter fixed at its default
    (no validation search; the first value of its grid where it has no default) and the
    method's registered ``quick`` options (fewer learning steps)."""
    fixed = {name: method.defaults.get(name, grid[0]) for name, grid in method.search.items()}
    return {**fixed, **method.quick}


def check_options(
    called: Sequence[str], options: Mapping[str, Any], own: Sequence[str] = ()
) -> None:
    """Refuse, before any work, an option that none of the ``called`` methods takes (nor
    the caller itself: ``own``), saying which registered methods take it and suggesting
    the nearest option."""
    found = [get_method(name) for name in called]
    unknown = [k for k in options if k not in own and not any(m.accepts(k) for m in found)]
    if not unknown:
        return
    names = sorted({n for m in found for n in option_names(m)} | set(own))
    everywhere = {n: m for m in reversed(methods()) for n in option_names(get_method(m))}
    hints = []
    for option in unknown:
        takers = [m for m in methods() if get_method(m).accepts(option)]
        hint = f"{option!r} is an option of {takers}" if takers else f"no method takes {option!r}"
        candidates = [n for n in [*names, *everywhere] if n != option]
        close = difflib.get_close_matches(option, candidates, n=1, cutoff=0.6)
        if close:
            whose = "" if close[0] in names else f", an option of {everywhere[close[0]]!r}"
            hint += f" (did you mean {close[0]!r}{whose}?)"
        hints.append(hint)
    raise ValueError(
        f"Options {unknown} are taken by none of the methods called ({list(called)}): "
        f"{'; '.join(hints)}. Their options: {names}."
    )
