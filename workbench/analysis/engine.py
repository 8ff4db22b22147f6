"""Evaluating many points of weight space with one working model.

An interpolation curve of K points or a loss plane of R x R points is a list of weighted
combinations of a few state dicts. Every point is loaded into one working copy of the
first model (no copy per point), optionally corrected (BatchNorm RESET, REPAIR) and then
evaluated on every split under ``torch.inference_mode``.

RESET (:func:`workbench.merging.reset_bn_`) and REPAIR (:func:`workbench.merging.repair_`)
cost one eval-mode pass per corrected layer and point, each stopped at its layer (RESET of
the quickstart CNN: 2.4 times an evaluation pass, against 1.1 for the papers' one
train-mode pass); their results, like the evaluation's, do not depend on ``batch_size``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.batching import choose_batch_size, on_device
from workbench.data import DataLike
from workbench.evaluation import check_fits, evaluate
from workbench.merging.renorm import Correction
from workbench.modules import load_weighted_average_, model_device
from workbench.validation import check_models

__all__ = [
    "check_data",
    "evaluate_points",
]


def check_data(
    model: nn.Module, eval_data: Mapping[str, DataLike], data: DataLike | None = None
) -> None:
    """Fail before any work if a split of ``eval_data``, or the training ``data`` that the
    BatchNorm handling fits on, cannot give correct numbers for ``model``: it is empty,
    does not fit the model, or (checked whole for in-memory data, batch by batch
    otherwise: :func:`workbench.validation.check_data`) holds non-finite inputs or (for
    ``eval_data``) labels the model does not score."""
    if not eval_data:
        raise ValueError("eval_data must name at least one split, e.g. {'test': test_set}.")
    check_models(model)
    for split, split_data in eval_data.items():
        check_fits(model, split_data, f"{split!r} data", labels=True)
    if data is not None:  # BatchNorm statistics need inputs only
        check_fits(model, data, "data", labels=False)


def evaluate_points(
    model: nn.Module,
    states: Sequence[Mapping[str, torch.Tensor]],
    points: Sequence[Sequence[float]],
    data: Mapping[str, DataLike],
    *,
    correct: Correction | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "points",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loss and accuracy on every split of ``data`` at each point ``sum_i w[i] * states[i]``.

    ``points`` lists the weights of each point (one per state). A point whose weights are
    one 1 and zeros is an exact copy of that state. ``model`` (the architecture, device and
    integer buffers) is copied once; ``correct(work, weights)`` may fix the loaded model's
    statistics before it is evaluated. Returns ``split -> (losses, accuracies)``.
    """
    device = model_device(model)
    splits = {split: on_device(d, device) for split, d in data.items()}
    sizes = {s: choose_batch_size([model], d, batch_size=batch_size) for s, d in splits.items()}
    work = copy.deepcopy(model)
    losses = {split: [] for split in splits}
    accuracies = {split: [] for split in splits}
    for weights in tqdm(points, desc=desc, disable=not progress, leave=False):
        used = [(s, w) for s, w in zip(states, weights, strict=True) if w != 0]
        if not used:  # the origin: all weights zero
            used = [(states[0], 0.0)]
        load_weighted_average_(work, [s for s, _ in used], [w for _, w in used])
        if correct is not None:
            correct(work, weights)
        for split, split_data in splits.items():
            metrics = evaluate(work, eval_data=split_data, batch_size=sizes[split])
            losses[split].append(metrics.loss)
            accuracies[split].append(metrics.accuracy)
    return {split: (np.array(losses[split]), np.array(accuracies[split])) for split in splits}
