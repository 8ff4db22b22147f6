"""The one protocol every analysis result follows: ``to_frame()``, ``plot(ax=None)``,
``save(path)`` and ``Class.load(path)``.

A result (an LMC curve, a loss plane, a sweep, matched correlations, exemplars, a unit
study) is a frozen dataclass of arrays and plain values. Each result class writes its own
``to_frame`` (a tidy table: one row per observation) and ``plot`` (one panel on ``ax``,
or a figure of its own); :class:`Result` gives them all the same ``save`` and ``load``,
derived from the dataclass fields, so that a result computed on a cluster is read back
in a notebook exactly, with no pickle involved:

* one safetensors file holds every tensor and NumPy array (its dtype and shape kept);
* everything else (numbers, strings, lists, tuples, dicts with any JSON-able keys, nested
  results, pandas tables) is JSON in the file's metadata, tagged so that a tuple comes
  back a tuple and an ``int`` key an ``int`` key;
* a nested result is rebuilt from its class name only when that class is a dataclass of
  this package: a file can never make ``load`` import or run anything else.

NaN and infinite numbers are kept (a diverged curve stays diverged).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from workbench.figures import save_table
from workbench.files import write_safetensors

__all__ = ["Result", "load_result"]

R = TypeVar("R", bound="Result")
_META_KEY = "workbench-result-file"
_FORMAT = 1
_PACKAGE = "workbench."


class Result:
    """Mixin of the analysis results (dataclasses): :meth:`save`, :meth:`load` and
    :meth:`write_csv`.

    Subclasses define ``to_frame() -> pandas.DataFrame`` and ``plot(ax=None, ...) ->
    matplotlib.figure.Figure``; ``tests/test_results.py`` checks every exported result
    class for all four.
    """

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write this result to ``path`` (``.safetensors`` is appended when it has no
        suffix); an existing file is an error unless ``overwrite=True``. Returns the path."""
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".safetensors")
        tensors: dict[str, torch.Tensor] = {}
        tree = _encode(self, tensors, "")
        header = {_META_KEY: json.dumps({"format": _FORMAT, "result": tree}, allow_nan=True)}
        return write_safetensors(path, tensors, header, overwrite=overwrite, what="result file")

    def write_csv(self, path: str | Path) -> Path:
        """Write ``to_frame()`` to ``path`` as CSV (folders created)."""
        return save_table(self.to_frame(), path)

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """The result saved at ``path``; ``TypeError`` if the file holds another kind of
        result, ``ValueError`` if it is not a result file."""
        found = load_result(path)
        if not isinstance(found, cls):
            raise TypeError(
                f"{path} holds a {type(found).__name__}, not a {cls.__name__}: load it with "
                f"{type(found).__name__}.load or workbench.results.load_result."
            )
        return found


def load_result(path: str | Path) -> Result:
    """Whatever result :meth:`Result.save` wrote to ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No result file at {path}.")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})[_META_KEY])
    except Exception as error:
        raise ValueError(
            f"{path} is not a result file written by Result.save ({error}); pass a file that "
            "a workbench result's .save() wrote."
        ) from error
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path}: unknown result file format {meta.get('format')!r}.")
    return _decode(meta["result"], tensors)


def _encode(value: Any, tensors: dict[str, torch.Tensor], at: str) -> Any:
    """``value`` as a JSON tree; its arrays go into ``tensors`` under their path ``at``."""
    if isinstance(value, torch.Tensor):
        tensors[at] = value.detach().to("cpu").contiguous()
        return {"tensor": at}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {"objects": [_encode(v, tensors, f"{at}/{i}") for i, v in enumerate(value)]}
        tensors[at] = torch.from_numpy(np.ascontiguousarray(value))
        return {"ndarray": at}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return {"path": str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        if not kind.__module__.startswith(_PACKAGE):
            raise TypeError(f"Cannot save a {kind.__qualname__}: not a workbench result.")
        fields = {
            f.name: _encode(getattr(value, f.name), tensors, f"{at}/{f.name}")
            for f in dataclasses.fields(value)
        }
        return {"dataclass": [f"{kind.__module__}:{kind.__qualname__}", fields]}
    if isinstance(value, pd.DataFrame):
        columns = [_encode(c, tensors, "") for c in value.columns]
        data = [
            _encode(value[c].to_numpy(), tensors, f"{at}/{i}") for i, c in enumerate(value.columns)
        ]
        return {"frame": {"columns": columns, "data": data}}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors, f"{at}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{at}/{i}") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {
            "dict": [
                [_encode(k, tensors, ""), _encode(v, tensors, f"{at}/{i}")]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    raise TypeError(
        f"Cannot save {at or 'the result'} of type {type(value).__name__}: a result holds "
        "tensors, arrays, numbers, strings, lists, tuples, dicts and other results."
    )


def _decode(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    ((tag, body),) = tree.items()
    if tag == "tensor":
        return tensors[body]
    if tag == "ndarray":
        return tensors[body].numpy()
    if tag == "objects":
        array = np.empty(len(body), dtype=object)
        array[:] = [_decode(v, tensors) for v in body]
        return array
    if tag == "path":
        return Path(body)
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in body)
    if tag == "dict":
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in body}
    if tag == "frame":
        columns = [_decode(c, tensors) for c in body["columns"]]
        data = [_decode(d, tensors) for d in body["data"]]
        return pd.DataFrame(dict(zip(columns, data, strict=True)))
    if tag == "dataclass":
        name, fields = body
        return _rebuild(name, {k: _decode(v, tensors) for k, v in fields.items()})
    raise ValueError(f"Unknown entry {tag!r} in a result file.")


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def _rebuild(name: str, fields: dict[str, Any]) -> Any:
    """An instance of the workbench dataclass ``module:qualname`` with ``fields``."""
    module, _, qualname = name.partition(":")
    if not module.startswith(_PACKAGE):
        raise ValueError(f"A result file names the class {name!r}, outside the workbench.")
    kind: Any = importlib.import_module(module)
    for part in qualname.split("."):
        kind = getattr(kind, part)
    if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
        raise ValueError(f"A result file names {name!r}, which is not a workbench result.")
    given = {f.name for f in dataclasses.fields(kind) if f.init}
    found = kind(**{k: v for k, v in fields.items() if k in given})
    for k, v in fields.items():
        if k not in given:
            object.__setattr__(found, k, v)
    return found
