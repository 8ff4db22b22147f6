"""The model zoo: every architecture builds, has the right outputs and honours its arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import workbench as wb

ZOO = ["cnn", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "resnet20"]


def _forward(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(*shape))


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_list_models_names_the_zoo():
    assert wb.list_models() == ZOO


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize(("width", "in_channels"), [(0.25, 1), (1, 3)])
def test_builds_and_outputs(name, width, in_channels):
    model = wb.create_model(name, width=width, num_classes=10, in_channels=in_channels)
    assert _forward(model, (2, in_channels, 32, 32)).shape == (2, 10)
    assert _forward(model, (2, in_channels, 28, 28)).shape == (2, 10)
    assert _first_conv(model).in_channels == in_channels


@pytest.mark.parametrize("name", ZOO)
def test_num_classes_honoured(name):
    model = wb.create_model(name, width=0.25, num_classes=7, in_channels=3)
    assert _forward(model, (3, 3, 32, 32)).shape == (3, 7)
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last_linear.out_features == 7


@pytest.mark.parametrize(
    ("name", "base"),
    [("cnn", 16), ("vgg11", 64), ("vgg16_bn", 64), ("resnet20", 16)],
)
@pytest.mark.parametrize("width", [0.25, 0.5, 1, 2])
def test_width_scales_channels(name, base, width):
    model = wb.create_model(name, width=width, in_channels=1)
    assert _first_conv(model).out_channels == round(base * width)


def test_cnn_width_scales_every_layer():
    narrow = wb.create_model("cnn", width=0.5, in_channels=1)
    wide = wb.create_model("cnn", width=2, in_channels=1)
    for cn, cw in zip(_convs(narrow), _convs(wide), strict=True):
        assert cw.out_channels == 4 * cn.out_channels
    assert narrow.features.conv1.out_channels == 16 * 0.5
    assert narrow.classifier.fc1.out_features == 128 * 0.5
    assert wide.classifier.fc1.out_features == 128 * 2
    total_narrow = sum(p.numel() for p in narrow.parameters())
    total_wide = sum(p.numel() for p in wide.parameters())
    assert total_wide > 10 * total_narrow


def test_tiny_width_keeps_at_least_one_channel():
    model = wb.create_model("cnn", width=0.01, in_channels=1)
    assert model.features.conv1.out_channels == 1
    assert _forward(model, (2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("width", [0, -1])
def test_nonpositive_width_rejected(width):
    with pytest.raises(ValueError, match=f"width must be positive, got {width}"):
        wb.create_model("cnn", width=width)


def test_bad_num_classes_or_channels_rejected():
    with pytest.raises(ValueError, match="num_classes and in_channels must be >= 1, got 0 and 3"):
        wb.create_model("resnet20", num_classes=0)
    with pytest.raises(ValueError, match="got 10 and 0"):
        wb.create_model("cnn", in_channels=0)


@pytest.mark.parametrize("name", ["cnn", "resnet20", "vgg11", "vgg16"])
def test_batch_norm_false_removes_batchnorm(name):
    model = wb.create_model(name, width=0.25, in_channels=3, batch_norm=False)
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    assert all(conv.bias is not None for conv in _convs(model))
    assert _forward(model, (2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["cnn", "resnet20", "vgg11_bn", "vgg16_bn"])
def test_batchnorm_variants_have_batchnorm(name):
    model = wb.create_model(name, width=0.25)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns
    assert all(conv.bias is None for conv in _convs(model))


def test_bn_names_differ_only_by_batchnorm():
    plain = wb.create_model("vgg11", width=0.25)
    with_bn = wb.create_model("vgg11_bn", width=0.25)
    assert not any(isinstance(m, _BatchNorm) for m in plain.modules())
    assert [c.out_channels for c in _convs(plain)] == [c.out_channels for c in _convs(with_bn)]
    assert len(_convs(wb.create_model("vgg16", width=0.25))) == 13
    assert len(_convs(plain)) == 8


def test_architecture_recorded():
    model = wb.create_model("cnn", width=0.5, num_classes=3, in_channels=1, batch_norm=False)
    assert model.workbench_architecture == {
        "name": "cnn",
        "width": 0.5,
        "num_classes": 3,
        "in_channels": 1,
        "batch_norm": False,
    }
    rebuilt = wb.create_model(**model.workbench_architecture)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_creation_uses_global_rng():
    torch.manual_seed(0)
    a = wb.create_model("cnn", width=0.25, in_channels=1)
    torch.manual_seed(0)
    b = wb.create_model("cnn", width=0.25, in_channels=1)
    c = wb.create_model("cnn", width=0.25, in_channels=1)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not torch.equal(a.features.conv1.weight, c.features.conv1.weight)


def test_torchvision_resnet18_adapted():
    model = wb.create_model("tv:resnet18", num_classes=10, in_channels=1)
    assert model.conv1.in_channels == 1
    assert model.fc.out_features == 10
    assert _forward(model, (2, 1, 32, 32)).shape == (2, 10)
    assert model.workbench_architecture["name"] == "tv:resnet18"
    assert model.workbench_architecture["in_channels"] == 1


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="Unknown model 'vgg19'") as info:
        wb.create_model("vgg19")
    for name in ZOO:
        assert repr(name) in str(info.value)
    assert "tv:<name>" in str(info.value)


def test_unknown_torchvision_model_lists_choices():
    with pytest.raises(
        ValueError, match=r"torchvision has no classification model 'nope'.*resnet18"
    ):
        wb.create_model("tv:nope")


def test_torchvision_width_rejected():
    with pytest.raises(ValueError, match=r"tv:resnet18 has no width multiplier \(got width=2\)"):
        wb.create_model("tv:resnet18", width=2)


def test_torchvision_pretrained_needs_1000_classes():
    with pytest.raises(ValueError, match="have 1000 classes, got num_classes=10"):
        wb.create_model("tv:resnet18", num_classes=10, weights="DEFAULT")
