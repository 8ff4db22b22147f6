"""Passes over data feed the model channels-last images on the CPU only where it computes
the same values from them (:mod:`workbench.layout`): evaluation and RESET of a ResNet-20
take them and give the numbers of NCHW images; a model that reshapes an activation with
``.view``, and one that reads an activation's memory as NCHW (``as_strided``: in channels
last it runs and computes something else), get the images as given and exactly the
numbers they always got."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import workbench as wb
from workbench.alignment import calibration
from workbench.layout import PROBE_IMAGES, channels_last, input_layout


class _ReadsMemory(nn.Module):
    """Conv-BN-ReLU, then code that reads the activation's memory as NCHW whatever its
    strides (as a custom kernel may), then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        n, c, h, w = x.shape
        x = torch.as_strided(x, (n, c, h, w), (c * h * w, h * w, w, 1))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


class _Viewed(nn.Module):
    """Conv-BN-ReLU flattened with ``.view``, which channels-last strides refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.view(x.size(0), -1))


def _data(size: int, count: int = 48) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, size, size, generator=generator)
    return TensorDataset(images, torch.randint(0, 10, (count,), generator=generator))


def _seeded(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with random BatchNorm statistics (RESET then moves them)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def _first_conv_layouts(model: nn.Module, call) -> list[bool]:
    """Whether each full batch (not the probe) reached the first convolution channels
    last, while ``call()`` runs."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []

    def record(_module, args) -> None:
        if len(args[0]) > PROBE_IMAGES:
            seen.append(args[0].is_contiguous(memory_format=torch.channels_last))

    handle = first.register_forward_pre_hook(record)
    try:
        call()
    finally:
        handle.remove()
    return seen


def _nchw_metrics(model: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """Loss and accuracy with the images as given, batches of 16, written out here."""
    images, labels = data.tensors
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), 16):
            logits = model.eval()(images[start : start + 16])
            truth = labels[start : start + 16]
            loss += F.cross_entropy(logits, truth, reduction="sum").item()
            correct += (logits.argmax(1) == truth).sum().item()
    return loss / len(labels), correct / len(labels)


def test_evaluation_takes_channels_last_where_the_values_agree() -> None:
    torch.manual_seed(0)
    model, data = _seeded(wb.create_model("resnet20")), _data(32)
    found = []
    layouts = _first_conv_layouts(
        model, lambda: found.append(wb.evaluate(model, eval_data=data, batch_size=16))
    )
    assert layouts == [True, True, True]
    loss, accuracy = _nchw_metrics(model, data)
    assert found[0].loss == pytest.approx(loss, rel=1e-5)
    assert found[0].accuracy == accuracy


@pytest.mark.parametrize("build", [_ReadsMemory, _Viewed], ids=["reads_memory", "view"])
def test_models_that_need_nchw_images_get_them(build) -> None:
    torch.manual_seed(0)
    model, data = _seeded(build()), _data(16)
    found = []
    layouts = _first_conv_layouts(
        model, lambda: found.append(wb.evaluate(model, eval_data=data, batch_size=16))
    )
    assert layouts == [False, False, False]
    loss, accuracy = _nchw_metrics(model, data)
    assert found[0].loss == loss and found[0].accuracy == accuracy  # bit for bit


def test_reading_memory_as_nchw_changes_the_values_in_channels_last() -> None:
    """The control of the test above: without the probe's comparison, this model would
    be evaluated on other values, without an error."""
    torch.manual_seed(0)
    model, (images, _) = _seeded(_ReadsMemory()), _data(16).tensors
    with torch.no_grad():
        assert (model(channels_last(images[:4])) - model(images[:4])).abs().max() > 0.05
    assert input_layout(model, images[:4]) is not channels_last


def _nchw_reset(model: nn.Module, data, monkeypatch) -> nn.Module:
    with monkeypatch.context() as patched:
        patched.setattr(calibration, "input_layout", lambda run, probe: lambda images: images)
        return wb.reset_bn(model, data=data, batch_size=16)


def test_reset_takes_channels_last_and_gives_the_nchw_statistics(monkeypatch) -> None:
    torch.manual_seed(0)
    model, data = _seeded(wb.create_model("resnet20")), _data(32)
    found = []
    layouts = _first_conv_layouts(
        model, lambda: found.append(wb.reset_bn(model, data=data, batch_size=16))
    )
    assert layouts and all(layouts)
    expected = _nchw_reset(model, data, monkeypatch)
    for key, value in expected.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(found[0].state_dict()[key], value, rtol=1e-5, atol=1e-6)
            assert not torch.equal(value, model.state_dict()[key]), key  # RESET moved them


@pytest.mark.parametrize("build", [_ReadsMemory, _Viewed], ids=["reads_memory", "view"])
def test_reset_of_models_that_need_nchw_is_unchanged(build, monkeypatch) -> None:
    torch.manual_seed(0)
    model, data = _seeded(build()), _data(16, count=32)
    found = wb.reset_bn(model, data=data, batch_size=16)
    expected = _nchw_reset(model, data, monkeypatch)
    for key, value in expected.state_dict().items():
        assert torch.equal(found.state_dict()[key], value), key
