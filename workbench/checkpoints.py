"""Checkpoints: safetensors weights with JSON metadata that is enough to rebuild the model.

A workbench checkpoint is one ``.safetensors`` file whose header metadata holds, under
the key ``"workbench"``, a JSON document: the architecture (name and constructor
arguments), the training dataset, seed, metrics and library versions. Loading never
unpickles anything: safetensors is plain data, and ``.pt`` files are read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from workbench.zoo import ARCHITECTURE_ATTR, create_model

__all__ = [
    "CheckpointError",
    "checkpoint_metadata",
    "load_checkpoint",
    "load_quickstart_models",
    "read_metadata",
    "save_checkpoint",
    "shipped_models_dir",
]

FORMAT = "merge-workbench/1"
_METADATA_KEY = "workbench"
_METADATA_ATTR = "_workbench_checkpoint"


def checkpoint_metadata(model: nn.Module) -> dict[str, Any]:
    """The metadata of the checkpoint ``model`` was loaded from (architecture, dataset,
    seed, metrics, versions; a copy), or ``{}`` for a model that was not loaded with
    :func:`load_checkpoint`. Copies of the model (aligned, merged) keep it."""
    return copy.deepcopy(getattr(model, _METADATA_ATTR, {}))


class CheckpointError(ValueError):
    """A file is not a usable checkpoint; the message names the file and the problem."""


def _versions() -> dict[str, str]:
    import safetensors
    import torchvision

    return {
        "workbench": importlib.metadata.version("merge-workbench"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
        # CPU results are bit-reproducible for the same thread count and the same kernels:
        # torch picks its CPU kernels by instruction set, so the sums differ across CPUs.
        "torch_threads": str(torch.get_num_threads()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{path}: tensors {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} contain NaN "
            "or Inf values; the model diverged or the file is corrupt."
        )


def save_checkpoint(
    model: nn.Module, path: str | Path, *, overwrite: bool = False, **metadata: Any
) -> Path:
    """Write ``model``'s state dict to ``path`` (``.safetensors``) with JSON ``metadata``.

    The architecture recorded by :func:`workbench.create_model` is stored automatically;
    for another model pass ``architecture={"name": ..., ...}`` or load it later with
    ``load_checkpoint(path, model=...)``. Useful metadata: ``dataset``, ``seed``,
    ``metrics``. An existing file is kept unless ``overwrite=True``; the write is atomic,
    so an interrupted save never leaves a half-written checkpoint behind.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"Checkpoint path must end in .safetensors, got {path}.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _check_finite(state, path)
    architecture = metadata.pop("architecture", getattr(model, ARCHITECTURE_ATTR, None))
    document = {
        "format": FORMAT,
        "architecture": architecture,
        "versions": _versions(),
        **metadata,
    }
    try:
        header = json.dumps(document, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"Checkpoint metadata must be JSON-serializable: {exc}.") from None
    return write_safetensors(path, state, {_METADATA_KEY: header})


def write_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``state`` to ``path`` atomically: into a temporary file beside it, then renamed,
    so that a reader (or an interrupted run) never sees half a file. Folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a workbench checkpoint, without loading its tensors."""
    path = _existing(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: only .safetensors checkpoints carry metadata.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a safetensors file ({exc}).") from None
    if raw is None:
        raise CheckpointError(
            f"{path} is a safetensors file without workbench metadata; load it with "
            "load_checkpoint(path, model=<a model of the right architecture>)."
        )
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path}: its workbench metadata is not valid JSON ({exc})."
        ) from None


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    return path


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a safetensors file ({exc}).") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or unsafe files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path} could not be read as a weights-only PyTorch file ({first}). Only plain "
            "state dicts load; pickled objects are refused for safety."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors."
        )
    return state


def _fit(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> nn.Module:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(
                f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
            )
        if wrong:
            parts.append(f"wrong shapes ({'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''})")
        raise CheckpointError(f"{path} does not fit {what}: {'; '.join(parts)}.")
    model.load_state_dict(state)
    return model


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a checkpoint into a new model, in eval mode, on the CPU.

    A workbench ``.safetensors`` checkpoint rebuilds its model from the metadata alone.
    Otherwise (a ``.pt``/``.pth`` state dict, or safetensors without metadata) pass
    ``model``: a model of the right architecture, which is copied, not modified.
    :func:`checkpoint_metadata` returns the loaded model's metadata.
    """
    path = _existing(path)
    state = _read_state(path)
    _check_finite(state, path)
    if model is not None:
        target, what = copy.deepcopy(model).cpu(), f"the given {type(model).__name__}"
        metadata: dict[str, Any] = {}
        if path.suffix == ".safetensors":
            with contextlib.suppress(CheckpointError):  # plain safetensors carry none
                metadata = read_metadata(path)
    else:
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path} is a plain state dict with no architecture recorded; pass "
                "load_checkpoint(path, model=<a model of the right architecture>)."
            )
        metadata = read_metadata(path)
        arch = metadata.get("architecture")
        if not isinstance(arch, dict) or "name" not in arch:
            raise CheckpointError(
                f"{path} records no architecture; pass load_checkpoint(path, model=...)."
            )
        kwargs = {k: v for k, v in arch.items() if k != "name"}
        try:
            target = create_model(arch["name"], **kwargs)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot rebuild architecture {arch} ({exc}).") from None
        what = f"architecture {arch['name']!r} ({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    model = _fit(target, state, path, what)
    setattr(model, _METADATA_ATTR, metadata)
    return model.eval()


def shipped_models_dir() -> Path:
    """``data/models`` of the source checkout: the quickstart checkpoints."""
    return Path(__file__).resolve().parents[1] / "data" / "models"


def load_quickstart_models(seeds: tuple[int, ...] = (0, 1)) -> list[nn.Module]:
    """The shipped quickstart CNNs (mnist-5k, seeds 0..3) for the given seeds."""
    directory = shipped_models_dir()
    paths = [directory / f"cnn_mnist-5k_seed{seed}.safetensors" for seed in seeds]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Quickstart checkpoints {', '.join(missing)} are not in {directory}; regenerate "
            "them with the command in README.md (section 'Shipped checkpoints')."
        )
    return [load_checkpoint(p) for p in paths]
