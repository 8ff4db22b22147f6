"""Instability analysis (Frankle, Dziugaite, Roy and Carbin, "Linear Mode Connectivity and
the Lottery Ticket Hypothesis", ICML 2020): how early in training does SGD settle into one
basin? For each spawn step ``k``, one trunk is trained for ``k`` steps and ``n`` members
are forked from it and trained to the end on different data orders
(``train_population(..., method="spawn", spawn_step=k)``); the barrier between the
members, without any alignment, is measured. It is high for ``k = 0`` (the same
initialization, different noise) and falls to zero after some ``k``: from there on, the
members stay linearly connected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from tqdm.auto import tqdm

from workbench.analysis.lmc import pairwise_curves
from workbench.analysis.sweeps import Sweep
from workbench.cache import ResultCache
from workbench.data import DataLike
from workbench.populations import train_populations
from workbench.validation import check_int

__all__ = ["spawn_sweep"]


def spawn_sweep(
    architecture: str,
    spawn_steps: Sequence[int],
    *,
    data: DataLike,
    eval_data: DataLike,
    epochs: int,
    n: int = 2,
    seed: int = 0,
    bn: str | None = "reset",
    alphas: int | Sequence[float] = 11,
    executor: Executor | None = None,
    progress: bool = True,
    cache: ResultCache | bool = True,
    **arguments: Any,
) -> Sweep:
    """The members' barrier against the spawn step: for each ``k`` in ``spawn_steps``, a
    spawned population of ``n`` members (:func:`~workbench.train_population`,
    ``method="spawn"``, trained on ``data``; ``arguments`` are its training arguments)
    and the curves between every pair of members on ``eval_data``, unaligned, with ``bn``
    handling on ``data``.

    Returns a :class:`~workbench.analysis.sweeps.Sweep` over ``"spawn_step"``: its
    ``table`` has one row per (k, pair), ``plot()`` draws the barrier against ``k`` (the
    figure of Frankle et al.). Populations and curves are cached; ``executor`` runs the
    pairs' curves, and each population's training, as jobs there (:mod:`workbench.jobs`).
    """
    steps = [check_int("spawn_step", k, minimum=0) for k in spawn_steps]
    if not steps:
        raise ValueError("Give at least one spawn step, e.g. spawn_steps=[0, 10, 100].")
    check_int("n", n, minimum=2)
    curves = []
    for k in tqdm(steps, desc="spawn steps", disable=not progress):
        (population,) = train_populations(
            architecture, n, seeds=[seed], data=data, method="spawn", spawn_step=k,
            epochs=epochs, executor=executor, progress=False, **arguments,
        )  # fmt: skip
        found = pairwise_curves(
            population.members, eval_data={"test": eval_data}, alphas=alphas, bn=bn, method="none", data=data,
            progress=False, cache=cache, executor=executor,
        )  # fmt: skip
        curves += [dataclasses.replace(c, settings={**c.settings, "spawn_step": k}) for c in found]
    settings = {"architecture": architecture, "n": n, "seed": seed, "epochs": epochs, "bn": bn}
    return Sweep("spawn_step", curves, {**settings, "alphas": alphas, "methods": ["none"]})
