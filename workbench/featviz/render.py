"""Feature visualization: the input image that most excites a channel, for many channels
at once, built on lucent's image parameterizations, transforms and objectives.

lucent's ``render_vis`` optimizes one objective over one batch; asking it for a whole
layer means one run per channel. Here every requested channel gets its own image in one
batch, and the objective is lucent's ``channel`` objective of each image for its own
channel, summed: one forward and backward pass per step for all of them. Each image starts
from noise seeded by ``(seed, channel)`` and Adam updates each pixel on its own, so the
image of a channel does not depend on which other channels share its batch (and can be
cached per channel).

Defaults for small images. lucent's transforms are tuned for 224-pixel ImageNet inputs
(padding 12, jitter 8, scales up to 1.2, rotations of 10 degrees): on a 28x28 or 32x32
input they move the image by a third of its width each step and the optimum washes out
into a blur. ``small_image_transforms`` keeps the same ideas at the scale of small inputs:
constant padding of 2, jitter of 2 pixels, scales 0.95-1.05, rotations of 5 degrees, a last
1-pixel jitter; the image is then resized back to the model's input size, so models with a
fixed-size flatten work too. A learning rate of 0.2 and 128 steps give stable pictures on
the quickstart models: 97-100% of the 256-step quality, where the former 0.05 needed all 256
steps; 64 steps give about 90% of it, for interactive use (benchmarks/featviz_quality.py).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

with warnings.catch_warnings():  # the kornia that lucent pins calls torch.jit.script
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script.*")
    from lucent.optvis import objectives, param, transform
from torch import nn
from tqdm.auto import tqdm

from workbench import validation
from workbench.cache import ResultCache, resolve_cache
from workbench.checkpoints import recorded_dataset_info
from workbench.featviz.points import (
    ObservationPoint,
    check_point,
    observation_point,
    resolve_layer,
    run_to,
)
from workbench.modules import eval_mode, model_device
from workbench.vocabulary import keyword_only

__all__ = [
    "channel_count",
    "check_channels",
    "input_format",
    "render_channels",
    "resolve_layer",
    "small_image_transforms",
    "unit_objective",
]

LAYOUT_RTOL = 1e-4  # a layout's values may differ by float32 sums in another order, not more


def small_image_transforms() -> list:
    """lucent transforms scaled for 28-32 pixel inputs (see the module docstring)."""
    return [
        transform.pad(2, mode="constant", constant_value=0.5),
        transform.jitter(2),
        transform.random_scale([0.95, 0.975, 1.0, 1.025, 1.05]),
        transform.random_rotate(list(range(-5, 6))),
        transform.jitter(2),
    ]


def channel_count(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def check_channels(model: nn.Module, layer: str, channels: int | Sequence[int]) -> list[int]:
    """``channels`` as a list, each checked against the layer's channel count."""
    count = channel_count(resolve_layer(model, layer=layer))
    return validation.check_channels(channels, count, f"channels of layer {layer!r}")


def input_format(model: nn.Module, size: int | None = None) -> tuple[int, int, tuple, tuple]:
    """``(in_channels, size, mean, std)`` of the images ``model`` expects: channels from
    its first conv, size and normalization from its checkpoint's record when known
    (else 28 pixels for one channel, 32 for three, and no normalization)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(
            f"{type(model).__name__} has no Conv2d: feature visualization needs images."
        )
    in_channels = first.in_channels
    info = recorded_dataset_info(model)
    mean, std = (0.0,) * in_channels, (1.0,) * in_channels
    default = 28 if in_channels == 1 else 32
    if info is not None and info.in_channels == in_channels:
        mean, std, default = info.mean, info.std, info.image_size
    return in_channels, size or default, tuple(mean), tuple(std)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch and numpy's global generator (lucent's transforms draw from it) inside
    the block only; the caller's random state is restored afterwards."""
    state = np.random.get_state()  # noqa: NPY002 (lucent uses the legacy global generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)  # noqa: NPY002
        try:
            yield
        finally:
            np.random.set_state(state)  # noqa: NPY002


def _optimize(
    model: nn.Module,
    where: ObservationPoint,
    channels: list[int],
    steps: int,
    seed: int,
    size: int,
    lr: float,
    progress: bool,
) -> torch.Tensor:
    in_channels, size, mean, std = input_format(model, size)
    device = model_device(model)
    with _seeded(seed):
        params, image_f = param.image(
            size,
            batch=len(channels),
            channels=1 if in_channels == 1 else None,
            decorrelate=in_channels == 3,
            fft=True,
        )
        spectrum = params[0]
        with torch.no_grad():
            for i, channel in enumerate(channels):  # each image from its own noise
                generator = torch.Generator().manual_seed(seed * 100_003 + channel)
                noise = torch.randn(spectrum.shape[1:], generator=generator) * 0.01
                spectrum[i].copy_(noise.to(spectrum.device))
        spectrum.data = spectrum.data.to(device)
        lucent_name = where.layer.replace(".", "_")
        objective = sum(objectives.channel(lucent_name, c, batch=i) for i, c in enumerate(channels))
        transforms = small_image_transforms()
        shift = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        scale = torch.tensor(std, device=device).view(1, -1, 1, 1)
        optimizer = torch.optim.Adam([spectrum], lr=lr)
        # lucent objectives read a layer's output through a function of its name; the
        # forward pass stops at the observation point, where the objective is read
        desc, target = f"render {where.layer}", _gradient_point(where)
        shape = (len(channels), in_channels, size, size)
        probe = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        layout = _layout(model, target, probe)
        for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            optimizer.zero_grad()
            image = image_f()
            for t in transforms:
                image = t(image)
            image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
            out = run_to(model, target, layout((image - shift) / scale))
            objective(lambda name, out=out: out).backward()
            optimizer.step()
        with torch.no_grad():
            return image_f().detach().permute(0, 2, 3, 1).cpu()


def _same(images: torch.Tensor) -> torch.Tensor:
    return images


def _channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last)


def _layout(
    model: nn.Module, target: ObservationPoint, probe: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """How to lay out the images a render feeds ``model``: channels last on the CPU,
    where oneDNN's convolutions and their backward pass run fastest in it (1.2-1.35x
    faster per render step on a 3-channel ResNet-20 at 32 px and ResNet-18 at 224 px, the
    same on a one-channel 28 px CNN; benchmarks/featviz_speed.py), as given elsewhere. The
    values are the same; only the order of the sums inside a convolution may differ. The
    forward pass to ``target`` is tried once on ``probe`` in both layouts: a model that
    cannot take channels last (one that reshapes an activation with ``.view``), or whose
    values differ in it by more than :data:`LAYOUT_RTOL` (code that reads an activation's
    memory as NCHW, as a custom kernel may), gets the images as they are."""
    if probe.device.type != "cpu":
        return _same
    try:
        with torch.no_grad():
            fast = run_to(model, target, _channels_last(probe))
    except RuntimeError:  # strides the model's code relies on: it runs as it always did
        return _same
    with torch.no_grad():
        plain = run_to(model, target, probe).double()
    error = torch.linalg.vector_norm(fast.double() - plain) / torch.linalg.vector_norm(plain)
    return _channels_last if error <= LAYOUT_RTOL else _same


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for an image that gets none through the ReLU (every unit below
    zero: a render stuck where it started), is passed to the inputs below zero where it
    would raise them (Lucid's redirected ReLU gradient, Olah et al., 2017). Values are a
    plain ReLU's, so the objective is unchanged; only a dead start can move."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        plain = torch.where(x > 0, grad, 0.0)
        # the loss is minimized: a negative gradient raises the input
        redirected = torch.where((x <= 0) & (grad > 0), 0.0, grad)
        dead = plain.flatten(1).abs().amax(1) == 0
        return torch.where(dead.view(-1, *[1] * (x.ndim - 1)), redirected, plain)


def _gradient_point(where: ObservationPoint) -> ObservationPoint:
    """Where a render reads its objective: at a ReLU, its input through the redirected
    ReLU (same values, a gradient out of dead starts)."""
    if where.relu_input is None:
        return where
    return ObservationPoint(where.layer, where.point, where.relu_input, _RedirectedReLU.apply)


def _one_image(size: int) -> Callable[[dict[str, torch.Tensor], dict], bool]:
    """A cache entry's check: one (size, size, C) float image, else a miss."""

    def valid(found: dict[str, torch.Tensor], _meta: dict) -> bool:
        image = found["image"]
        return image.is_floating_point() and image.ndim == 3 and image.shape[:2] == (size, size)

    return valid


@keyword_only(("layer", "channels", "steps", "seed"))
def render_channels(
    model: nn.Module,
    *,
    layer: str,
    channels: int | Sequence[int],
    steps: int = 128,
    seed: int = 0,
    size: int | None = None,
    lr: float = 0.2,
    point: str = "output",
    cache: ResultCache | bool = True,
    progress: bool = True,
) -> torch.Tensor:
    """One feature visualization per channel of ``layer``: images (N, H, W, C) in [0, 1],
    in the model's own input format (grayscale or RGB, its size, normalized by its
    dataset's statistics before entering it).

    All uncached channels are optimized together in one batch. ``seed`` makes each image
    reproducible. Results are cached on disk per channel, keyed by the model's content
    and every setting (``cache=False`` to bypass, or a :class:`ResultCache`). The model is
    not modified (eval mode during the run; its mode and gradients flags are restored).

    ``point``: where the channel's activation is maximized (:data:`~workbench.featviz.
    points.POINTS`): the layer's ``"output"``, after its normalization (``"norm"``) or
    after its nonlinearity (``"relu"``), as :func:`~workbench.featviz.points.
    observation_point` finds them.
    """
    validation.check_models(model)
    channels = check_channels(model, layer, channels)
    where = observation_point(model, layer=layer, point=check_point(point))
    validation.check_int("steps", steps, minimum=1)
    validation.check_int("seed", seed)
    validation.check_number("lr", lr, low=0.0, low_inclusive=False)
    if size is not None:
        validation.check_int("size", size, minimum=1)
    store = resolve_cache(cache)
    _, size, mean, std = input_format(model, size)
    # the input normalization (from the checkpoint's dataset) shapes the images too
    settings = {"layer": layer, "steps": steps, "seed": seed, "size": size, "lr": lr}
    settings.update(mean=list(mean), std=list(std))
    if point != "output":  # the keys of renders at the layer's output stay as they were
        settings["point"] = point
        settings["relu_gradient"] = "redirected"
    model_key = store.key(model=model, version=1, **settings)
    keys = {c: model_key and store.key(render=model_key, channel=c) for c in channels}
    images: dict[int, torch.Tensor] = {}
    for channel in channels:
        hit = store.load("render", keys[channel], expect=("image",), valid=_one_image(size))
        if hit is not None:
            images[channel] = hit[0]["image"]
    missing = [c for c in dict.fromkeys(channels) if c not in images]
    if missing:
        if model_key is not None:
            store.check_writable()  # before the optimization, not when storing its result
        flags = [p.requires_grad for p in model.parameters()]
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            with eval_mode(model):
                rendered = _optimize(model, where, missing, steps, seed, size, lr, progress)
        finally:
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
        for channel, image in zip(missing, rendered, strict=True):
            images[channel] = image
            store.store("render", keys[channel], {"image": image}, {"channel": channel, **settings})
    return torch.stack([images[c] for c in channels])


def unit_objective(
    model: nn.Module,
    *,
    layer: str,
    images: torch.Tensor,
    channels: Sequence[int],
    point: str = "output",
    batch_size: int = 256,
) -> torch.Tensor:
    """The objective a render maximizes, of image ``i`` (N, H, W, C in [0, 1], as
    :func:`render_channels` returns them) for channel ``channels[i]``: the channel's mean
    activation over positions at ``point``, with the images normalized as
    :func:`render_channels` normalizes them (no random transforms; eval mode)."""
    channels = check_channels(model, layer, list(channels))
    if images.ndim != 4 or len(images) != len(channels):
        raise ValueError(
            f"images must be (N, H, W, C) with one image per channel: got shape "
            f"{tuple(images.shape)} for {len(channels)} channels."
        )
    where = observation_point(model, layer=layer, point=check_point(point))
    _, _, mean, std = input_format(model)
    shift, scale = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))
    device = model_device(model)
    found: list[torch.Tensor] = []
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(images), batch_size):
            part = images[start : start + batch_size].permute(0, 3, 1, 2)
            out = run_to(model, where, ((part - shift) / scale).to(device))
            rows = torch.arange(len(out), device=device)
            index = torch.tensor(channels[start : start + batch_size], device=device)
            found.append(out[rows, index].float().reshape(len(out), -1).mean(1).cpu())
    return torch.cat(found)
