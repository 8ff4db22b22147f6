"""The one loop every population recipe runs in: the members step in lockstep, each with
the optimizer, schedule, batch order and augmentation draws of
:func:`workbench.train_model` for its seed (:func:`~workbench.training.train_step`), and
the recipe mixes them after every step.

So the members of ``method="independent"`` are exactly the models
:func:`workbench.train_models` trains from the same seeds, and every other recipe differs
from them by its mixing alone.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.batching import batches
from workbench.data import DataLike
from workbench.populations.registry import PopulationMethod
from workbench.training import Augment, seeded_model, sgd_one_cycle, train_step
from workbench.training_health import LastEpoch


@dataclass
class _Member:
    """A member while it trains: its model, optimizer and schedule, its random stream
    (batch order, augmentation) and its endless sequence of batches."""

    model: nn.Module
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    generator: torch.Generator
    batches: Iterator


def _stream(data: DataLike, batch_size: int, generator: torch.Generator) -> Iterator:
    """Epoch after epoch of shuffled batches, each epoch's order drawn from ``generator``
    when it starts (as :func:`~workbench.train_model` draws it)."""
    while True:
        yield from batches(data, batch_size, shuffle=True, generator=generator)


def _member(model: nn.Module, seed: int, data: DataLike, settings: dict) -> _Member:
    optimizer, scheduler = sgd_one_cycle(
        model, settings["total_steps"], settings["lr"], settings["momentum"],
        settings["weight_decay"],
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    return _Member(
        model, optimizer, scheduler, generator, _stream(data, settings["batch_size"], generator)
    )


def _fork(trunk: _Member, seed: int, data: DataLike, settings: dict) -> _Member:
    """A copy of ``trunk`` (weights, momentum, place in the schedule) that goes on with
    its own data order, drawn from ``seed``."""
    member = _member(copy.deepcopy(trunk.model), seed, data, settings)
    member.optimizer.load_state_dict(trunk.optimizer.state_dict())
    member.scheduler.load_state_dict(trunk.scheduler.state_dict())
    return member


def spread(models: list[nn.Module]) -> float:
    """How far apart the members are: the mean distance between two members' parameter
    vectors, relative to the mean length of one (0 for identical members)."""
    vectors = [
        torch.cat([p.detach().reshape(-1).float().cpu() for p in m.parameters()]) for m in models
    ]
    if len(vectors) < 2:
        return 0.0
    pairs = itertools.combinations(vectors, 2)
    distance = sum(float((a - b).norm()) for a, b in pairs) / math.comb(len(vectors), 2)
    return distance / (sum(float(v.norm()) for v in vectors) / len(vectors))


def train_members(
    architecture: str,
    model_kwargs: dict[str, Any],
    seeds: list[int],
    data: DataLike,
    method: PopulationMethod,
    options: dict[str, Any],
    settings: dict[str, Any],
    augment: Augment | None,
    device: torch.device,
    progress: bool,
) -> tuple[list[nn.Module], list[float], float]:
    """The trained members, the spread after each epoch and the seconds it took.
    ``settings``: ``total_steps``, ``steps_per_epoch``, ``batch_size``, ``lr``,
    ``momentum``, ``weight_decay``."""
    started = time.perf_counter()
    trunk_steps = method.trunk_steps(options)
    starts = seeds[:1] if trunk_steps is not None else seeds
    members = [
        _member(
            seeded_model(architecture, seed, model_kwargs).to(device).train(), seed, data, settings
        )
        for seed in starts
    ]
    population = torch.Generator().manual_seed(2**32 + seeds[0])  # the recipe's own draws
    total = settings["total_steps"]
    spreads = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seeds[0])
        bar = tqdm(
            total=total, desc=f"{method.name} x{len(seeds)}", disable=not progress, leave=False
        )
        owners, lasts = starts, []  # the members' seeds, and their epochs' losses
        for step in range(total + 1):
            if step == trunk_steps:
                members = [_fork(members[0], seed, data, settings) for seed in seeds]
                owners, lasts = seeds, [LastEpoch() for _ in seeds]
            if step == total:
                break
            if step % settings["steps_per_epoch"] == 0 or not lasts:
                lasts = [LastEpoch() for _ in members]
            for member, last in zip(members, lasts, strict=True):
                inputs, labels = next(member.batches)
                loss = train_step(
                    member.model,
                    member.optimizer,
                    member.scheduler,
                    inputs,
                    labels,
                    augment,
                    member.generator,
                )
                last.add(loss, labels)
            if len(members) > 1:
                method.mix([m.model for m in members], step, population, **options)
            if (step + 1) % settings["steps_per_epoch"] == 0:
                spreads.append(spread([m.model for m in members]))
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.close()
    for seed, last in zip(owners, lasts, strict=True):
        last.check(f"{method.name} member seed={seed}", settings["lr"])
    return [m.model.eval() for m in members], spreads, time.perf_counter() - started
