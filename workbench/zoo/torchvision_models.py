"""Any torchvision classification model, as ``"tv:<name>"``."""

from __future__ import annotations

from torch import nn


def torchvision_names() -> list[str]:
    """torchvision's classification models (without the ``"tv:"`` prefix), sorted."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def torchvision_model(
    name: str,
    width: float = 1,
    num_classes: int = 1000,
    in_channels: int = 3,
    weights: str | None = None,
) -> nn.Module:
    """Build torchvision's classification model ``name``.

    ``weights`` (e.g. ``"DEFAULT"``) is passed to torchvision and needs a network and
    ``num_classes=1000``. ``in_channels`` other than 3 replaces the stem convolution.
    Width multipliers are not supported: torchvision's wide variants are separate names.
    """
    from torchvision import models

    available = torchvision_names()
    if name not in available:
        raise ValueError(
            f"torchvision has no classification model {name!r}; "
            f"choose one of: {', '.join(available)}."
        )
    if width != 1:
        raise ValueError(
            f"tv:{name} has no width multiplier (got width={width}); use width=1 or a wide "
            "variant such as tv:wide_resnet50_2."
        )
    if weights is not None and num_classes != 1000:
        raise ValueError(
            f"Pretrained weights for tv:{name} have 1000 classes, got num_classes={num_classes}."
        )
    try:
        model = models.get_model(name, weights=weights, num_classes=num_classes)
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(
            f"Could not load torchvision weights {weights!r} for {name!r} "
            f"({str(exc).splitlines()[0]}): this needs network access, or the file in "
            "torch's hub cache ($TORCH_HOME/hub/checkpoints)."
        ) from None
    if in_channels != 3:
        _replace_stem(model, name, in_channels)
    return model


def _replace_stem(model: nn.Module, name: str, in_channels: int) -> None:
    """Swap the first convolution for one with ``in_channels`` inputs (fresh weights)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                stem = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups if child.groups == 1 else in_channels,
                    bias=child.bias is not None,
                )
                setattr(parent, child_name, stem)
                return
    raise ValueError(f"tv:{name} has no Conv2d to adapt to in_channels={in_channels}.")
