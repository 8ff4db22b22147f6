"""On-disk cache of analysis results, keyed by the content of the models and data they used.

A result (an LMC curve, a loss plane, a feature visualization, dataset exemplars) is a
handful of tensors plus JSON-able settings. It is stored as one safetensors file whose name
is a hash of everything that determines it, so a re-run with the same inputs is a file read
and anything that changes the numbers changes the key. What the key covers, precisely:

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
  fingerprint); every parameter and buffer (names, dtypes, shapes and bytes, persistent
  or not); and the workbench version. torch and torchvision classes are identified by
  name: their code is fixed by the library versions in the key;
* each dataset, by :func:`data_fingerprint`: its class, its images and targets, its
  :class:`~workbench.data.DatasetInfo` (name, classes, shape, normalization mean and std)
  and any ``transform``-like attribute;
* the settings the caller passes to :meth:`ResultCache.key`, and the workbench, torch and
  torchvision versions.

Not covered: module-level globals that methods read, global module hooks, the device and
thread count (results agree to rounding across them). Data given as a ``DataLoader`` has no
content we can hash cheaply, nor a dataset whose transform cannot be described: results on
them are not cached (:func:`data_fingerprint` returns ``None``).
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
import os
import types
import weakref
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from workbench.data import TensorImageDataset, default_data_root
from workbench.files import check_writable_dir, write_safetensors

__all__ = ["ResultCache", "data_fingerprint", "default_cache", "fingerprint"]

_META_KEY = "workbench-result"
_DISABLED = ("0", "off", "false", "no")
_KEY_VERSIONS = {name: importlib.metadata.version(name) for name in ("torch", "torchvision")}
_VERSION = _KEY_VERSIONS["merge-workbench"] = importlib.metadata.version("merge-workbench")
_LIBRARIES = ("torch", "torchvision", "builtins")  # classes identified by name and version
_SOURCES: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()  # class -> source
_SCALARS = (bool, int, float, complex, str, bytes, type(None), torch.dtype, enum.Enum)
_FIX = (
    "set WORKBENCH_CACHE_DIR to a folder you can write to (or pass ResultCache(root=...)), "
    "or WORKBENCH_CACHE=off to compute without caching"
)


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
    if isinstance(value, types.FunctionType):
        cells = []
        for cell in value.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                cells.append(_describe(cell.cell_contents, depth + 1))
        defaults = _describe(value.__defaults__, depth + 1)
        code = _code_text(value.__code__)
        return f"{value.__module__}.{value.__qualname__}:{code}:{defaults}:{cells}"
    if callable(value) and hasattr(value, "__qualname__"):  # builtins; classes, by name
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return None


def _class_text(cls: type) -> str:
    """The code of ``cls`` and of its bases outside torch and torchvision: the source text
    when Python finds it (read once per class), and always the code of the functions and
    the plain attributes of each class body, which also see methods replaced at run time
    and classes without a source file (``exec``, some notebook kernels)."""
    texts = []
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] in _LIBRARIES:
            continue
        if klass not in _SOURCES:
            try:
                _SOURCES[klass] = inspect.getsource(klass)
            except (OSError, TypeError):
                _SOURCES[klass] = "<no source>"
        body = []
        for name, value in sorted(vars(klass).items()):
            value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if isinstance(value, property):
                value = (value.fget, value.fset)
            text = _describe(value)
            if text is not None:
                body.append(f"{name}={text}")
        texts.append(f"{klass.__module__}.{klass.__qualname__}|{_SOURCES[klass]}|{body}")
    return "\n".join(texts)


def _module_text(module: nn.Module) -> str:
    """A module's own hyperparameters: ``extra_repr()``, its public plain attributes and
    its forward hooks (functions, by their code)."""
    parts = [module.extra_repr()]
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name == "training":
            continue
        text = _describe(value)
        if text is not None:
            parts.append(f"{name}={text}")
    for registry in ("_forward_pre_hooks", "_forward_hooks"):
        for hook in getattr(module, registry, {}).values():
            parts.append(f"{registry}:{_describe(hook) or type(hook).__qualname__}")
    return "|".join(parts)


def fingerprint(model: nn.Module) -> str:
    """A short hash of what ``model`` computes: module tree, hyperparameters, the code of
    its own classes, every parameter and buffer, the workbench version (the module
    docstring lists it precisely). A changed weight, ``eps`` or activation changes it."""
    digest = hashlib.sha256(f"workbench {_VERSION}|".encode())
    classes: dict[type, None] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        cls = type(module)
        classes[cls] = None
        digest.update(f"module {name}|{cls.__module__}.{cls.__qualname__}|".encode())
        digest.update(_module_text(module).encode())
    for cls in classes:
        digest.update(_class_text(cls).encode())
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
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}|{_class_text(cls)}|{attributes}"


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
    cls = type(data)
    digest = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}|{head}|{transforms}".encode())
    digest.update(_class_text(cls).encode())
    for name, tensor in tensors.items():
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()[:20]


def _plain_name(value: str, what: str) -> str:
    """``value`` if it names one entry directly inside a folder, else ``ValueError``."""
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    if (
        not isinstance(value, str)
        or value in ("", ".", "..")
        or any(s in value for s in separators)
        or "\0" in value
        or Path(value).is_absolute()
        or Path(value).drive
    ):
        raise ValueError(
            f"The cache {what} must be a plain name (a folder or file directly inside the "
            f"cache, e.g. 'lmc'), got {value!r}: path separators, '.', '..' and absolute paths "
            "could reach files outside the cache. Pass the name the result was stored under."
        )
    return value


class ResultCache:
    """A directory of cached results, one subdirectory per kind of result.

    ``enabled=False`` (or ``$WORKBENCH_CACHE=off``) turns every lookup into a miss and every
    store into a no-op, for timing runs and for users who want nothing written.

    A cache that cannot take files (its root is a file, a read-only folder, not ours) is an
    error, raised by :meth:`get_or_compute` before it computes and by :meth:`store`: a
    warning would let every later run recompute in silence, and an error after the work
    would lose it. The message says how to fix it: another ``$WORKBENCH_CACHE_DIR``, or
    ``$WORKBENCH_CACHE=off``.
    """

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else default_data_root() / "results"
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"ResultCache(root={str(self.root)!r}, enabled={self.enabled})"

    @staticmethod
    def key(**parts: Any) -> str | None:
        """The key of a result from everything that determines it (fingerprints, settings)
        and the workbench, torch and torchvision versions; ``None`` if any part is
        ``None`` (an unhashable input: do not cache)."""
        if any(value is None for value in parts.values()):
            return None
        text = json.dumps({"parts": parts, "versions": _KEY_VERSIONS}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, kind: str, key: str) -> Path:
        """Where the entry ``key`` of ``kind`` lives (both must be plain names)."""
        return self.root / _plain_name(kind, "kind") / f"{_plain_name(key, 'key')}.safetensors"

    def check_writable(self) -> None:
        """Raise a clear ``NotADirectoryError``/``PermissionError`` now if results could not
        be stored (nothing to check when the cache is disabled)."""
        if self.enabled:
            check_writable_dir(self.root, "result cache folder", _FIX)

    def load(
        self,
        kind: str,
        key: str | None,
        *,
        expect: Collection[str] = (),
        valid: Callable[[dict[str, torch.Tensor], dict], bool] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The stored tensors and settings of a result, or ``None`` on a miss.

        A damaged or foreign entry is a miss, never an error: a file that is not
        safetensors, has no settings, lacks a tensor named in ``expect``, or that
        ``valid(tensors, settings)`` rejects (returns false or raises): consumers name
        what they read, so that they are never handed an entry they cannot read.
        """
        if not self.enabled or key is None:
            return None
        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(path)
            with safe_open(path, framework="pt") as handle:
                meta = json.loads((handle.metadata() or {})[_META_KEY])
            if not isinstance(meta, dict) or any(name not in tensors for name in expect):
                return None
            if valid is not None and not valid(tensors, meta):
                return None
        except Exception:  # whatever a foreign or damaged file makes fail is a miss
            return None
        return tensors, meta

    def store(
        self, kind: str, key: str | None, tensors: Mapping[str, torch.Tensor], meta: Mapping
    ) -> Path | None:
        """Write a result atomically (a reader never sees half a file; of two processes
        storing one key, the later replaces the earlier's equal result); no-op when
        disabled. A cache that cannot take the file raises a clear error (see the class)."""
        if not self.enabled or key is None:
            return None
        state = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        header = {_META_KEY: json.dumps(dict(meta), sort_keys=True, default=str)}
        return write_safetensors(self.path(kind, key), state, header, what="result cache", fix=_FIX)

    def get_or_compute(
        self,
        kind: str,
        key: str | None,
        compute: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping]],
        *,
        expect: Collection[str] = (),
        valid: Callable[[dict[str, torch.Tensor], dict], bool] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """The cached result under ``key`` (``expect`` and ``valid`` as in :meth:`load`),
        or ``compute()``'s, stored for next time. The cache is checked writable before
        ``compute`` runs, so a read-only cache fails at once, not after the work."""
        hit = self.load(kind, key, expect=expect, valid=valid)
        if hit is not None:
            return hit
        if key is not None:
            self.check_writable()
        tensors, meta = compute()
        self.store(kind, key, tensors, meta)
        return dict(tensors), dict(meta)

    def clear(self, kind: str | None = None) -> int:
        """Delete cached results (of one kind, or all); returns how many files were removed.
        Only this cache's own ``*.safetensors`` entries are deleted, and only inside the
        root: ``kind`` must be a plain name (``ValueError`` otherwise), and a kind folder
        that is a link to elsewhere is refused (or skipped, when clearing all kinds)."""
        root = self.root.resolve()
        if kind is not None:
            directories = [self.root / _plain_name(kind, "kind")]
            if directories[0].resolve().parent != root:
                raise ValueError(
                    f"The cache kind {kind!r} is a link to {directories[0].resolve()}, outside "
                    f"the cache {self.root}; nothing was deleted."
                )
        else:
            directories = sorted(self.root.iterdir()) if self.root.is_dir() else []
        removed = 0
        for directory in directories:
            if not directory.is_dir() or directory.resolve().parent != root:
                continue  # a file, or a link to a folder elsewhere: not the cache's
            for entry in directory.glob("*.safetensors"):
                if entry.is_file() or entry.is_symlink():
                    entry.unlink()
                    removed += 1
            with contextlib.suppress(OSError):  # only an emptied folder goes
                directory.rmdir()
        return removed


def default_cache() -> ResultCache:
    """The cache under ``$WORKBENCH_CACHE_DIR`` (default ``data/cache/results``), disabled
    when ``$WORKBENCH_CACHE`` is ``off``/``0``/``false``/``no``."""
    root = os.environ.get("WORKBENCH_CACHE_DIR")
    enabled = os.environ.get("WORKBENCH_CACHE", "on").strip().lower() not in _DISABLED
    return ResultCache(root, enabled=enabled)
