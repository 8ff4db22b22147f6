"""Spawning (Frankle, Dziugaite, Roy and Carbin, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis", ICML 2020): one trunk trained for ``spawn_step`` steps, then the
members forked from it and trained on with different data orders. The barrier between the
members against ``spawn_step`` is their instability analysis: it falls to zero once the
trunk has settled into a basin (:func:`workbench.analysis.instability.spawn_sweep`)."""

from __future__ import annotations

import torch
from torch import nn

from workbench.populations.registry import register_population
from workbench.validation import check_int


def _check(options: dict) -> None:
    check_int("spawn_step", options["spawn_step"], minimum=0)


@register_population("spawn", options={"spawn_step": 0}, check=_check, trunk="spawn_step")
def spawn(
    members: list[nn.Module], step: int, generator: torch.Generator, *, spawn_step: int
) -> None:
    """Members forked from one trunk after ``spawn_step`` steps (step 0: one shared
    initialization), then trained apart on their own data orders; never mixed."""
