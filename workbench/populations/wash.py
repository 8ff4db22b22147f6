"""WASH (Fournier, Nabli, Aminbeidokhti, Pedersoli, Belilovsky and Oyallon, "WASH: Train
your Ensemble with Communication-Efficient Weight Shuffling, then Average", 2024).

After every step, each entry of each parameter tensor is picked with a small probability,
and the values of the picked entries are permuted at random across the members: member
``i`` gets member ``sigma(i)``'s value of that entry. A permutation keeps the population's
average (and every other symmetric statistic) as it was, so the members stay diverse while
the exchanges keep them in one basin; the final model is their weight average.

The probability is larger in early layers, where the paper finds shuffling matters most:
with ``layer_schedule="linear"`` the ``l``-th of ``L`` layers (modules that hold
parameters, in ``model.modules()`` order, from 0) uses
``shuffle_probability * (1 - l / L)``; ``"constant"`` uses ``shuffle_probability``
everywhere. Defaults: ``shuffle_probability=0.001`` with the linear decrease (the paper's
image-classification setting; see the README for what was read where). BatchNorm running
statistics are buffers, not parameters, and are not shuffled (RESET recomputes the
average's).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.populations.registry import parameter_groups, register_population
from workbench.validation import check_choice, check_number

SCHEDULES = ("linear", "constant")


def _check(options: dict) -> None:
    check_number("shuffle_probability", options["shuffle_probability"], low=0.0, high=1.0)
    check_choice("layer_schedule", options["layer_schedule"], SCHEDULES)


def layer_probabilities(model: nn.Module, probability: float, schedule: str) -> list[float]:
    """The shuffle probability of each parameter tensor of ``model`` (``parameters()``
    order): ``probability`` scaled by its layer's place under ``schedule``."""
    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    found = []
    for index, layer in enumerate(layers):
        scale = 1.0 - index / len(layers) if schedule == "linear" else 1.0
        found += [probability * scale] * len(list(layer.parameters(recurse=False)))
    return found


def shuffle_entries_(
    tensors: tuple[torch.Tensor, ...], probability: float, generator: torch.Generator
) -> None:
    """Permute, in place, the values of a random ``probability`` fraction of the entries
    of equally shaped ``tensors`` across them (one random permutation per entry)."""
    picked = torch.rand(tensors[0].numel(), generator=generator) < probability
    where = picked.nonzero().squeeze(1)
    if len(where) == 0:
        return
    stacked = torch.stack([t.detach().reshape(-1)[where.to(t.device)] for t in tensors])
    order = torch.rand(len(where), len(tensors), generator=generator).argsort(dim=1)
    shuffled = stacked.gather(0, order.T.to(stacked.device))
    for i, tensor in enumerate(tensors):
        tensor.data.view(-1)[where.to(tensor.device)] = shuffled[i]


@register_population(
    "wash",
    options={"shuffle_probability": 0.001, "layer_schedule": "linear"},
    check=_check,
)
def wash(
    members: list[nn.Module],
    step: int,
    generator: torch.Generator,
    *,
    shuffle_probability: float,
    layer_schedule: str,
) -> None:
    """WASH: after every step, a random ``shuffle_probability`` fraction of each
    parameter's entries (more in early layers) permuted across the members."""
    probabilities = layer_probabilities(members[0], shuffle_probability, layer_schedule)
    with torch.no_grad():
        for probability, tensors in zip(probabilities, parameter_groups(members), strict=True):
            shuffle_entries_(tensors, probability, generator)
