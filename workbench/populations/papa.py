"""PAPA (Jolicoeur-Martineau, Gervais, Fatras, Zhang and Lacoste-Julien, "PopulAtion
Parameter Averaging (PAPA)", TMLR 2024): every ``period`` steps, each member is pulled
toward the population's average, ``w_i <- (1 - strength) w_i + strength * mean_j w_j``.

Defaults from the paper and its authors' code (PAPA, formerly "PAPA-gradual"): the
exponential moving average toward the average with weight ``0.99`` every 10 SGD steps,
that is ``strength=0.01``, ``period=10``. The pull applies to the parameters; the BatchNorm
running statistics follow each member's own weights (RESET recomputes the average's).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.populations.registry import parameter_groups, register_population
from workbench.validation import check_int, check_number


def _check(options: dict) -> None:
    check_number("strength", options["strength"], low=0.0, high=1.0)
    check_int("period", options["period"], minimum=1)


@register_population("papa", options={"strength": 0.01, "period": 10}, check=_check)
def papa(
    members: list[nn.Module],
    step: int,
    generator: torch.Generator,
    *,
    strength: float,
    period: int,
) -> None:
    """PAPA: every ``period`` steps, each member moved a fraction ``strength`` of the way
    toward the population's average."""
    if (step + 1) % period:
        return
    with torch.no_grad():
        for tensors in parameter_groups(members):
            mean = torch.stack(tensors).mean(0)
            for tensor in tensors:
                tensor.lerp_(mean, strength)
