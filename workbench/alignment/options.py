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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from workbench.alignment.registry import AlignmentMethod, get_method, methods
from workbench.vocabulary import warn_former

__all__ = ["check_options", "option_names", "quick_options", "renamed_options", "split_options"]

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


def renamed_options(method: AlignmentMethod, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with ``method``'s former option names (its registered ``renamed``)
    replaced by the current ones, with one ``FutureWarning``; both names of one option at
    once is an error (a current name left at ``None``, a wrapper's default, is absent)."""
    options = dict(options)
    former = [(old, new) for old, new in method.renamed.items() if old in options]
    for old, new in former:
        if options.get(new) is not None:
            raise TypeError(
                f"{old}= is the former name of {new}= (method {method.name!r}); pass {new}= only."
            )
        options[new] = options.pop(old)
    if former:
        warn_former(
            f"{', '.join(f'{old}= is now {new}=' for old, new in former)} (method "
            f"{method.name!r}); the former names will stop working in the next release."
        )
    return options


def split_options(
    method: str, options: Mapping[str, Any], caller: Callable | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` in two: those ``method`` (or the ``caller`` that runs it, e.g.
    ``merge_many``) takes, and the rest, which a method that aligns first (NP Merge's
    ``align``) passes on to its alignment."""
    found = get_method(method)
    given = set(inspect.signature(caller).parameters) if caller is not None else set()
    mine = {k: v for k, v in options.items() if k in given or found.accepts(k)}
    return mine, {k: v for k, v in options.items() if k not in mine}


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
        takers = [
            m for m in methods() if get_method(m).accepts(option) or option in get_method(m).renamed
        ]
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
