"""Seeded, deterministic training of classifiers, and of several models differing only by seed."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from workbench.batching import batches
from workbench.cache import ResultCache, default_cache
from workbench.data import DataLike
from workbench.evaluation import check_fits, evaluate
from workbench.jobs import Entry, Job, check_executor, run_jobs
from workbench.modules import default_device
from workbench.splits import SPLITS, partition
from workbench.training_health import LastEpoch, check_loss, collected, report
from workbench.validation import (
    check_choice,
    check_int,
    check_labels,
    check_logits,
    check_models,
    check_number,
)
from workbench.vocabulary import keyword_only
from workbench.zoo import create_model

__all__ = [
    "TrainingRun",
    "random_translate",
    "seeded_model",
    "train_model",
    "train_models",
    "training_run",
    "training_runs",
]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

SPLIT_ATTR = "workbench_split"
"""The attribute of a model trained on one part of a data split: the part's ``.partition``."""


@dataclass(frozen=True)
class TrainingRun:
    """A trained model and its final ``metrics``: ``epochs``, ``train_seconds``,
    ``train_loss``/``train_accuracy`` and, when test data was given, ``test_loss``/
    ``test_accuracy`` (what :func:`workbench.save_checkpoint` records as ``metrics=``);
    ``metadata``: further checkpoint metadata (``{"split": ...}`` for a model trained on one
    part of a data split, :func:`training_runs`), saved as
    ``save_checkpoint(run.model, path, metrics=run.metrics, **run.metadata)``."""

    model: nn.Module
    metrics: dict[str, float]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Translate:
    """Shift each image by up to ``max_shift`` pixels (zero fill); a plain object rather
    than a closure, so that a training recipe pickles to another process (executors)."""

    max_shift: int

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = images.shape
        max_shift = self.max_shift
        padded = F.pad(images, [max_shift] * 4)
        shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
        return torch.stack(
            [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts)]
        )


def random_translate(max_shift: int = 2) -> Augment:
    """An augmentation that shifts each image by up to ``max_shift`` pixels (zero fill)."""
    return _Translate(max_shift)


def _steps_per_epoch(data: DataLike, batch_size: int) -> int:
    loader_len = getattr(data, "batch_size", None) and len(data)
    return loader_len or math.ceil(len(data) / batch_size)


@keyword_only(("data", "epochs", "seed"))
def train_model(
    model: nn.Module,
    *,
    data: DataLike,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: Augment | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train a copy of ``model`` with SGD (Nesterov momentum) and a one-cycle learning rate.

    Everything random (batch order, augmentation, dropout) is drawn from ``seed``, so the
    same inputs give bit-identical weights on the same CPU with the same thread count;
    torch's global RNG is left as it was.
    ``model`` itself is not modified. Runs on ``device`` (default: GPU if present).
    :func:`training_run` also returns the final metrics. A loss that stops being finite
    raises ``FloatingPointError``; a run whose last epoch predicts no better than the label
    frequencies warns (:mod:`workbench.training_health`).
    """
    check_models(model)
    check_int("epochs", epochs, minimum=1)
    check_int("seed", seed)
    check_int("batch_size", batch_size, minimum=1)
    check_number("lr", lr, low=0.0, low_inclusive=False)
    check_number("momentum", momentum, low=0.0, high=1.0)
    check_number("weight_decay", weight_decay, low=0.0)
    check_fits(model, data, "training data")
    device = torch.device(device) if device is not None else default_device()
    model = copy.deepcopy(model).to(device)
    generator = torch.Generator().manual_seed(seed)
    total_steps = epochs * _steps_per_epoch(data, batch_size)
    optimizer, scheduler = sgd_one_cycle(model, total_steps, lr, momentum, weight_decay)
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        model.train()
        bar = tqdm(total=total_steps, desc=f"train seed={seed}", disable=not progress, leave=False)
        for epoch in range(epochs):
            last = LastEpoch()
            for inputs, labels in batches(data, batch_size, shuffle=True, generator=generator):
                loss = train_step(model, optimizer, scheduler, inputs, labels, augment, generator)
                last.add(loss, labels)
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}")
        bar.close()
    last.check(f"train_model(seed={seed})", lr)
    return model.eval()


def sgd_one_cycle(
    model: nn.Module, total_steps: int, lr: float, momentum: float, weight_decay: float
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.OneCycleLR]:
    """The optimizer and schedule of every workbench training: SGD with Nesterov momentum
    and a one-cycle learning rate (a quarter of the steps up to ``lr``, then linearly down)."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True
    )
    # OneCycleLR divides by zero when pct_start * total_steps == 1 (a 4-step run).
    pct_start = 0.25 if total_steps != 4 else 0.5
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=pct_start, anneal_strategy="linear"
    )
    return optimizer, scheduler


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.OneCycleLR,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    augment: Augment | None,
    generator: torch.Generator,
) -> float:
    """One SGD step of ``model`` (in place, in train mode) on a batch, augmented with
    ``generator``'s draws; returns the batch loss. The one step shared by :func:`train_model`
    and the population recipes (:mod:`workbench.populations`)."""
    device = next(model.parameters()).device
    if augment is not None:
        inputs = augment(inputs, generator)
    logits = check_logits(model(inputs.to(device)), model)
    labels = check_labels(labels, logits.shape[1], count=len(logits))
    loss = F.cross_entropy(logits, labels.to(device))
    optimizer.zero_grad(set_to_none=True)
    value = loss.item()
    check_loss(value, scheduler.last_epoch, optimizer.param_groups[0]["lr"])
    loss.backward()
    optimizer.step()
    if scheduler.last_epoch < scheduler.total_steps:
        scheduler.step()
    return value


@keyword_only(("data", "epochs", "seed"), renamed={"test_data": "eval_data"})
def training_run(
    model: nn.Module,
    *,
    data: DataLike,
    epochs: int,
    seed: int,
    eval_data: DataLike | None = None,
    **train_kwargs: Any,
) -> TrainingRun:
    """:func:`train_model` (same arguments), then the trained model measured: the final
    train (and test, when ``eval_data`` is given) loss and accuracy, the number of epochs
    and the wall time of training."""
    started = time.perf_counter()
    trained = train_model(model, data=data, epochs=epochs, seed=seed, **train_kwargs)
    metrics: dict[str, float] = {"epochs": epochs, "train_seconds": time.perf_counter() - started}
    for split, split_data in (("train", data), ("test", eval_data)):
        if split_data is not None:
            result = evaluate(trained, eval_data=split_data)
            metrics[f"{split}_loss"] = result.loss
            metrics[f"{split}_accuracy"] = result.accuracy
    return TrainingRun(trained, metrics)


@keyword_only(
    renamed={"split": "partition", "alpha": "concentration", "split_seed": "partition_seed"}
)
def training_runs(
    name: str,
    seeds: Sequence[int],
    data: DataLike,
    epochs: int,
    *,
    model_kwargs: dict[str, Any] | None = None,
    partition: str | None = None,
    concentration: float = 0.5,
    partition_seed: int = 0,
    **train_kwargs: Any,
) -> list[TrainingRun]:
    """One :func:`training_run` of ``create_model(name, **model_kwargs)`` per seed; the seed
    sets both the initialization and the training randomness, so the models differ only by
    seed.

    With ``partition="disjoint"`` or ``"dirichlet"``, ``data`` (a Dataset) is first divided into
    one part per seed, ``workbench.partition(data, len(seeds), partition, concentration, partition_seed)``,
    and model ``i`` is trained on part ``i`` (its ``train_*`` metrics measured there, the
    ``test_*`` ones on all of ``eval_data``). Each run's ``metadata`` is then
    ``{"split": part.partition}`` (how, ``concentration``, seed, part ``i`` of ``n``, its classes and
    per-class counts), and the model carries the same record as ``model.workbench_split``:
    ``save_checkpoint(run.model, path, metrics=run.metrics, **run.metadata)`` writes it.
    """
    parts = _parts(data, seeds, partition, concentration, partition_seed)
    runs = []
    models = _seeded_models(name, seeds, model_kwargs, train_kwargs)
    for (seed, model), part in zip(models, parts, strict=True):
        run = training_run(model, data=part, epochs=epochs, seed=seed, **train_kwargs)
        runs.append(TrainingRun(run.model, run.metrics, _record_split(run.model, part)))
    return runs


@keyword_only(
    renamed={"split": "partition", "alpha": "concentration", "split_seed": "partition_seed"}
)
def train_models(
    name: str,
    seeds: Sequence[int],
    data: DataLike,
    epochs: int,
    *,
    model_kwargs: dict[str, Any] | None = None,
    partition: str | None = None,
    concentration: float = 0.5,
    partition_seed: int = 0,
    executor: Executor | None = None,
    **train_kwargs: Any,
) -> list[nn.Module]:
    """The trained models of :func:`training_runs` alone (no final evaluation); with
    ``partition``, model ``i`` trained on part ``i`` and carrying it as ``model.workbench_split``
    (save it with ``save_checkpoint(model, path, split=model.workbench_split)``).

    ``executor``: any ``concurrent.futures.Executor`` (a ``ProcessPoolExecutor``, a
    submitit executor) trains one model per job there (:mod:`workbench.jobs`); each
    trained model is stored in the result cache, keyed by its recipe and the data's
    content, so a rerun trains only the models that are missing."""
    check_executor(executor)
    parts = _parts(data, seeds, partition, concentration, partition_seed)
    if executor is not None:
        return _train_as_jobs(name, seeds, parts, epochs, model_kwargs, train_kwargs, executor)
    trained = []
    models = _seeded_models(name, seeds, model_kwargs, train_kwargs)
    for (seed, model), part in zip(models, parts, strict=True):
        result = train_model(model, data=part, epochs=epochs, seed=seed, **train_kwargs)
        _record_split(result, part)
        trained.append(result)
    return trained


def _parts(
    data: DataLike, seeds: Sequence[int], how: str | None, concentration: float, seed: int
) -> list[DataLike]:
    """The data each seed's model trains on: all of ``data``, or its part of the partition
    (checked before any model is built or trained)."""
    if how is None:
        return [data] * len(seeds)
    check_choice("partition", how, SPLITS)
    if len(seeds) < 2:
        raise ValueError(
            f"partition={how!r} divides the data among the models, one part per seed; got "
            f"{len(seeds)} seed(s). Pass at least 2 seeds, or partition=None."
        )
    return partition(data, len(seeds), how, concentration=concentration, seed=seed)


def _record_split(model: nn.Module, part: DataLike) -> dict[str, Any]:
    """The checkpoint metadata of a model trained on ``part``: ``{"split": record}`` for a
    part of a split (also set on the model as ``workbench_split``), else ``{}``."""
    record = getattr(part, "partition", None)
    if record is None:
        return {}
    setattr(model, SPLIT_ATTR, copy.deepcopy(record))
    return {"split": copy.deepcopy(record)}


def _seeded_models(
    name: str, seeds: Sequence[int], model_kwargs: dict | None, train_kwargs: dict
) -> Iterator[tuple[int, nn.Module]]:
    """``(seed, create_model(name))`` with the initialization drawn from the seed, behind a
    progress bar over the seeds."""
    for seed in tqdm(
        seeds, desc=f"{name} x{len(seeds)} seeds", disable=not train_kwargs.get("progress", True)
    ):
        yield seed, seeded_model(name, seed, model_kwargs)


def seeded_model(name: str, seed: int, model_kwargs: dict | None = None) -> nn.Module:
    """``create_model(name, **model_kwargs)`` initialized from ``seed`` (torch's global
    random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, **(model_kwargs or {}))


def _train_job(
    name: str, seed: int, model_kwargs: dict | None, data: DataLike, epochs: int, kwargs: dict
) -> Entry:
    """One model of :func:`train_models` as a job: its trained state, and the messages
    of a run that did not learn (a worker's warnings would not reach the caller)."""
    with collected() as unlearned:
        model = train_model(
            seeded_model(name, seed, model_kwargs), data=data, epochs=epochs, seed=seed, **kwargs
        )
    return dict(model.state_dict()), {"seed": seed, "did_not_learn": unlearned}


def _train_as_jobs(
    name: str,
    seeds: Sequence[int],
    parts: list[DataLike],
    epochs: int,
    model_kwargs: dict | None,
    train_kwargs: dict,
    executor: Executor,
) -> list[nn.Module]:
    """:func:`train_models` with one job per seed on ``executor``, cached by recipe."""
    kwargs = {**train_kwargs, "progress": False}
    recipe = {k: v for k, v in kwargs.items() if k not in ("progress", "device")}
    store: ResultCache = default_cache()
    jobs = [
        Job(
            "trained-models",
            store.key(
                architecture=name,
                model_kwargs=model_kwargs or {},
                seed=seed,
                epochs=epochs,
                data=part,
                training=recipe,
            ),
            _train_job,
            {
                "name": name,
                "seed": seed,
                "model_kwargs": model_kwargs,
                "data": part,
                "epochs": epochs,
                "kwargs": kwargs,
            },
        )
        for seed, part in zip(seeds, parts, strict=True)
    ]
    progress = train_kwargs.get("progress", True)
    entries = run_jobs(jobs, executor=executor, cache=store, progress=progress, desc=name)
    models = []
    for seed, part, (state, meta) in zip(seeds, parts, entries, strict=True):
        report(meta.get("did_not_learn", []))
        model = seeded_model(name, seed, model_kwargs)
        model.load_state_dict(state)
        _record_split(model, part)
        models.append(model.eval())
    return models
