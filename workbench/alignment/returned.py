"""What a registered method returns, checked before anything uses it.

A method registered in a notebook is new code: a merge that diverged (NaN weights), one
that builds a model of another size, a merger that drops a model. Used as a result, any of
them would be a silently wrong number, or a raw error deep inside the next step. The
registry runs these checks on every merge-kind method's model and every merger's models
(the maps of the pairwise methods are checked by
:func:`~workbench.graph.transforms.check_permutation` and
:func:`~workbench.graph.transforms.check_linear_maps`); each error names the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.batching import batches
from workbench.data import DataLike
from workbench.modules import check_compatible, eval_mode, model_device
from workbench.validation import check_logits

__all__ = ["Merged", "check_aligned_models", "check_merged_model", "check_model"]


@dataclass(frozen=True)
class Merged:
    """What a ``kind="merge"`` method returns: the merged ``model`` (before BatchNorm
    handling) and the method's own ``report`` (ZipIt!'s :class:`ZipReport`, NP Merge's
    validation curves and coefficients; ``None`` if it has none)."""

    model: nn.Module
    report: Any = None


def check_model(where: str, like: nn.Module, model: Any, same_structure: bool = True) -> None:
    """Refuse a model a method returned unless it has finite parameters and buffers and
    (``same_structure``) ``like``'s architecture (state-dict keys and shapes); ``where``
    names the method."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where} returned {type(model).__name__} where a model was expected.")
    try:
        if same_structure:
            check_compatible([like, model])
    except ValueError as error:
        raise ValueError(
            f"{where} returned a model of another architecture than the models it was given "
            f"(model 1 below is the returned one): {error}"
        ) from error
    broken = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if broken:
        raise ValueError(
            f"{where} returned a model with NaN or infinite values in {broken[:3]}"
            f"{' and more' if len(broken) > 3 else ''}: its merge diverged or is wrong."
        )


def check_merged_model(
    where: str, models: Sequence[nn.Module], merged: Any, data: DataLike | None
) -> None:
    """A merge-kind method's model: finite, and of the models' architecture, or (another
    structure, such as a partial zip's shared trunk and heads) scoring the same classes
    as they do on a batch of ``data``."""
    if not isinstance(merged, nn.Module):
        raise TypeError(
            f"{where} returned {type(merged).__name__}; a merge method must return the merged "
            "nn.Module."
        )
    same_structure = merged.state_dict().keys() == models[0].state_dict().keys()
    check_model(where, models[0], merged, same_structure)
    if data is None:
        return
    inputs = next(iter(batches(data, batch_size=2, max_batches=1)))[0]
    with eval_mode(models[0]), eval_mode(merged), torch.no_grad():
        expected = check_logits(models[0](inputs.to(model_device(models[0]))), models[0]).shape
        found = check_logits(merged(inputs.to(model_device(merged))), merged)
    if found.shape != expected or not torch.isfinite(found).all():
        raise ValueError(
            f"{where} returned a model whose outputs have shape {tuple(found.shape)}"
            f"{' with NaN or infinite values' if found.shape == expected else ''} "
            f"where the merged models give {tuple(expected)}: it must score the same classes."
        )


def check_aligned_models(where: str, models: Sequence[nn.Module], found: Any) -> None:
    """An N-model merger's result: one model per input, each of their architecture and
    finite."""
    if not isinstance(found, Sequence) or len(found) != len(models):
        size = f" of {len(found)}" if isinstance(found, Sequence) else ""
        raise TypeError(
            f"{where} returned {type(found).__name__}{size}; a merger must return the "
            f"{len(models)} models it was given, in one neuron order."
        )
    for model in found:
        check_model(where, models[0], model)
