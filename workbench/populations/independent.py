"""Independent members: no mixing, the baseline every other recipe is read against."""

from __future__ import annotations

import torch
from torch import nn

from workbench.populations.registry import register_population


@register_population("independent")
def independent(members: list[nn.Module], step: int, generator: torch.Generator) -> None:
    """Members trained side by side and never mixed: each is the model
    :func:`workbench.train_models` trains from its seed."""
