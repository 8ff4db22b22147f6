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
import dataclasses
import importlib.metadata
import json
import os
import platform
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from workbench.data import DatasetInfo, dataset_info, datasets
from workbench.files import refuse_existing, write_safetensors
from workbench.zoo import ARCHITECTURE_ATTR, create_model

__all__ = [
    "CheckpointError",
    "checkpoint_metadata",
    "load_checkpoint",
    "load_quickstart_models",
    "read_metadata",
    "recorded_dataset_info",
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


def recorded_dataset_info(model: nn.Module) -> DatasetInfo | None:
    """What ``model``'s checkpoint says about its inputs: the :class:`DatasetInfo` recorded
    in it (``"dataset_info"``), else that of its ``"dataset"`` when that name is registered
    here, else ``None`` (no checkpoint, an unknown dataset, an unreadable record). Never
    raises: whoever asks (a spec's example input, feature visualization) has defaults."""
    metadata = getattr(model, _METADATA_ATTR, {})
    recorded = metadata.get("dataset_info")
    if isinstance(recorded, dict):
        with contextlib.suppress(TypeError, ValueError):
            return DatasetInfo(**recorded)
    name = metadata.get("dataset")
    return dataset_info(name) if isinstance(name, str) and name in datasets() else None


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
    ``metrics``. A registered ``dataset`` also records its :class:`DatasetInfo` (classes,
    image size, channels, normalization) as ``dataset_info`` unless given, so that the
    checkpoint describes its inputs where that name is unknown. An existing file is kept unless ``overwrite=True``, also against another
    process saving to the same path at the same time (exactly one of them succeeds, the
    other gets ``FileExistsError``); the write is atomic, so an interrupted save never
    leaves a half-written checkpoint behind (:mod:`workbench.files`).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"Checkpoint path must end in .safetensors, got {path}.")
    if not overwrite:
        refuse_existing(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _check_finite(state, path)
    architecture = metadata.pop("architecture", getattr(model, ARCHITECTURE_ATTR, None))
    info = metadata.get("dataset_info")
    if info is None and isinstance(metadata.get("dataset"), str):
        info = dataset_info(metadata["dataset"]) if metadata["dataset"] in datasets() else None
    if isinstance(info, DatasetInfo):
        info = dataclasses.asdict(info)
    if info is not None:
        metadata["dataset_info"] = info
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
    return write_safetensors(
        path, state, {_METADATA_KEY: header}, overwrite=overwrite, what="checkpoint folder"
    )


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
    """``path`` if it is a readable regular file; otherwise an error that says what is
    there instead: nothing, a broken link, a folder, something unreadable."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(
                f"{path} is a broken symbolic link: it points to {os.readlink(path)}, which "
                "does not exist. Fix the link, or pass the checkpoint's real path."
            ) from None
        raise FileNotFoundError(f"No checkpoint at {path}.") from None
    except NotADirectoryError:
        raise FileNotFoundError(
            f"No checkpoint at {path}: a part of that path is a file, not a folder."
        ) from None
    except PermissionError:
        raise PermissionError(
            f"Checkpoint {path} cannot be reached: permission denied on a folder above it. "
            "Ask its owner for access (chmod o+x on the folders), or copy it somewhere you "
            "can read."
        ) from None
    if stat.S_ISDIR(mode):
        found: list[str] = []
        with contextlib.suppress(OSError):
            found = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pt"))
        raise IsADirectoryError(
            f"{path} is a folder, not a checkpoint file; pass the path of a .safetensors or "
            f".pt file{f' in it, e.g. {path / found[0]}' if found else ''}."
        )
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path} is not a regular file (a device, pipe or socket).")
    try:
        path.open("rb").close()
    except PermissionError:
        raise PermissionError(
            f"Checkpoint {path} cannot be read: permission denied. Make it readable "
            f"(chmod u+r {path}) or load it as the user who owns it."
        ) from None
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


def _listed(items: list[str], limit: int = 5, sep: str = ", ") -> str:
    return sep.join(items[:limit]) + (" ..." if len(items) > limit else "")


def _check_statistics(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse running statistics no training can produce: a negative running variance
    (BatchNorm would take the square root of a negative number: NaN outputs) or a negative
    count of batches tracked. Such a file was corrupted or edited."""
    bad = []
    for name, _ in model.named_modules():
        prefix = f"{name}." if name else ""
        var = state.get(prefix + "running_var")
        if var is not None and (var < 0).any():
            bad.append(
                f"{prefix}running_var has {int((var < 0).sum())} negative entries "
                f"(min {float(var.min()):.3g})"
            )
        count = state.get(prefix + "num_batches_tracked")
        if count is not None and (count < 0).any():
            bad.append(f"{prefix}num_batches_tracked is {count.min().item()}")
    if bad:
        raise CheckpointError(
            f"{path} holds impossible BatchNorm statistics: {_listed(bad, 3, '; ')}. A variance "
            "or a batch count cannot be negative: the file is corrupt or was edited. Re-save "
            "it from the trained model, or fix the statistics in the file (e.g. recompute "
            "them with wb.reset_bn after loading the weights into a fresh model)."
        )


def _fit(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> nn.Module:
    """Load ``state`` into ``model`` after checking that it fits exactly: the same keys,
    shapes and dtypes (``load_state_dict`` would cast floats stored as integers, or half
    precision into single, without a word) and possible BatchNorm statistics."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = [k for k in expected if k in state]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in common
        if state[k].shape != expected[k].shape
    ]
    dtypes = [
        f"{k}: file {state[k].dtype} vs model {expected[k].dtype}"
        for k in common
        if state[k].dtype != expected[k].dtype
    ]
    if missing or unexpected or wrong or dtypes:
        parts = []
        if missing:
            parts.append(f"missing {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listed(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes ({_listed(wrong, 3, '; ')})")
        if dtypes:
            parts.append(
                f"other dtypes ({_listed(dtypes, 3, '; ')}), which loading would cast "
                "silently; convert the file's tensors if that is intended, or pass "
                "model=<a model in the file's dtypes> (e.g. model.half())"
            )
        raise CheckpointError(f"{path} does not fit {what}: {'; '.join(parts)}.")
    _check_statistics(model, state, path)
    model.load_state_dict(state)
    return model


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a checkpoint into a new model, in eval mode, on the CPU.

    A workbench ``.safetensors`` checkpoint rebuilds its model from the metadata alone.
    Otherwise (a ``.pt``/``.pth`` state dict, or safetensors without metadata) pass
    ``model``: a model of the right architecture, which is copied, not modified.
    :func:`checkpoint_metadata` returns the loaded model's metadata.

    Nothing is loaded approximately: a file whose tensors differ from the model's in key,
    shape or dtype (no silent cast), that holds NaN/Inf or impossible BatchNorm statistics
    (a negative variance or batch count) raises :class:`CheckpointError`; a path that is
    missing, a broken link, a folder or unreadable raises the matching ``OSError``.
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
