"""Populations: N models trained together in one loop, kept in one basin or not.

:func:`train_population` trains ``n`` members of one architecture side by side, each with
the SGD step, schedule and augmentation of :func:`workbench.train_model` and its own seed,
and lets a registered recipe act on all of them after every step
(:mod:`.registry`; one file per recipe): ``"independent"`` (no mixing), ``"wash"``
(:mod:`.wash`, parameter shuffling), ``"papa"`` (:mod:`.papa`, a pull toward the
average) and ``"spawn"`` (:mod:`.spawn`, members forked from one trunk). Instead of
aligning models after training, WASH and PAPA keep them together while they train; the
LMC tools, :func:`~workbench.merge_many` and :func:`~workbench.ensemble` then measure
how well that worked. :func:`train_populations` trains several populations (one per
seed) as jobs on any executor (:mod:`workbench.jobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import torch
from torch import nn

from workbench.cache import default_cache, describe
from workbench.data import DataLike
from workbench.evaluation import check_fits
from workbench.jobs import Entry, Job, check_executor, run_jobs
from workbench.modules import default_device
from workbench.populations import independent, papa, spawn, wash  # noqa: F401  (registers)
from workbench.populations.loop import spread, train_members
from workbench.populations.registry import (
    PopulationMethod,
    get_population_method,
    population_methods,
    register_population,
)
from workbench.populations.result import Population
from workbench.training import Augment, _steps_per_epoch, seeded_model
from workbench.training_health import collected, report
from workbench.validation import check_int, check_number

__all__ = [
    "Population",
    "PopulationMethod",
    "get_population_method",
    "population_methods",
    "register_population",
    "spread",
    "train_population",
    "train_populations",
]


def _model_kwargs(data: DataLike, model_kwargs: dict | None) -> dict[str, Any]:
    """Classes and input channels from the dataset's info when it has one."""
    info = getattr(data, "info", None)
    found = {"in_channels": info.in_channels, "num_classes": info.num_classes} if info else {}
    return {**found, **(model_kwargs or {})}


def train_population(
    architecture: str,
    n: int,
    *,
    data: DataLike,
    method: str = "independent",
    epochs: int,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    batch_size: int = 128,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: Augment | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    **options: Any,
) -> Population:
    """Train ``n`` members of ``architecture`` together on ``data`` by the recipe
    ``method`` (:func:`population_methods`), one SGD step each in turn, in one process.

    Member ``i`` has seed ``seed + i``: its initialization (except under ``"spawn"``,
    whose members share the trunk's, drawn from ``seed``), its batch order and its
    augmentation draws, exactly as ``train_model(..., seed=seed + i)``; so the
    ``"independent"`` members are the models ``train_models(architecture, range(seed,
    seed + n), ...)`` gives. ``options`` are the recipe's (an unknown one is an error that
    lists them): ``"wash"``: ``shuffle_probability=0.001``, ``layer_schedule="linear"``;
    ``"papa"``: ``strength=0.01``, ``period=10``; ``"spawn"``: ``spawn_step=0``.
    ``model_kwargs`` go to :func:`~workbench.create_model` (classes and input channels
    default to the dataset's); the training arguments are :func:`~workbench.train_model`'s.
    Deterministic for a seed (on the CPU, with the same thread count). Save the members
    with :meth:`Population.write_checkpoints`.
    """
    found = get_population_method(method)
    options = found.resolve(options)
    check_int("n", n, minimum=1)
    check_int("epochs", epochs, minimum=1)
    check_int("seed", seed)
    check_int("batch_size", batch_size, minimum=1)
    check_number("lr", lr, low=0.0, low_inclusive=False)
    check_number("momentum", momentum, low=0.0, high=1.0)
    check_number("weight_decay", weight_decay, low=0.0)
    kwargs = _model_kwargs(data, model_kwargs)
    check_fits(seeded_model(architecture, seed, kwargs), data, "training data")
    steps = _steps_per_epoch(data, batch_size)
    trunk = found.trunk_steps(options)
    if trunk is not None and trunk > epochs * steps:
        raise ValueError(
            f"spawn_step={trunk} is past the end of training ({epochs} epochs of {steps} "
            f"steps = {epochs * steps} steps); pass a step in 0..{epochs * steps}."
        )
    settings = {
        "total_steps": epochs * steps,
        "steps_per_epoch": steps,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
    }
    seeds = [seed + i for i in range(n)]
    device = torch.device(device) if device is not None else default_device()
    members, spreads, seconds = train_members(
        architecture, kwargs, seeds, data, found, options, settings, augment, device, progress
    )
    info = getattr(data, "info", None)
    recipe = {
        "architecture": architecture,
        "model_kwargs": kwargs,
        "n": n,
        "method": found.name,
        "options": options,
        "seed": seed,
        "epochs": epochs,
        "training": {k: v for k, v in settings.items() if k != "total_steps"},
        "augment": describe(augment) if augment is not None else None,
        "dataset": getattr(info, "name", None),
    }
    return Population(found.name, members, seeds, recipe, spreads, seconds)


def _population_job(architecture: str, n: int, seed: int, arguments: dict) -> Entry:
    """One population of :func:`train_populations` as a job: every member's state, and
    the rest of the result as settings."""
    with collected() as unlearned:
        found = train_population(architecture, n, seed=seed, progress=False, **arguments)
    tensors = {
        f"{i}/{name}": tensor
        for i, m in enumerate(found.members)
        for name, tensor in m.state_dict().items()
    }
    meta = {
        "seeds": found.seeds,
        "recipe": found.recipe,
        "spread": found.spread,
        "seconds": found.seconds,
        "did_not_learn": unlearned,
    }
    return tensors, meta


def _population(method: str, n: int, entry: Entry) -> Population:
    """A :class:`Population` back from its cached entry."""
    tensors, meta = entry
    report(meta.get("did_not_learn", []))
    recipe = meta["recipe"]
    members: list[nn.Module] = []
    for i in range(n):
        model = seeded_model(recipe["architecture"], recipe["seed"], recipe["model_kwargs"])
        prefix = f"{i}/"
        model.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        members.append(model.eval())
    return Population(method, members, meta["seeds"], recipe, meta["spread"], meta["seconds"])


def train_populations(
    architecture: str,
    n: int,
    *,
    seeds: Sequence[int],
    data: DataLike,
    method: str = "independent",
    executor: Executor | None = None,
    progress: bool = True,
    **arguments: Any,
) -> list[Population]:
    """One :func:`train_population` per seed in ``seeds`` (the population's ``seed``),
    each a job (:mod:`workbench.jobs`): run here one after another, or on ``executor``
    (any ``concurrent.futures.Executor``: a process pool, a submitit executor). Each
    population is stored in the result cache, keyed by its recipe and the data's
    content, so a rerun trains only what is missing. ``arguments``: those of
    :func:`train_population` (``epochs`` is required), the recipe's options included."""
    check_executor(executor)
    found = get_population_method(method)
    found.resolve({k: v for k, v in arguments.items() if k in found.options})
    if len(seeds) == 0:
        raise ValueError("Give at least one seed, e.g. seeds=[0, 1, 2].")
    arguments = {**arguments, "data": data, "method": found.name}
    store = default_cache()
    described = {k: v for k, v in arguments.items() if k not in ("data", "device")}
    jobs = [
        Job(
            "populations",
            store.key(
                architecture=architecture,
                n=n,
                seed=seed,
                data=data,
                recipe=described,
            ),
            _population_job,
            {"architecture": architecture, "n": n, "seed": seed, "arguments": arguments},
        )
        for seed in seeds
    ]
    entries = run_jobs(
        jobs, executor=executor, cache=store, progress=progress, desc=f"{method} populations"
    )
    return [_population(found.name, n, entry) for entry in entries]
