"""Architectures as a registry: one registered in this file alone is created by name,
trained, aligned and rebuilt from its checkpoint; ``architectures()`` lists the zoo,
torchvision and (when installed) timm; timm stays optional."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.zoo import ARCHITECTURE_ATTR

NAME = "two-conv"


class TwoConv(nn.Module):
    """Two conv blocks with BatchNorm, global pooling and a linear head."""

    def __init__(self, width: float, num_classes: int, in_channels: int) -> None:
        super().__init__()
        channels = max(1, round(8 * width))
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                bn1=nn.BatchNorm2d(channels),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(channels, 2 * channels, 3, padding=1),
                relu2=nn.ReLU(),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
            )
        )
        self.head = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture
def registered():
    @wb.register_architecture(NAME)
    def two_conv(width: float = 1, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return TwoConv(width, num_classes, in_channels)

    yield two_conv
    if NAME in wb.list_models():
        wb.unregister_architecture(NAME)


def test_a_registered_architecture_is_created_trained_and_aligned(
    registered, tiny_train, tmp_path: Path
) -> None:
    assert NAME in wb.list_models() and NAME in wb.architectures()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = wb.create_model(NAME, width=0.5, num_classes=10, in_channels=1)
        assert isinstance(model, TwoConv) and model.head.in_features == 8
        models.append(wb.train_model(model, data=tiny_train, epochs=1, seed=seed, progress=False))
    a, b = models
    assert getattr(a, ARCHITECTURE_ATTR)["name"] == NAME
    aligned = wb.align(a, b, method="weight")
    x = tiny_train.images[:8]
    with torch.no_grad():
        torch.testing.assert_close(aligned.eval()(x), b.eval()(x), rtol=1e-5, atol=1e-5)
    assert not torch.equal(aligned.features.conv1.weight, b.features.conv1.weight)
    path = wb.save_checkpoint(a, tmp_path / "a.safetensors", dataset="mnist-5k")
    rebuilt = wb.load_checkpoint(path)  # from the metadata alone: the name is registered
    assert isinstance(rebuilt, TwoConv)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), a.eval()(x))


def test_registering_says_what_is_wrong(registered) -> None:
    def other(width=1, num_classes=10, in_channels=3):
        return TwoConv(width, num_classes, in_channels)

    with pytest.raises(ValueError, match=rf"'{NAME}' is already registered .*replace=True"):
        wb.register_architecture(NAME, other)
    assert wb.register_architecture(NAME, registered) is registered  # a cell run again
    assert wb.register_architecture(NAME, other, replace=True) is other
    with pytest.raises(TypeError, match=r"does not take in_channels: create_model calls"):
        wb.register_architecture("no-channels", lambda width, num_classes: TwoConv(1, 2, 3))
    with pytest.raises(ValueError, match=r"'tv:' are the library's own models"):
        wb.register_architecture("tv:mine", other)
    wb.register_architecture("not-a-model", lambda **kwargs: "model")
    try:
        with pytest.raises(TypeError, match=r"returned str, not an nn\.Module"):
            wb.create_model("not-a-model")
    finally:
        wb.unregister_architecture("not-a-model")
    with pytest.raises(ValueError, match=r"Unknown model 'two-conf'.*Did you mean 'two-conv'"):
        wb.create_model("two-conf")
    wb.unregister_architecture(NAME)
    with pytest.raises(ValueError, match=rf"No architecture named '{NAME}'"):
        wb.unregister_architecture(NAME)


def test_architectures_lists_the_zoo_and_torchvision() -> None:
    names = wb.architectures()
    assert names[: len(wb.list_models())] == wb.list_models()
    assert "cnn" in names and "tv:resnet18" in names


def _fake_timm() -> types.ModuleType:
    """A stand-in for timm: one model, and the arguments it was built with."""
    timm = types.ModuleType("timm")
    timm.calls = []
    timm.list_models = lambda: ["tiny_net"]

    def create_model(name, pretrained, num_classes, in_chans, **kwargs):
        timm.calls.append((name, pretrained, num_classes, in_chans, kwargs))
        return TwoConv(1, num_classes, in_chans)

    timm.create_model = create_model
    return timm


def test_timm_models_when_timm_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    timm = _fake_timm()
    monkeypatch.setitem(sys.modules, "timm", timm)
    assert wb.architectures()[-1] == "timm:tiny_net"
    model = wb.create_model("timm:tiny_net", num_classes=3, in_channels=1, drop_rate=0.1)
    assert isinstance(model, TwoConv) and model.head.out_features == 3
    assert timm.calls == [("tiny_net", False, 3, 1, {"drop_rate": 0.1})]
    assert getattr(model, ARCHITECTURE_ATTR)["name"] == "timm:tiny_net"
    with pytest.raises(ValueError, match=r"timm has no model 'tiny_nte'. Did you mean tiny_net"):
        wb.create_model("timm:tiny_nte")
    with pytest.raises(ValueError, match=r"timm:tiny_net has no width multiplier"):
        wb.create_model("timm:tiny_net", width=2)


def test_timm_stays_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails
    assert not any(name.startswith("timm:") for name in wb.architectures())
    with pytest.raises(ImportError, match=r"timm:resnet18 needs the optional package timm"):
        wb.create_model("timm:resnet18")
