"""Measuring BatchNorm statistics and correcting a network one layer at a time, in the
order the forward pass reaches them (:func:`calibrate_in_order`), and RESET on it
(:func:`reset_bn`: every BatchNorm layer's running statistics become the exact statistics
of its inputs). REPAIR (:mod:`workbench.merging.renorm`) corrects on the same engine.

An eval-mode pass measures the exact moments of a layer's inputs (RESET) or outputs
(REPAIR) over all of the data with every earlier layer already corrected, and the layer is
corrected before the next one is measured: all layers in one layer-major pass
(:mod:`workbench.alignment.layer_major`) where it fits, else a pass per layer, stopped at it. The result is the fixed point the
corrections aim at (in eval mode, every corrected layer sees exactly the statistics it was
given), and it does not depend on the batch size: a batch of one example (even on a 1x1
map, which train-mode BatchNorm refuses) gives the result of the whole dataset at once,
and an uneven last batch weighs what its examples weigh.

It lives with the alignment methods because a linear method's mapped model needs its
statistics measured (:func:`~workbench.alignment.map_model`), as much as a merge does.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from workbench.alignment.layer_major import calibrate_layer_major
from workbench.alignment.moments import ChannelMoments
from workbench.batching import batches, choose_batch_size
from workbench.data import DataLike
from workbench.evaluation import forward_checked
from workbench.modules import clone, eval_mode, model_device
from workbench.vocabulary import keyword_only

__all__ = ["calibrate_in_order", "reset_bn", "reset_bn_"]


_ORDERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[str]]] = weakref.WeakKeyDictionary()
"""model -> (what is hooked, the hooked modules) -> the order a forward pass reaches them."""


class _Reached(Exception):
    """Ends a forward pass as soon as the layer being measured has been observed."""


def _hook(module: nn.Module, of: str, fn: Callable[[torch.Tensor], None]) -> Callable:
    """Register ``fn`` on the tensor a layer reads (``of="input"``) or writes."""
    if of == "input":
        return module.register_forward_pre_hook(lambda _m, args: fn(args[0]))
    return module.register_forward_hook(lambda _m, _args, output: fn(output))


def _execution_order(
    model: nn.Module, layers: Mapping[str, nn.Module], of: str, first: torch.Tensor
) -> list[str]:
    """The names of ``layers`` in the order one forward pass of ``first`` observes them;
    a layer that runs twice in one pass has no single set of statistics and is refused."""
    calls: dict[str, int] = {}

    def counter(name: str) -> Callable[[torch.Tensor], None]:
        return lambda _t: calls.__setitem__(name, calls.get(name, 0) + 1)

    handles = [_hook(module, of, counter(name)) for name, module in layers.items()]
    try:
        with torch.inference_mode():
            forward_checked(model, first)
    finally:
        for handle in handles:
            handle.remove()
    reused = [name for name, count in calls.items() if count > 1]
    if reused:
        raise ValueError(
            f"{type(model).__name__} runs {reused[0]!r} {calls[reused[0]]} times in one "
            "forward pass; its statistics at one place depend on its own correction at "
            "another. Give every place its own module."
        )
    return list(calls)


def _known_order(
    model: nn.Module, layers: Mapping[str, nn.Module], of: str, first: torch.Tensor
) -> list[str]:
    """:func:`_execution_order`, found once per model and set of layers (the same modules)
    and remembered while the model lives: a working model that is calibrated at every point
    of a path pays for the forward pass that finds the order once. A model that later runs
    its layers in another order is still refused by the checks of every pass."""
    key = (of, tuple((name, id(module)) for name, module in layers.items()))
    known = _ORDERS.setdefault(model, {})
    if key not in known:
        known[key] = _execution_order(model, layers, of, first)
    return known[key]


def calibrate_in_order(
    model: nn.Module,
    layers: Mapping[str, int],
    data: DataLike,
    calibrate: Callable[[str, ChannelMoments], None],
    *,
    of: str,
    batch_size: int | None,
    max_batches: int | None,
    desc: str,
    progress: bool = False,
) -> None:
    """Measure and correct ``layers`` (name -> channel axis) one at a time, in the order
    the forward pass reaches them: the exact moments of the layer's input (``of="input"``)
    or output over all of ``data``, with every earlier layer already corrected;
    ``calibrate(name, moments)`` corrects it in place before the next layer is measured.
    All layers in one layer-major pass where the model traces and the data's activations
    fit the memory budget (:mod:`workbench.alignment.layer_major`), else one eval-mode
    pass over ``data`` per layer, stopped there: the same numbers either way. One batch first finds the order, once per
    model (a working model corrected at every point of a path finds it once). Layers that
    the eval-mode forward pass never runs (an auxiliary head used only in training) are
    left as they are.
    """
    modules = dict(model.named_modules())
    device = model_device(model)
    batch_size = choose_batch_size([model], data, batch_size=batch_size)
    first = next(iter(batches(data, batch_size, max_batches=1)), None)
    if first is None:
        raise ValueError(
            f"Cannot run {desc} on an empty dataset (it yielded no batches); pass data with "
            "at least one example."
        )
    with eval_mode(model):
        order = _known_order(model, {n: modules[n] for n in layers}, of, first[0].to(device))
        inputs = (x.to(device) for x, _ in batches(data, batch_size, max_batches=max_batches))
        if calibrate_layer_major(model, layers, order, inputs, calibrate, of=of):
            return
        for step, name in enumerate(tqdm(order, desc=desc, disable=not progress, leave=False)):
            moments = ChannelMoments(layers[name])

            def measure(tensor: torch.Tensor, moments: ChannelMoments = moments) -> None:
                moments.add(tensor)
                raise _Reached

            def too_early(_t: torch.Tensor, name: str = name) -> None:
                raise ValueError(
                    f"{type(model).__name__} ran its layers in another order on a later "
                    f"batch than on the first ({name!r} no longer came first); {desc} "
                    "needs a fixed order."
                )

            handles = [_hook(modules[name], of, measure)]
            handles += [_hook(modules[later], of, too_early) for later in order[step + 1 :]]
            try:
                with torch.inference_mode():
                    for inputs, _ in batches(data, batch_size, max_batches=max_batches):
                        try:
                            forward_checked(model, inputs.to(device))
                        except _Reached:
                            continue
                        raise ValueError(
                            f"{type(model).__name__} skipped {name!r} on a batch; {desc} "
                            "needs every layer it corrects to run on every example."
                        )
            finally:
                for handle in handles:
                    handle.remove()
            with torch.no_grad():
                calibrate(name, moments)


@keyword_only(("data", "batch_size", "max_batches", "progress"))
def reset_bn_(
    model: nn.Module,
    *,
    data: DataLike,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> nn.Module:
    """RESET in place: every BatchNorm layer's running mean and (unbiased) variance become
    the exact statistics of its inputs over all of ``data`` when the network runs in eval
    mode with every earlier BatchNorm layer already reset (one pass over the data in all,
    or one partial pass per layer: :func:`calibrate_in_order`).

    Independent of the batch size (a batch of one example works); ``num_batches_tracked``
    counts the batches measured. Every pass reads ``data`` again: with ``max_batches`` on a
    shuffled DataLoader each layer is measured on other examples. BatchNorm layers without
    running statistics (they always normalize by the batch) are left alone, and so are
    those the eval-mode forward pass never runs.
    """
    layers = {
        name: 1
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
    }
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layers with running statistics, so "
            "there is nothing to reset; use bn=None, or REPAIR for networks without BatchNorm."
        )
    modules = dict(model.named_modules())

    def reset(name: str, moments: ChannelMoments) -> None:
        layer = modules[name]
        layer.running_mean.copy_(moments.mean)
        layer.running_var.copy_(moments.variance(unbiased=True))
        layer.num_batches_tracked.fill_(moments.batches)

    calibrate_in_order(
        model,
        layers,
        data,
        reset,
        of="input",
        batch_size=batch_size,
        max_batches=max_batches,
        desc="reset BN",
        progress=progress,
    )
    return model


@keyword_only(("data", "batch_size", "max_batches"))
def reset_bn(
    model: nn.Module,
    *,
    data: DataLike,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> nn.Module:
    """A copy of ``model`` with BatchNorm statistics recomputed on ``data`` (RESET): the
    exact, batch-size independent statistics of :func:`reset_bn_`.

    Weights are unchanged; only running means and variances change.
    """
    return reset_bn_(clone(model), data=data, batch_size=batch_size, max_batches=max_batches)
