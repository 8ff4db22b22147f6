"""The memory layout of the images a pass feeds a model: channels last on the CPU where
the model computes the same values from them, the layout they came in otherwise.

oneDNN's convolutions run faster on channels-last images, and the layout follows them
through the network: an evaluation pass of the quickstart CNN, ResNet-20 and ResNet-20 x4
is 1.17-1.23x faster, an LMC curve with RESET more (``benchmarks/lmc_speed.py``). The values are
the same up to the order of the sums inside a convolution. Not every model can take them:
code that reshapes an activation with ``.view`` fails on them, and code that reads an
activation's memory as NCHW (a custom kernel, ``as_strided``) computes other values
without an error. So the forward pass is tried once, on a few images, in both layouts,
and channels last is used only where it runs and its values agree within
:data:`LAYOUT_RTOL`. The decision is made before any hook is set, per pass.

Passes that train (gradients of weights) keep the layout they are given: the shipped
checkpoints are reproduced bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

__all__ = ["LAYOUT_RTOL", "PROBE_IMAGES", "channels_last", "input_layout", "laid_out"]

LAYOUT_RTOL = 1e-4  # a layout's values may differ by float32 sums in another order, not more
PROBE_IMAGES = 4  # images of the first batch the layouts are compared on

Layout = Callable[[torch.Tensor], torch.Tensor]
Rest = TypeVar("Rest")


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """``images`` (N, C, H, W) in channels-last memory order (the same values)."""
    return images.contiguous(memory_format=torch.channels_last)


def _as_given(images: torch.Tensor) -> torch.Tensor:
    return images


def input_layout(run: Callable[[torch.Tensor], torch.Tensor], probe: torch.Tensor) -> Layout:
    """How to lay out the images fed to ``run`` (a forward pass, or one up to a layer):
    :func:`channels_last` where ``probe`` is a batch of CPU images and ``run`` gives the
    same values from it within :data:`LAYOUT_RTOL` (relative L2), else the images as given.
    ``run`` is called twice on ``probe``, without gradients."""
    if probe.device.type != "cpu" or probe.ndim != 4 or probe.numel() == 0:
        return _as_given
    with torch.no_grad():
        try:
            fast = run(channels_last(probe))
        except Exception:  # strides the model's code relies on: it runs as it always did
            return _as_given
        plain = run(probe)
    if not isinstance(plain, torch.Tensor) or not isinstance(fast, torch.Tensor):
        return _as_given
    if fast.shape != plain.shape:
        return _as_given
    plain, fast = plain.double(), fast.double()
    scale = torch.linalg.vector_norm(plain)
    error = torch.linalg.vector_norm(fast - plain)
    if not torch.isfinite(error) or error > LAYOUT_RTOL * scale:
        return _as_given
    return channels_last


def laid_out(
    pairs: Iterable[tuple[torch.Tensor, Rest]],
    run: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, Rest]]:
    """Each ``(inputs, rest)`` of ``pairs`` (a pass's batches) with ``inputs`` on ``device``
    in the layout :func:`input_layout` chooses on the first batch's first
    :data:`PROBE_IMAGES` images."""
    layout: Layout | None = None
    for inputs, rest in pairs:
        inputs = inputs.to(device)
        if layout is None:
            layout = input_layout(run, inputs[:PROBE_IMAGES])
        yield layout(inputs), rest
