"""Weight-space merging: interpolation, N-model averaging and BatchNorm statistics reset.

Every public function returns a new model; inputs are never modified. The functions
ending in ``_`` work in place on a model the caller owns (the evaluation loops use them
to reuse one working model instead of copying per point).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from workbench.data import DataLike, batches
from workbench.device import model_device
from workbench.evaluation import forward_checked

__all__ = [
    "average",
    "check_compatible",
    "has_batchnorm",
    "interpolate",
    "load_interpolation_",
    "load_weighted_average_",
    "reset_bn",
    "reset_bn_",
]


def check_compatible(models: Sequence[nn.Module]) -> None:
    """Raise ``ValueError`` unless all models have the same state-dict keys and shapes."""
    if len(models) < 1:
        raise ValueError("Need at least one model.")
    reference = models[0].state_dict()
    for index, model in enumerate(models[1:], start=1):
        state = model.state_dict()
        if state.keys() != reference.keys():
            only_ref = sorted(set(reference) - set(state))[:3]
            only_other = sorted(set(state) - set(reference))[:3]
            raise ValueError(
                f"Model {index} ({type(model).__name__}) has a different architecture from model 0 "
                f"({type(models[0]).__name__}): keys only in model 0: {only_ref}, only in "
                f"model {index}: {only_other}."
            )
        for key, tensor in reference.items():
            if state[key].shape != tensor.shape:
                raise ValueError(
                    f"Model {index} has {key} of shape {tuple(state[key].shape)} but model 0 has "
                    f"{tuple(tensor.shape)}: the models differ in width or number of classes."
                )


def load_weighted_average_(
    target: nn.Module, states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> nn.Module:
    """Overwrite ``target``'s floating-point parameters and buffers with
    ``sum_i weights[i] * states[i]``; integer buffers (BatchNorm's batch counter) come from
    ``states[0]``. Works in place and returns ``target``."""
    with torch.no_grad():
        for key, out in target.state_dict().items():
            if out.is_floating_point():
                out.copy_(states[0][key]).mul_(weights[0])
                for state, weight in zip(states[1:], weights[1:], strict=True):
                    out.add_(state[key].to(out.device), alpha=weight)
            else:
                out.copy_(states[0][key])
    return target


def load_interpolation_(
    target: nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    alpha: float,
) -> nn.Module:
    """Overwrite ``target`` with ``(1 - alpha) * state_a + alpha * state_b`` in place; exact
    copies of the endpoints at alpha 0 and 1."""
    if alpha == 1:
        return load_weighted_average_(target, [state_b], [1.0])
    return load_weighted_average_(target, [state_a, state_b], [1.0 - alpha, alpha])


def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """The model ``(1 - alpha) * a + alpha * b`` in weight space (buffers included).

    ``alpha`` = 0 gives a copy of ``a`` and 1 a copy of ``b``, exactly; values outside
    [0, 1] extrapolate along the line.
    """
    check_compatible([model_a, model_b])
    return load_interpolation_(
        copy.deepcopy(model_a), model_a.state_dict(), model_b.state_dict(), alpha
    )


def average(models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """The weighted average of N models' weights (uniform by default; weights sum to 1)."""
    models = list(models)
    check_compatible(models)
    if weights is None:
        weights = [1.0 / len(models)] * len(models)
    if len(weights) != len(models):
        raise ValueError(f"Got {len(weights)} weights for {len(models)} models.")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"Weights must sum to 1, got {sum(weights)}.")
    return load_weighted_average_(
        copy.deepcopy(models[0]), [m.state_dict() for m in models], list(weights)
    )


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` contains BatchNorm layers (whose statistics RESET recomputes)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def reset_bn_(
    model: nn.Module,
    data: DataLike,
    batch_size: int = 500,
    max_batches: int | None = None,
    progress: bool = False,
) -> nn.Module:
    """RESET in place: recompute every BatchNorm layer's running mean and variance as the
    exact average over ``data`` (momentum-free), with all other layers in eval mode.

    Needed after merging because the running statistics of an average of networks are not
    the statistics of the averaged network's activations (Jordan et al., 2023).
    """
    bn_layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not bn_layers:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layers, so there are no statistics to "
            "reset; use bn=None, or REPAIR for networks without BatchNorm."
        )
    momenta = [m.momentum for m in bn_layers]
    device = model_device(model)
    training = model.training
    model.eval()
    for layer in bn_layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        with torch.no_grad():
            for inputs, _ in tqdm(
                batches(data, batch_size, max_batches=max_batches),
                desc="reset BN",
                disable=not progress,
                leave=False,
            ):
                forward_checked(model, inputs.to(device))
    finally:
        for layer, momentum in zip(bn_layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(training)
    if bn_layers[0].num_batches_tracked.item() == 0:
        raise ValueError("Cannot reset BatchNorm statistics on an empty dataset.")
    return model


def reset_bn(
    model: nn.Module, data: DataLike, batch_size: int = 500, max_batches: int | None = None
) -> nn.Module:
    """A copy of ``model`` with BatchNorm statistics recomputed on ``data`` (RESET).

    Weights are unchanged; only running means and variances change.
    """
    return reset_bn_(copy.deepcopy(model), data, batch_size, max_batches)
