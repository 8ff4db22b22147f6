"""Weight-space merging: interpolation, N-model averaging, and the statistics corrections
that merged networks need: BatchNorm reset (RESET) and REPAIR.

Every public function returns a new model; inputs are never modified. The functions
ending in ``_`` work in place on a model the caller owns (the evaluation loops use them
to reuse one working model instead of copying per point).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from workbench.data import DataLike, batches
from workbench.device import model_device
from workbench.evaluation import eval_mode, forward_checked
from workbench.graph import LayerPoint, PermutationSpec, resolve_spec

__all__ = [
    "average",
    "channel_moments",
    "check_compatible",
    "has_batchnorm",
    "interpolate",
    "load_interpolation_",
    "load_weighted_average_",
    "repair",
    "repair_",
    "repair_points",
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
    if alpha == 0:
        return load_weighted_average_(target, [state_a], [1.0])
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


class _ChannelMoments:
    """Running per-channel mean and variance of a layer's outputs (float64 across batches)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = 0
        self.sum: torch.Tensor | float = 0.0
        self.sum_sq: torch.Tensor | float = 0.0

    def add(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one batch; return its own mean and (biased) variance, shaped to broadcast."""
        dims = [d for d in range(output.ndim) if d != self.dim % output.ndim]
        var, mean = torch.var_mean(output, dims, correction=0, keepdim=True)
        n = output.numel() // output.shape[self.dim]
        flat_mean, flat_var = mean.flatten().double(), var.flatten().double()
        self.count += n
        self.sum = self.sum + n * flat_mean
        self.sum_sq = self.sum_sq + n * (flat_var + flat_mean.square())
        return mean, var

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, standard deviation) over everything added."""
        if self.count == 0:
            raise ValueError("Cannot measure statistics on an empty dataset.")
        mean = self.sum / self.count
        return mean, (self.sum_sq / self.count - mean.square()).clamp_min(0).sqrt()


def reset_bn_(
    model: nn.Module,
    data: DataLike,
    batch_size: int = 500,
    max_batches: int | None = None,
    progress: bool = False,
) -> nn.Module:
    """RESET in place: recompute every BatchNorm layer's running mean and variance as the
    exact statistics of its inputs over all of ``data`` (every example weighs the same,
    whatever the batch sizes), with BatchNorm normalizing by batch statistics during the
    pass and all other layers in eval mode.

    Needed after merging because the running statistics of an average of networks are not
    the statistics of the averaged network's activations (Jordan et al., 2023).
    """
    bn_layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not bn_layers:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layers, so there are no statistics to "
            "reset; use bn=None, or REPAIR for networks without BatchNorm."
        )
    moments = {layer: _ChannelMoments(dim=1) for layer in bn_layers}

    def record(layer: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        moments[layer].add(inputs[0])

    handles = [layer.register_forward_pre_hook(record) for layer in bn_layers]
    device = model_device(model)
    try:
        with eval_mode(model), torch.no_grad():
            for layer in bn_layers:
                layer.reset_running_stats()  # the batch counter then counts this pass
                layer.train()  # downstream layers see batch-normalized inputs
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
    with torch.no_grad():
        for layer, moment in moments.items():
            mean, std = moment.result()  # raises on an empty dataset
            n = moment.count
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(std.square() * n / max(n - 1, 1))  # unbiased, as BN keeps
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


Moments = dict[str, tuple[torch.Tensor, torch.Tensor]]  # point -> (mean, std), float64


def _run_with_hooks(
    model: nn.Module,
    hooks: dict[str, Callable],
    data: DataLike,
    batch_size: int,
    max_batches: int | None,
    shuffle: bool = False,
) -> None:
    """One eval-mode pass over ``data`` with forward hooks on the named modules (batches in
    a fixed random order with ``shuffle``, for passes that use per-batch statistics)."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(fn) for name, fn in hooks.items()]
    device = model_device(model)
    try:
        with eval_mode(model), torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            for inputs, _ in batches(data, batch_size, shuffle, generator, max_batches):
                forward_checked(model, inputs.to(device))
    finally:
        for handle in handles:
            handle.remove()


def repair_points(spec: PermutationSpec) -> list[LayerPoint]:
    """Where REPAIR corrects statistics: every conv/linear layer's normalized output (the
    BatchNorm after it, else the layer), except the layers that produce the logits."""
    return [p for p in spec.layers if not p.final]


def channel_moments(
    model: nn.Module,
    data: DataLike,
    points: Sequence[LayerPoint],
    batch_size: int = 500,
    max_batches: int | None = None,
) -> Moments:
    """Per-channel mean and standard deviation of each point's output, in eval mode."""
    moments = {p.point: _ChannelMoments(p.dim) for p in points}

    def record(name: str) -> Callable:
        def hook(_module, _inputs, output) -> None:
            moments[name].add(output)

        return hook

    _run_with_hooks(model, {n: record(n) for n in moments}, data, batch_size, max_batches)
    return {name: m.result() for name, m in moments.items()}


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
    moments = {p.point: _ChannelMoments(p.dim) for p in foldable}

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

    _run_with_hooks(
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
