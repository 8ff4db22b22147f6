"""``bn="repair"``: REPAIR (Jordan et al., 2023, "REPAIR: REnormalizing Permuted
Activations for Interpolation Repair"): every channel of the merged network gets the
interpolated mean and standard deviation of its endpoints' matching channels.

Like RESET (:mod:`~workbench.merging.renorm.reset`), it corrects one layer at a time, in
the order the forward pass reaches them
(:func:`~workbench.alignment.calibration.calibrate_in_order`): an eval-mode pass, stopped
at the layer, measures the exact moments of its outputs over all of the data with every
earlier layer already corrected, and the layer is corrected before the next one is
measured. The result is the fixed point the correction aims at (in eval mode, every
corrected layer sees exactly the statistics it was given), and it does not depend on the
batch size: a batch of one example gives the result of the whole dataset at once.

The papers' versions take one pass with every layer normalized by *its batch's*
statistics, so what a layer measures depends, through the layers before it, on the batch
size. On the shipped pair (statistics on mnist-5k train, midpoints of naive and of
weight-matched interpolation) that one-pass RESET is off the exact statistics by up to
1.8e-3 of a layer's largest value at batch size 32 (8.8e-3 for one channel), 1.2e-3 at 64
and 1.1e-4 at 500, with the same test accuracy at 500 (43.8% and 97.0%); the exact version
agrees with itself across batch sizes (1, 7, 32, 64, 500, all) to 3e-7. It costs one
partial pass per corrected layer: RESET of the quickstart CNN (3 BatchNorm layers) takes
2.4 times an evaluation pass instead of 1.1, of a ResNet-20 (21) 10.7 times instead of 0.9.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workbench.alignment.calibration import calibrate_in_order
from workbench.alignment.moments import ChannelMoments, Moments
from workbench.alignment.statistics import channel_moments
from workbench.batching import on_device
from workbench.data import DataLike
from workbench.graph import LayerPoint, PermutationSpec, resolve_spec
from workbench.merging.renorm.registry import Correction, register_bn
from workbench.modules import check_compatible, clone, model_device
from workbench.vocabulary import keyword_only

__all__ = ["repair", "repair_", "repair_points"]


def repair_points(spec: PermutationSpec) -> list[LayerPoint]:
    """Where REPAIR corrects statistics: every conv/linear layer's normalized output (the
    BatchNorm after it, else the layer), except the layers that produce the logits."""
    return [p for p in spec.layers if not p.final]


@keyword_only(
    ("targets", "weights", "data", "layer_points", "batch_size", "max_batches"),
    renamed={"points": "layer_points"},
)
def repair_(
    model: nn.Module,
    *,
    targets: Sequence[Moments],
    weights: Sequence[float],
    data: DataLike,
    layer_points: Sequence[LayerPoint],
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> nn.Module:
    """REPAIR in place: rescale the channels of every one of ``layer_points`` so that their mean and standard
    deviation over ``data`` are the ``weights``-average of the endpoints' (``targets``).

    Point by point in forward order, an eval-mode pass measures the point's statistics
    with every earlier point already corrected, and the affine correction is folded into
    the point's own parameters (BatchNorm weight and bias, or the layer's weight rows and
    bias), so the repaired model's statistics equal the targets exactly, whatever the batch
    size (dead channels, which never vary, are only shifted).
    """
    modules = dict(model.named_modules())
    foldable = {p.point: p.dim for p in layer_points if _affine_of(modules[p.point]) is not None}
    target = {
        name: (
            sum(w * t[name][0] for w, t in zip(weights, targets, strict=True)),
            sum(w * t[name][1] for w, t in zip(weights, targets, strict=True)),
        )
        for name in foldable
    }

    def fold(name: str, moments: ChannelMoments) -> None:
        mean, std = moments.result()
        mean_t, std_t = target[name]
        # A channel that never varies (a dead unit) cannot be rescaled, only shifted.
        scale = torch.where(std > 1e-6 * std.max(), std_t / std.clamp_min(1e-30), 1.0)
        shift = mean_t - scale * mean
        weight, bias = _affine_of(modules[name])
        view = [-1] + [1] * (weight.ndim - 1)
        weight.mul_(scale.to(weight.dtype).view(view))
        bias.mul_(scale.to(bias.dtype)).add_(shift.to(bias.dtype))

    calibrate_in_order(
        model,
        foldable,
        data,
        fold,
        of="output",
        batch_size=batch_size,
        max_batches=max_batches,
        desc="REPAIR",
    )
    return model


def _affine_of(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (weight, bias) through which a point's output can be rescaled per channel."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is None or bias is None:
        return None
    return weight, bias


@keyword_only(("alpha", "data", "spec"))
def repair(
    merged: nn.Module,
    endpoints: Sequence[nn.Module],
    *,
    alpha: float | Sequence[float],
    data: DataLike,
    spec: PermutationSpec | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> nn.Module:
    """REPAIR (Jordan et al., 2023): a copy of ``merged`` whose every channel has the
    interpolated mean and standard deviation of the ``endpoints``' matching channels.

    ``merged`` is ``(1 - alpha) A + alpha B`` of two aligned ``endpoints`` (or, for N
    endpoints, ``alpha`` is the list of their weights). Works with and without BatchNorm.
    Exact and independent of the batch size (see :func:`repair_`). Layers without a bias
    (and not followed by BatchNorm) cannot take the correction and are left as they are.
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
    correct = repair_correction(
        endpoints, data, spec=spec, batch_size=batch_size, max_batches=max_batches
    )
    repaired = clone(merged)
    correct(repaired, weights)
    return repaired


@register_bn("repair", label="REPAIR", linestyle=":", needs_endpoints=True, keeps_endpoints=True)
def repair_correction(endpoints, data, *, spec, batch_size, max_batches) -> Correction:
    """REPAIR: every channel's mean and standard deviation become the weighted average of
    the endpoints' (measured once here), for networks with or without BatchNorm."""
    data = on_device(data, model_device(endpoints[0]))
    points = repair_points(resolve_spec(endpoints[0], spec, data=data))
    targets = [channel_moments(m, data, points, batch_size, max_batches) for m in endpoints]

    def correct(work: nn.Module, weights: Sequence[float]) -> None:
        if min(weights) < 0:  # a target deviation would come out negative
            raise ValueError(
                "REPAIR's targets interpolate the endpoints' statistics and exist only for "
                f"weights >= 0, got {list(weights)}: use alpha in [0, 1], or bn='reset'."
            )
        repair_(
            work,
            targets=targets,
            weights=weights,
            data=data,
            layer_points=points,
            batch_size=batch_size,
            max_batches=max_batches,
        )

    return correct
