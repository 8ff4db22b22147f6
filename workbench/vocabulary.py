"""One vocabulary for the public functions, and the release in which old calls still work.

The words (``docs/vocabulary.md`` says why; ``tests/test_vocabulary.py`` checks every
public signature):

* ``data``: what a function fits, learns or collects statistics on (training data:
  alignment statistics, BatchNorm RESET/REPAIR, training, exemplar search);
* ``eval_data``: what it measures loss and accuracy on (a dataset, or split name ->
  dataset); ``val_data``: the held-out split a choice is made on;
* ``alpha``: only the interpolation coefficient on the path from model A (0) to B (1);
* ``points``: positions in weight space (a model's weights as a mixture of the endpoints,
  or the models' coordinates in a plane); ``split``: the name of a data split
  (``"train"``, ``"test"``); ``combine``: how an ensemble combines its members' outputs;
  ``kind``: the kind of a registered method (``"permutation"``, ``"linear"``,
  ``"merge"``);
* the models come first and may be positional; every argument after them is keyword-only.

:func:`keyword_only` lets the calls written before these rules work for one more release,
each with one ``FutureWarning`` that says the new spelling.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["MEASURED", "STRICT", "keyword_only", "warn_former"]

F = TypeVar("F", bound=Callable[..., Any])

STRICT = "WORKBENCH_STRICT_VOCABULARY"
"""Set (the test suite sets it) to make the package's own call of a former spelling an
error: the warning would otherwise reach users who never wrote that call."""

MEASURED = {"data": "eval_data"}
"""``moved=`` of the functions that used to measure on ``data``."""


def keyword_only(
    legacy: Sequence[str] = (),
    *,
    renamed: Mapping[str, str] | None = None,
    moved: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Decorate a function whose arguments after its models are keyword-only so that the
    former calls keep working for one release, with a ``FutureWarning``:

    * ``legacy``: the current names of the arguments that used to be positional after the
      models, in their former order (``lmc_curve(a, b, test, 11, "reset")``: ``("eval_data",
      "alphas", "bn")``);
    * ``renamed``: former keyword -> current keyword (``{"bn_data": "data"}``);
    * ``moved``: a keyword whose meaning moved to another name (``{"data": "eval_data"}``
      for a function that used to measure on ``data``): applied only when the current
      name is not given, so that a call in the new vocabulary is never reinterpreted.

    Both the former and the current name of one argument is a ``TypeError``.
    """
    renamed, moved = dict(renamed or {}), dict(moved or {})

    def decorator(function: F) -> F:
        parameters = inspect.signature(function).parameters.values()
        leading = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        name = function.__qualname__

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            notes = []
            if len(args) > len(leading):
                extra = args[len(leading) :]
                if len(extra) > len(legacy):
                    raise TypeError(
                        f"{name}() takes {len(leading)} positional arguments ({', '.join(leading)}"
                        f") and keywords after them; got {len(args)} positional arguments."
                    )
                names = legacy[: len(extra)]
                for arg, value in zip(names, extra, strict=True):
                    _put(kwargs, arg, value, name)
                args = args[: len(leading)]
                notes.append(f"pass {', '.join(f'{n}=' for n in names)} by keyword")
            for old, new in moved.items():
                if old in kwargs and new not in kwargs:
                    kwargs[new] = kwargs.pop(old)
                    notes.append(f"{old}= (what it measures on) is now {new}=")
            for old, new in renamed.items():
                if old in kwargs:
                    _put(kwargs, new, kwargs.pop(old), name, old)
                    notes.append(f"{old}= is now {new}=")
            if notes:
                caller = sys._getframe(1).f_globals.get("__name__", "")
                if os.environ.get(STRICT) and caller.split(".")[0] == "workbench":
                    raise TypeError(f"{caller} calls {name}() in a former spelling: {notes}.")
                warn_former(
                    f"{name}(): {'; '.join(notes)} (workbench.vocabulary); the former call "
                    "will stop working in the next release."
                )
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def warn_former(message: str) -> None:
    """A ``FutureWarning`` about a former spelling, pointed at the first caller outside
    the package: the line the user wrote, however many workbench frames lie between."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "workbench":
        frame, level = frame.f_back, level + 1
    warnings.warn(message, FutureWarning, stacklevel=level)


def _put(kwargs: dict[str, Any], key: str, value: Any, name: str, old: str | None = None) -> None:
    if key in kwargs:
        given = f"{old}= (the former name of {key}=)" if old else f"{key}= by position"
        raise TypeError(f"{name}() got {given} and {key}= too; pass {key}= once, by keyword.")
    kwargs[key] = value
