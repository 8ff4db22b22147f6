"""On-disk cache of analysis results, keyed by the content of the models and data they used.

A result (an LMC curve, a loss plane, a feature visualization, dataset exemplars) is a
handful of tensors plus JSON-able settings. It is stored as one safetensors file whose name
is a hash of everything that determines it: the fingerprints of its models, data and code
(:mod:`workbench.fingerprints` says precisely what they cover), the settings the caller
passes to :meth:`ResultCache.key`, and the workbench, torch and torchvision versions. A
re-run with the same inputs is a file read, and anything that changes the numbers
changes the key; an input that cannot be fingerprinted keeps the result out of the cache.

Everything the workbench caches on disk (these results, downloaded datasets) lives under
one folder, :func:`~workbench.files.cache_dir` (re-exported here): ``$WORKBENCH_CACHE_DIR``
if set, else the platform's user cache folder, never the source checkout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from workbench.files import CACHE_SECTIONS, cache_dir, check_writable_dir, write_safetensors
from workbench.fingerprints import code_fingerprint, data_fingerprint, fingerprint

__all__ = [
    "CACHE_SECTIONS",
    "ResultCache",
    "cache_dir",
    "default_cache",
    "describe",
    "input_key",
    "resolve_cache",
]

_META_KEY = "workbench-result"
_UNHASHABLE = "<cannot be fingerprinted>"
_DISABLED = ("0", "off", "false", "no")
_KEY_VERSIONS = {name: importlib.metadata.version(name) for name in ("torch", "torchvision")}
_KEY_VERSIONS["merge-workbench"] = importlib.metadata.version("merge-workbench")
_FIX = (
    "set WORKBENCH_CACHE_DIR to a folder you can write to (or pass ResultCache(root=...)), "
    "or WORKBENCH_CACHE=off to compute without caching"
)


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


def describe(value: Any) -> Any:
    """``value`` as JSON data that determines it (:func:`input_key`), or ``None`` when a
    part of it cannot be fingerprinted: a recipe a job or a checkpoint records."""
    part = input_key(value)
    return None if _UNHASHABLE in json.dumps(part, sort_keys=True, default=str) else part


def input_key(value: Any) -> Any:
    """What an input of an analysis counts as in a cache key: a model by its
    :func:`~workbench.fingerprints.fingerprint`, a dataset by its content
    (:func:`~workbench.fingerprints.data_fingerprint`), a registered method or BatchNorm
    handling by its ``cache_key`` (registration and code), a function (an augmentation)
    by its code (:func:`~workbench.fingerprints.code_fingerprint`), a dataclass by its
    class and fields, containers element by element, arrays as lists and plain values as
    themselves. What cannot be fingerprinted (a DataLoader, a lazy dataset, an arbitrary
    object) keeps the whole result out of the cache."""
    if isinstance(value, nn.Module):
        found = fingerprint(value)
    elif isinstance(value, (Dataset, DataLoader)):
        found = data_fingerprint(value)
    elif hasattr(value, "cache_key") and not isinstance(value, type):
        found = value.cache_key
    elif isinstance(value, Mapping):
        return {str(k): input_key(v) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        return [input_key(v) for v in value]
    elif isinstance(value, np.ndarray):
        return value.tolist()
    elif isinstance(value, np.generic):
        return value.item()
    elif value is None or isinstance(value, (str, int, float, bool)):
        return value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: input_key(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"class": f"{type(value).__module__}.{type(value).__qualname__}", **fields}
    elif callable(value):
        found = code_fingerprint(value)
    else:
        found = None
    return _UNHASHABLE if found is None else found


class ResultCache:
    """A directory of cached results, one subdirectory per kind of result; by default
    ``cache_dir("results")`` (see :func:`cache_dir`).

    ``enabled=False`` (or ``$WORKBENCH_CACHE=off``) turns every lookup into a miss and every
    store into a no-op, for timing runs and for users who want nothing written.

    A cache that cannot take files (its root is a file, a read-only folder, not ours) is an
    error, raised by :meth:`get_or_compute` before it computes and by :meth:`store`: a
    warning would let every later run recompute in silence, and an error after the work
    would lose it. The message says how to fix it: another ``$WORKBENCH_CACHE_DIR``, or
    ``$WORKBENCH_CACHE=off``.
    """

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else cache_dir("results")
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"ResultCache(root={str(self.root)!r}, enabled={self.enabled})"

    def key(self, **inputs: Any) -> str | None:
        """The key of a result from the inputs of the call that computes it and the
        workbench, torch and torchvision versions: the one place where inputs become a
        key (:func:`input_key` says how each kind of input counts). ``None`` when an input
        cannot be fingerprinted, or the cache is disabled (nothing is fingerprinted then):
        the result is computed, never cached."""
        if not self.enabled:
            return None
        parts = describe(inputs)
        if parts is None:
            return None
        text = json.dumps({"parts": parts, "versions": _KEY_VERSIONS}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, section: str, key: str) -> Path:
        """Where the entry ``key`` of ``section`` lives (both must be plain names)."""
        return (
            self.root / _plain_name(section, "section") / f"{_plain_name(key, 'key')}.safetensors"
        )

    def check_writable(self) -> None:
        """Raise a clear ``NotADirectoryError``/``PermissionError`` now if results could not
        be stored (nothing to check when the cache is disabled)."""
        if self.enabled:
            check_writable_dir(self.root, "result cache folder", _FIX)

    def load(
        self,
        section: str,
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
        path = self.path(section, key)
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
        self, section: str, key: str | None, tensors: Mapping[str, torch.Tensor], meta: Mapping
    ) -> Path | None:
        """Write a result atomically (a reader never sees half a file; of two processes
        storing one key, the later replaces the earlier's equal result); no-op when
        disabled. A cache that cannot take the file raises a clear error (see the class)."""
        if not self.enabled or key is None:
            return None
        state = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        header = {_META_KEY: json.dumps(dict(meta), sort_keys=True, default=str)}
        return write_safetensors(
            self.path(section, key), state, header, what="result cache", fix=_FIX
        )

    def get_or_compute(
        self,
        section: str,
        key: str | None,
        compute: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping]],
        *,
        expect: Collection[str] = (),
        valid: Callable[[dict[str, torch.Tensor], dict], bool] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """The cached result under ``key`` (``expect`` and ``valid`` as in :meth:`load`),
        or ``compute()``'s, stored for next time. The cache is checked writable before
        ``compute`` runs, so a read-only cache fails at once, not after the work."""
        hit = self.load(section, key, expect=expect, valid=valid)
        if hit is not None:
            return hit
        if key is not None:
            self.check_writable()
        tensors, meta = compute()
        self.store(section, key, tensors, meta)
        return dict(tensors), dict(meta)

    def clear(self, section: str | None = None) -> int:
        """Delete cached results (of one section, or all); returns how many files were removed.
        Only this cache's own ``*.safetensors`` entries are deleted, and only inside the
        root: ``section`` must be a plain name (``ValueError`` otherwise), and a section folder
        that is a link to elsewhere is refused (or skipped, when clearing all kinds)."""
        root = self.root.resolve()
        if section is not None:
            directories = [self.root / _plain_name(section, "section")]
            if directories[0].resolve().parent != root:
                raise ValueError(
                    f"The cache section {section!r} is a link to {directories[0].resolve()}, outside "
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
    """The cache in ``cache_dir("results")`` (``$WORKBENCH_CACHE_DIR/results``, by default
    in the user cache folder), disabled when ``$WORKBENCH_CACHE`` is
    ``off``/``0``/``false``/``no``."""
    enabled = os.environ.get("WORKBENCH_CACHE", "on").strip().lower() not in _DISABLED
    return ResultCache(cache_dir("results"), enabled=enabled)


def resolve_cache(cache: ResultCache | bool) -> ResultCache:
    """The cache a cached computation uses: ``True`` the default one (``$WORKBENCH_CACHE_DIR``),
    ``False`` none (every lookup misses, nothing is written), or the given cache."""
    if cache is True:
        return default_cache()
    if cache is False or cache is None:
        return ResultCache(enabled=False)
    if not isinstance(cache, ResultCache):
        raise TypeError(
            f"cache must be True, False or a workbench.ResultCache, got {cache!r} "
            f"({type(cache).__name__}): pass cache=False to compute without the cache (or "
            "set $WORKBENCH_CACHE=off), or ResultCache(folder) for a cache of your own."
        )
    return cache
