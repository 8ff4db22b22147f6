"""Fingerprints: short hashes of what determines a result, for the keys of the result cache.

A cached result is valid as long as everything that determined it is unchanged, so its key
is built from fingerprints of its inputs (:class:`~workbench.cache.ResultCache.key`):

* each model, by :func:`fingerprint`: its *function*, not only its weights. The module
  tree (every name, every class by module path and qualname); each module's
  hyperparameters (``extra_repr()`` and its public plain attributes: numbers, strings,
  booleans, ``None``, dtypes, enums and tuples or lists of them, such as ``eps``,
  ``momentum``, ``inplace``, ``negative_slope``, ``track_running_stats``; functions
  stored as attributes or registered as forward hooks, by their code; tensors kept as
  plain attributes, by content; ``training`` is left out: analyses set the mode they
  need); the code of every class outside torch and torchvision (its source text where
  Python can find it, and always the byte code, constants and names of the functions in
  its body, so a class redefined in a notebook cell with another activation gets another
  fingerprint), with the user's own functions they call; every parameter and buffer
  (names, dtypes, shapes and bytes, persistent or not); and the workbench version. torch
  and torchvision classes are identified by name: their code is fixed by the library
  versions in the key;
* each dataset, by :func:`data_fingerprint`: its class, its images and targets, its
  :class:`~workbench.data.DatasetInfo` (name, classes, shape, normalization mean and std)
  and any ``transform``-like attribute;
* code the result ran (a registered method, a user's callback), by
  :func:`code_fingerprint`: its byte code, defaults and closure, and every global it
  reads, the user's own helpers followed, library code by name.

Whatever cannot be described (a global that is neither code nor data, a C function
outside an installed library, a ``DataLoader``, a dataset whose transform cannot be
described) gives ``None``, and a result that depends on it is not cached. Not covered:
global module hooks, the device and thread count (results agree to rounding across them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import inspect
import json
import sys
import types
import warnings
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from workbench.data import TensorImageDataset

__all__ = [
    "code_fingerprint",
    "data_fingerprint",
    "fingerprint",
    "fingerprints",
    "registered_fingerprint",
]

_VERSION = importlib.metadata.version("merge-workbench")
_LIBRARIES = ("torch", "torchvision", "builtins")  # classes identified by name and version
_SOURCES: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()  # class -> source
_SCALARS = (bool, int, float, complex, str, bytes, type(None), torch.dtype, enum.Enum)
# Class attributes Python adds by itself, later, and that compute nothing: type hints
# (added lazily), and the slot names copyreg caches on a class the first time one of its
# objects is pickled or deep-copied (which would change every fingerprint of that class).
_ADDED_LATER = ("__annotations__", "__slotnames__")


def _hash_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    if tensor.numel():
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def _code_text(code: types.CodeType) -> str:
    """The byte code, names and constants of a function's code (nested code included)."""
    consts = []
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            consts.append(_code_text(const))
        elif isinstance(const, frozenset):  # its repr's order changes with the hash seed
            consts.append(repr(sorted(map(repr, const))))
        else:
            consts.append(repr(const))
    text = f"{code.co_code.hex()}|{code.co_names}|{code.co_varnames}|{'|'.join(consts)}"
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(value: Any, depth: int = 0) -> str | None:
    """A stable text for a value that can change what a module computes, or ``None`` for
    values that describe no computation (metadata dicts, other objects)."""
    if isinstance(value, _SCALARS):
        return repr(value)
    if isinstance(value, torch.Tensor):  # kept as a plain attribute: by content
        digest = hashlib.sha256()
        _hash_tensor(digest, "tensor", value)
        return digest.hexdigest()
    if depth > 4:
        return None
    if isinstance(value, (tuple, list)):
        parts = [_describe(v, depth + 1) for v in value]
        return None if None in parts else f"{type(value).__name__}({', '.join(parts)})"
    if isinstance(value, functools.partial):
        parts = [_describe(v, depth + 1) for v in (value.func, value.args, value.keywords)]
        return None if None in parts else f"partial({', '.join(parts)})"
    if isinstance(value, types.MethodType):
        return _describe(value.__func__, depth + 1)
    if isinstance(value, Mapping):
        parts = [(_describe(k, depth + 1), _describe(v, depth + 1)) for k, v in value.items()]
        flat = [text for pair in parts for text in pair]
        return None if None in flat else f"{{{', '.join(f'{k}: {v}' for k, v in sorted(parts))}}}"
    if isinstance(value, types.FunctionType):
        return _describe_function(value)
    if callable(value) and hasattr(value, "__qualname__"):  # builtins; classes, by name
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return None


def _is_library(module_name: str | None) -> bool:
    """Whether code from ``module_name`` is fixed by an installed version (torch,
    torchvision, the standard library, anything in site-packages, the workbench itself):
    it is then identified by name, as the versions in every key pin it."""
    top = (module_name or "").split(".")[0]
    if top == "__main__":  # a script's or a notebook's own code
        return False
    if top in _LIBRARIES or top == "workbench" or top in sys.stdlib_module_names:
        return True
    file = getattr(sys.modules.get(module_name or ""), "__file__", None) or ""
    return any(part in ("site-packages", "dist-packages") for part in Path(file).parts)


def _global_names(code: types.CodeType) -> set[str]:
    """The global (and attribute) names a function's code reads, nested code included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


_IN_PROGRESS: set[types.CodeType] = set()  # functions being described (recursion guard)


def _describe_global(value: Any) -> str | None:
    """A global a user's function reads: modules and library code by name, the user's own
    functions and classes by their code, models by :func:`fingerprint`, data by value."""
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if isinstance(value, nn.Module):
        return fingerprint(value)
    if isinstance(value, type):
        if _is_library(value.__module__):
            return f"{value.__module__}.{value.__qualname__}"
        return _class_text(value)
    if callable(value) and not isinstance(value, (types.FunctionType, functools.partial)):
        module = getattr(value, "__module__", None)
        if _is_library(module) and hasattr(value, "__qualname__"):
            return f"{module}.{value.__qualname__}"
    return _describe(value)


def _describe_function(function: types.FunctionType) -> str | None:
    """A function by its code, defaults, closure and the globals it reads (the user's own
    helpers followed, library code by name), or ``None`` when one of them cannot be
    described: whatever calls it must then not be cached."""
    name = f"{function.__module__}.{function.__qualname__}"
    if _is_library(function.__module__):
        return name
    code = function.__code__
    if code in _IN_PROGRESS:  # a recursive function: its code is being described already
        return f"recursive {name}"
    _IN_PROGRESS.add(code)
    try:
        parts = [_describe(function.__defaults__), _describe(function.__kwdefaults__)]
        for cell in function.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                parts.append(_describe_global(cell.cell_contents))
        scope = function.__globals__
        for global_name in sorted(_global_names(code)):
            if global_name in scope:
                text = _describe_global(scope[global_name])
                parts.append(None if text is None else f"{global_name}={text}")
    finally:
        _IN_PROGRESS.discard(code)
    if None in parts:
        return None
    return f"{name}:{_code_text(code)}:{parts}"


def code_fingerprint(value: Any) -> str | None:
    """A short hash of a callable's code (and of the user code and values it reads), or
    ``None`` when it cannot be fingerprinted (a C function outside an installed library, a
    global that is neither code nor data): results that depend on it are then not cached."""
    text = _describe_global(value)
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:20]


def _class_text(cls: type) -> str | None:
    """The code of ``cls`` and of its bases outside torch and torchvision: the source text
    when Python finds it (read once per class), and always the code of the functions and
    the plain attributes of each class body, which also see methods replaced at run time
    and classes without a source file (``exec``, some notebook kernels). ``None`` when a
    function of the body reads something that cannot be described (see
    :func:`code_fingerprint`)."""
    texts = []
    for klass in cls.__mro__:
        top = klass.__module__.split(".")[0]
        if top in _LIBRARIES or top in sys.stdlib_module_names:
            continue  # fixed by the library and Python versions (typing.Generic)
        if klass not in _SOURCES:
            try:
                _SOURCES[klass] = inspect.getsource(klass)
            except (OSError, TypeError):
                _SOURCES[klass] = "<no source>"
        body = []
        for name, value in sorted(vars(klass).items()):
            if name in _ADDED_LATER:
                continue
            value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if isinstance(value, property):
                value = (value.fget, value.fset)
            text = _describe(value)
            if text is not None:
                body.append(f"{name}={text}")
            elif _is_code(value):
                return None  # code that reads what cannot be described
        texts.append(f"{klass.__module__}.{klass.__qualname__}|{_SOURCES[klass]}|{body}")
    return "\n".join(texts)


def _is_code(value: Any) -> bool:
    """Whether ``value`` is code that a model or method runs (a function, a bound method, a
    partial, a property's accessors), which must be described or not cached at all."""
    if isinstance(value, tuple):
        return any(_is_code(v) for v in value)
    return isinstance(value, (types.FunctionType, types.MethodType, functools.partial))


def _module_text(module: nn.Module) -> str | None:
    """A module's own hyperparameters: ``extra_repr()``, its public plain attributes and
    its forward hooks (functions, by their code); ``None`` when a function among them
    cannot be described."""
    parts = [module.extra_repr()]
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name == "training":
            continue
        text = _describe(value)
        if text is not None:
            parts.append(f"{name}={text}")
        elif _is_code(value):
            return None
    for registry in ("_forward_pre_hooks", "_forward_hooks"):
        for hook in getattr(module, registry, {}).values():
            text = _describe(hook)
            if text is None and _is_code(hook):
                return None
            parts.append(f"{registry}:{text or type(hook).__qualname__}")
    return "|".join(parts)


def fingerprint(model: nn.Module) -> str | None:
    """A short hash of what ``model`` computes: module tree, hyperparameters, the code of
    its own classes (and of the user's functions they call), every parameter and buffer,
    the workbench version (the module docstring lists it precisely). A changed weight,
    ``eps`` or activation changes it. ``None`` when the model's code reads something that
    cannot be fingerprinted (:func:`code_fingerprint`): results on it are not cached."""
    digest = hashlib.sha256(f"workbench {_VERSION}|".encode())
    classes: dict[type, None] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        cls = type(module)
        classes[cls] = None
        text = _module_text(module)
        if text is None:
            return None
        digest.update(f"module {name}|{cls.__module__}.{cls.__qualname__}|{text}".encode())
    for cls in classes:
        text = _class_text(cls)
        if text is None:
            return None
        digest.update(text.encode())
    for name, tensor in model.named_parameters(remove_duplicate=False):
        _hash_tensor(digest, f"parameter {name}", tensor)
    for name, tensor in model.named_buffers(remove_duplicate=False):
        _hash_tensor(digest, f"buffer {name}", tensor)
    return digest.hexdigest()[:20]


def _describe_transform(value: Any, depth: int = 0) -> str | None:
    """A stable text for a dataset's transform (a module by its fingerprint, a list by its
    parts, a function by its code, an object such as ``Compose`` by its class and
    attributes), or ``None`` when it cannot be described (then the data is not cached)."""
    if isinstance(value, nn.Module):
        return fingerprint(value)
    if depth > 4:
        return None
    if isinstance(value, (list, tuple)):
        parts = [_describe_transform(v, depth + 1) for v in value]
        return None if None in parts else f"[{', '.join(parts)}]"
    text = _describe(value)
    if text is not None or not hasattr(value, "__dict__"):
        return text
    attributes = {k: _describe_transform(v, depth + 1) for k, v in sorted(vars(value).items())}
    if None in attributes.values():
        return None
    cls, code = type(value), _class_text(type(value))
    return None if code is None else f"{cls.__module__}.{cls.__qualname__}|{code}|{attributes}"


def data_fingerprint(data: Any) -> str | None:
    """A content hash of an in-memory dataset (see the module docstring), or ``None`` for
    data that cannot be hashed without reading all of it (loaders, lazy datasets) or whose
    transform cannot be described: results on it are recomputed, never served stale."""
    if isinstance(data, TensorImageDataset):
        tensors = {"images": data.images, "targets": data.targets}
        info = data.info
        if not dataclasses.is_dataclass(info):
            return None
        head = json.dumps(dataclasses.asdict(info), sort_keys=True, default=str)
    elif isinstance(data, Dataset) and hasattr(data, "tensors"):
        tensors = {str(i): t for i, t in enumerate(data.tensors)}
        head = "TensorDataset"
    else:
        return None
    transforms = {
        k: _describe_transform(v)
        for k, v in sorted(vars(data).items())
        if "transform" in k.lower() and v is not None
    }
    if None in transforms.values():
        return None
    cls, code = type(data), _class_text(type(data))
    if code is None:
        return None
    digest = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}|{head}|{transforms}".encode())
    digest.update(code.encode())
    for name, tensor in tensors.items():
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()[:20]


def fingerprints(models: Iterable[nn.Module]) -> list[str] | None:
    """The :func:`fingerprint` of each model, or ``None`` if one cannot be fingerprinted
    (a key part of ``None`` keeps the result out of the cache)."""
    found = [fingerprint(model) for model in models]
    return None if None in found else found


_UNCACHED: set[tuple[str, str]] = set()  # (what, name) not cached, warned once


def registered_fingerprint(
    what: str, name: str, functions: Iterable[Any], settings: Any
) -> str | None:
    """The part of a cache key that stands for a registered entry (a method, a BatchNorm
    handling): ``name`` and a hash of its ``settings`` (JSON-able) and of its code
    (:func:`code_fingerprint` of each function), so that an entry registered again with
    other code gets new results. ``None``, with a warning once per entry, when its code
    cannot be fingerprinted: its results are then not cached."""
    functions = list(functions)
    code = [code_fingerprint(f) for f in functions]
    if None in code:
        if (what, name) not in _UNCACHED:
            _UNCACHED.add((what, name))
            where = ", ".join(f"{f.__module__}.{f.__qualname__}" for f in functions)
            warnings.warn(
                f"Results of {what} {name!r} are not cached: its code ({where}) reads "
                "something whose content cannot be fingerprinted (a C function, or a global "
                "that is neither code nor data), so a cached result could outlive a change "
                "to it.",
                stacklevel=4,
            )
        return None
    text = json.dumps([name, settings, code], sort_keys=True, default=repr)
    return f"{name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
