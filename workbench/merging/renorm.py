"""Renormalizing a merged network: BatchNorm reset (RESET) and REPAIR (Jordan et al., 2023).

The running statistics of an average of networks are not the statistics of the averaged
network's activations; both corrections measure them again on data. Every public function
returns a new model; the functions ending in ``_`` work in place on a model the caller owns.

RESET costs exactly one train-mode forward pass: BatchNorm computes each batch's mean and
variance itself (``momentum=1`` makes its running buffers hold exactly the last batch's
statistics) and a forward hook folds those per-channel numbers into exact statistics over
the whole dataset (:class:`~workbench.alignment.statistics.StreamingMoments`), so every
example weighs the same, whatever the batch sizes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from workbench.alignment.statistics import (
    ChannelMoments,
    Moments,
    StreamingMoments,
    channel_moments,
    run_with_hooks,
)
from workbench.data import DataLike, batches
from workbench.evaluation import forward_checked
from workbench.graph import LayerPoint, PermutationSpec, resolve_spec
from workbench.modules import check_compatible, eval_mode, model_device

__all__ = ["repair", "repair_", "repair_points", "reset_bn", "reset_bn_"]


def reset_bn_(
    model: nn.Module,
    data: DataLike,
    batch_size: int = 500,
    max_batches: int | None = None,
    progress: bool = False,
) -> nn.Module:
    """RESET in place: every BatchNorm layer's running mean and (unbiased) variance become
    the exact statistics of its inputs over all of ``data``, with BatchNorm normalizing by
    batch statistics during the one pass and all other layers in eval mode. BatchNorm
    layers without running statistics (they always normalize by the batch) are left alone.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layers with running statistics, so "
            "there is nothing to reset; use bn=None, or REPAIR for networks without BatchNorm."
        )
    moments = {layer: StreamingMoments() for layer in layers}

    def fold(layer: _BatchNorm, inputs: tuple[torch.Tensor, ...], _output: object) -> None:
        n = inputs[0].numel() // inputs[0].shape[1]
        # BatchNorm keeps the unbiased variance of the batch it just normalized.
        moments[layer].update(n, layer.running_mean, layer.running_var.double() * (n - 1))
        layer.running_mean.zero_()  # a blown-up batch must not leak into the next one
        layer.running_var.fill_(1)

    momenta = {layer: layer.momentum for layer in layers}
    handles = [layer.register_forward_hook(fold) for layer in layers]
    device = model_device(model)
    try:
        with eval_mode(model), torch.inference_mode():
            for layer in layers:
                layer.reset_running_stats()  # the batch counter then counts this pass
                layer.momentum = 1.0
                layer.train()
            for inputs, _ in tqdm(
                batches(data, batch_size, max_batches=max_batches),
                desc="reset BN",
                disable=not progress,
                leave=False,
            ):
                forward_checked(model, inputs.to(device))
    finally:
        for handle in handles:
            handle.remove()
        for layer, momentum in momenta.items():
            layer.momentum = momentum
    with torch.no_grad():
        for layer, moment in moments.items():
            if moment.count == 0:
                raise ValueError("Cannot reset BatchNorm statistics on an empty dataset.")
            layer.running_mean.copy_(moment.mean)
            layer.running_var.copy_(moment.variance(unbiased=True))
    return model


def reset_bn(
    model: nn.Module, data: DataLike, batch_size: int = 500, max_batches: int | None = None
) -> nn.Module:
    """A copy of ``model`` with BatchNorm statistics recomputed on ``data`` (RESET).

    Weights are unchanged; only running means and variances change.
    """
    return reset_bn_(copy.deepcopy(model), data, batch_size, max_batches)


# ---------------------------------------------------------------------------------------
# REPAIR (Jordan et al., 2023)


def repair_points(spec: PermutationSpec) -> list[LayerPoint]:
    """Where REPAIR corrects statistics: every conv/linear layer's normalized output (the
    BatchNorm after it, else the layer), except the layers that produce the logits."""
    return [p for p in spec.layers if not p.final]


def repair_(
    model: nn.Module,
    targets: Sequence[Moments],
    weights: Sequence[float],
    data: DataLike,
    points: Sequence[LayerPoint],
    batch_size: int = 500,
    max_batches: int | None = None,
    eps: float = 1e-12,
) -> nn.Module:
    """REPAIR in place: rescale every point's channels so that their mean and standard
    deviation over ``data`` are the ``weights``-average of the endpoints' (``targets``).

    One pass over the data, with every point normalized by its batch statistics and
    given its target statistics (so downstream points see corrected inputs), measures each
    point's uncorrected statistics; the affine correction is then folded into the point's
    own parameters (BatchNorm weight and bias, or the layer's weight rows and bias).
    """
    modules = dict(model.named_modules())
    target = {
        p.point: (
            sum(w * t[p.point][0] for w, t in zip(weights, targets, strict=True)),
            sum(w * t[p.point][1] for w, t in zip(weights, targets, strict=True)),
        )
        for p in points
    }
    foldable = [p for p in points if _affine_of(modules[p.point]) is not None]
    moments = {p.point: ChannelMoments(p.dim) for p in foldable}

    def corrector(name: str) -> Callable:
        mean_t, std_t = target[name]
        dim = moments[name].dim

        def correct(_module, _inputs, output):
            mean, var = moments[name].add(output)
            shape = [1] * output.ndim
            shape[dim % output.ndim] = -1
            scale = std_t.to(output.dtype).view(shape) / (var + eps).sqrt()
            return (output - mean) * scale + mean_t.to(output.dtype).view(shape)

        return correct

    run_with_hooks(
        model, {n: corrector(n) for n in moments}, data, batch_size, max_batches, shuffle=True
    )
    with torch.no_grad():
        for p in foldable:
            mean, std = moments[p.point].result()
            mean_t, std_t = target[p.point]
            # A channel that never varies (a dead unit) cannot be rescaled, only shifted.
            scale = torch.where(std > 1e-6 * std.max(), std_t / std.clamp_min(1e-30), 1.0)
            shift = mean_t - scale * mean
            weight, bias = _affine_of(modules[p.point])
            view = [-1] + [1] * (weight.ndim - 1)
            weight.mul_(scale.to(weight.dtype).view(view))
            bias.mul_(scale.to(bias.dtype)).add_(shift.to(bias.dtype))
    return model


def _affine_of(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (weight, bias) through which a point's output can be rescaled per channel."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is None or bias is None:
        return None
    return weight, bias


def repair(
    merged: nn.Module,
    endpoints: Sequence[nn.Module],
    alpha: float | Sequence[float],
    data: DataLike,
    spec: PermutationSpec | None = None,
    *,
    batch_size: int = 500,
    max_batches: int | None = None,
) -> nn.Module:
    """REPAIR (Jordan et al., 2023): a copy of ``merged`` whose every channel has the
    interpolated mean and standard deviation of the ``endpoints``' matching channels.

    ``merged`` is ``(1 - alpha) A + alpha B`` of two aligned ``endpoints`` (or, for N
    endpoints, ``alpha`` is the list of their weights). Works with and without BatchNorm.
    Layers without a bias (and not followed by BatchNorm) cannot take the correction and
    are left as they are.
    """
    endpoints = list(endpoints)
    check_compatible([merged, *endpoints])
    weights = [1.0 - alpha, alpha] if isinstance(alpha, (int, float)) else list(alpha)
    if len(weights) != len(endpoints):
        raise ValueError(
            f"Got {len(endpoints)} endpoints and {len(weights)} weights; pass a float alpha "
            "for two endpoints or one weight per endpoint."
        )
    spec = resolve_spec(merged, spec, data=data)
    points = repair_points(spec)
    targets = [channel_moments(m, data, points, batch_size, max_batches) for m in endpoints]
    return repair_(copy.deepcopy(merged), targets, weights, data, points, batch_size, max_batches)
