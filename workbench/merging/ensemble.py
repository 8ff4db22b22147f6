"""Output ensembles: the ceiling a merge of the same models is measured against.

An ensemble of N models runs all N and averages their outputs, at N times the cost of one
model; a merge is one model. Two ways of averaging are common in the merging literature:

* ``"logits"``: the mean of the models' logits (what a merged model could at best mimic);
* ``"probabilities"``: the mean of their softmax probabilities. The ensemble returns the
  log of that mean, so that cross-entropy on its output (:func:`workbench.evaluate`) is
  the loss of the averaged probabilities and its argmax is the ensemble's prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from workbench.modules import clone, model_device
from workbench.validation import check_choice, check_logits, check_models
from workbench.vocabulary import keyword_only
from workbench.zoo import ARCHITECTURE_ATTR

__all__ = ["COMBINE", "Ensemble", "ensemble"]

COMBINE = ("logits", "probabilities")


class Ensemble(nn.Module):
    """The output ensemble of ``models`` (see :func:`ensemble`); ``.models`` holds them,
    ``.combine`` is ``"logits"`` or ``"probabilities"``."""

    def __init__(self, models: Sequence[nn.Module], combine: str = "logits") -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.combine = combine

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = []
        for index, model in enumerate(self.models):
            logits = check_logits(model(inputs.to(model_device(model))), model)
            if outputs and logits.shape != outputs[0].shape:
                raise ValueError(
                    f"Model {index} of the ensemble returns outputs of shape "
                    f"{tuple(logits.shape)} but model 0 returns {tuple(outputs[0].shape)}: "
                    "ensembled models must score the same classes."
                )
            outputs.append(logits.to(inputs.device))
        stacked = torch.stack(outputs)
        if self.combine == "logits":
            return stacked.mean(0)
        # log(mean_i softmax_i), computed stably in log space
        return torch.logsumexp(torch.log_softmax(stacked, dim=-1), dim=0) - math.log(len(outputs))

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}"


def _num_classes(model: nn.Module) -> int | None:
    """The number of classes recorded by :func:`workbench.create_model`, if any."""
    architecture = getattr(model, ARCHITECTURE_ATTR, None)
    return architecture.get("num_classes") if isinstance(architecture, dict) else None


@keyword_only(("combine",))
def ensemble(
    models: Sequence[nn.Module],
    *,
    combine: str = "logits",
) -> Ensemble:
    """An ``nn.Module`` whose forward runs every one of ``models`` and averages them:
    the mean logits (``combine="logits"``), or the log of the mean softmax probabilities
    (``"probabilities"``; cross-entropy on it is the loss of the averaged probabilities).

    The models are copied (so the ensemble is returned in eval mode, as every model the
    workbench returns, and the models given are not modified, nor their modes). They may
    differ in architecture but must score the same classes: models built for different
    numbers of classes are refused here when :func:`workbench.create_model` recorded it,
    and by the forward pass otherwise. Each model runs on its own device; the output is on
    the inputs' device. One model's logit ensemble returns its logits exactly.
    """
    check_choice("combine", combine, COMBINE)
    if isinstance(models, nn.Module):
        raise TypeError("models must be a sequence of models, e.g. [model_a, model_b].")
    models = list(models)
    if not models:
        raise ValueError("An ensemble needs at least one model; got an empty sequence.")
    for index, model in enumerate(models):
        check_models([model], name=f"model {index}")  # one by one: architectures may differ
    widths = [_num_classes(m) for m in models]
    if None not in widths and len(set(widths)) > 1:
        raise ValueError(
            f"The models score different numbers of classes ({widths}); an ensemble "
            "averages outputs class by class, so all must be built for the same classes."
        )
    return Ensemble([clone(model) for model in models], combine).eval()
