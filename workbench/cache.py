"""On-disk cache of analysis results, keyed by the content of the models and data they used.

A result (an LMC curve, a loss plane, a feature visualization, dataset exemplars) is a
handful of tensors plus JSON-able settings. It is stored as one safetensors file whose name
is a hash of the *content* of every model and dataset involved and of the settings, so a
re-run with the same inputs is a file read, and a model that changed (retrained, aligned,
edited in place) can never hit a stale entry: its fingerprint changed with its weights.

Data given as an arbitrary ``DataLoader`` has no content we can hash cheaply; results
computed on it are simply not cached (:func:`data_fingerprint` returns ``None``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from workbench.checkpoints import write_safetensors
from workbench.data import TensorImageDataset, default_data_root

__all__ = ["ResultCache", "data_fingerprint", "default_cache", "fingerprint"]

_META_KEY = "workbench-result"
_DISABLED = ("0", "off", "false", "no")


def _hash_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    if tensor.numel():
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint(model: nn.Module) -> str:
    """A short content hash of a model: its class, its state dict (names, dtypes, shapes and
    bytes of every parameter and buffer). Two models with equal fingerprints compute the
    same function; any change to any weight changes it."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()[:20]


def data_fingerprint(data: Any) -> str | None:
    """A content hash of an in-memory dataset (images, targets, normalization), or ``None``
    for data whose content cannot be hashed without reading all of it (loaders, lazy
    datasets): results on such data are recomputed, never served from the cache."""
    if isinstance(data, TensorImageDataset):
        digest = hashlib.sha256(data.info.name.encode())
        _hash_tensor(digest, "images", data.images)
        _hash_tensor(digest, "targets", data.targets)
        return digest.hexdigest()[:20]
    if isinstance(data, Dataset) and hasattr(data, "tensors"):
        digest = hashlib.sha256(b"TensorDataset")
        for i, tensor in enumerate(data.tensors):
            _hash_tensor(digest, str(i), tensor)
        return digest.hexdigest()[:20]
    return None


class ResultCache:
    """A directory of cached results, one subdirectory per kind of result.

    ``enabled=False`` (or ``$WORKBENCH_CACHE=off``) turns every lookup into a miss and every
    store into a no-op, for timing runs and for users who want nothing written.
    """

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else default_data_root() / "results"
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"ResultCache(root={str(self.root)!r}, enabled={self.enabled})"

    @staticmethod
    def key(**parts: Any) -> str | None:
        """The key of a result from everything that determines it (fingerprints, settings);
        ``None`` if any part is ``None`` (an unhashable input: do not cache)."""
        if any(value is None for value in parts.values()):
            return None
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.safetensors"

    def load(self, kind: str, key: str | None) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The stored tensors and settings of a result, or ``None`` on a miss. A damaged
        entry (an interrupted write by another tool, a truncated file) counts as a miss."""
        if not self.enabled or key is None:
            return None
        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(path)
            with safe_open(path, framework="pt") as handle:
                meta = json.loads((handle.metadata() or {})[_META_KEY])
        except (OSError, ValueError, KeyError, SafetensorError):
            return None
        return tensors, meta

    def store(
        self, kind: str, key: str | None, tensors: Mapping[str, torch.Tensor], meta: Mapping
    ) -> Path | None:
        """Write a result atomically (a reader never sees half a file); no-op when disabled."""
        if not self.enabled or key is None:
            return None
        state = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        header = json.dumps(dict(meta), sort_keys=True, default=str)
        return write_safetensors(self.path(kind, key), state, {_META_KEY: header})

    def get_or_compute(
        self,
        kind: str,
        key: str | None,
        compute: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping]],
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """The cached result under ``key``, or ``compute()``'s, stored for next time."""
        hit = self.load(kind, key)
        if hit is not None:
            return hit
        tensors, meta = compute()
        self.store(kind, key, tensors, meta)
        return dict(tensors), dict(meta)

    def clear(self, kind: str | None = None) -> int:
        """Delete cached results (of one kind, or all); returns how many files were removed.
        Only this cache's own ``*.safetensors`` entries are deleted."""
        kinds = [self.root / kind] if kind else [p for p in self.root.glob("*") if p.is_dir()]
        removed = 0
        for directory in kinds:
            for entry in directory.glob("*.safetensors"):
                entry.unlink()
                removed += 1
            if directory.is_dir() and not any(directory.iterdir()):
                shutil.rmtree(directory)
        return removed


def default_cache() -> ResultCache:
    """The cache under ``$WORKBENCH_CACHE_DIR`` (default ``data/cache/results``), disabled
    when ``$WORKBENCH_CACHE`` is ``off``/``0``/``false``/``no``."""
    root = os.environ.get("WORKBENCH_CACHE_DIR")
    enabled = os.environ.get("WORKBENCH_CACHE", "on").strip().lower() not in _DISABLED
    return ResultCache(root, enabled=enabled)
