"""RESET and REPAIR in one layer-major pass (workbench.alignment.layer_major): the same
statistics, bit for bit, as the pass over the data per layer they replace, and that pass
where the model does not trace or the data's activations do not fit the memory budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import workbench as wb
from workbench.alignment import calibration
from workbench.batching import BUDGET_VARIABLE
from workbench.graph import permutation_spec
from workbench.merging import repair_points


def _per_layer(monkeypatch) -> None:
    monkeypatch.setattr(calibration, "calibrate_layer_major", lambda *_a, **_k: False)


def _spy(monkeypatch) -> list[bool]:
    """What every layer-major attempt returned (True: done in one pass)."""
    found: list[bool] = []
    real = calibration.calibrate_layer_major

    def spy(*args, **kwargs) -> bool:
        found.append(real(*args, **kwargs))
        return found[-1]

    monkeypatch.setattr(calibration, "calibrate_layer_major", spy)
    return found


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def resnet_and_data():
    torch.manual_seed(0)
    model = wb.create_model("resnet20", width=1).eval()
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(70, 3, 32, 32, generator=generator), torch.zeros(70).long())
    return model, data


def test_reset_matches_the_pass_per_layer_bit_for_bit(resnet_and_data, monkeypatch) -> None:
    model, data = resnet_and_data
    spy = _spy(monkeypatch)
    fast = _buffers(wb.reset_bn(model, data=data, batch_size=16))  # 5 batches, the last of 6
    assert spy == [True]
    _per_layer(monkeypatch)
    slow = _buffers(wb.reset_bn(model, data=data, batch_size=16))
    _same(fast, slow)
    assert not torch.equal(fast["bn1.running_mean"], model.state_dict()["bn1.running_mean"])


def test_repair_matches_the_pass_per_layer_bit_for_bit(shipped_pair, mnist_train, monkeypatch):
    a, b = shipped_pair
    spec = permutation_spec(a, example_input=torch.zeros(2, 1, 28, 28))
    aligned = wb.align(a, b, method="weight", spec=spec)
    merged = wb.interpolate(a, aligned, alpha=0.5)
    data = mnist_train.subset(torch.arange(300), "train")
    assert repair_points(spec)
    spy = _spy(monkeypatch)
    fast = _buffers(wb.repair(merged, [a, aligned], alpha=0.5, data=data, spec=spec, batch_size=64))
    assert spy == [True]
    _per_layer(monkeypatch)
    slow = _buffers(wb.repair(merged, [a, aligned], alpha=0.5, data=data, spec=spec, batch_size=64))
    _same(fast, slow)


def test_data_over_the_memory_budget_is_calibrated_per_layer(resnet_and_data, monkeypatch):
    model, data = resnet_and_data
    expected = _buffers(wb.reset_bn(model, data=data, batch_size=16))
    monkeypatch.setenv(BUDGET_VARIABLE, "64KB")  # less than one batch's activations
    spy = _spy(monkeypatch)
    _same(_buffers(wb.reset_bn(model, data=data, batch_size=16)), expected)
    assert spy == [False]


class _Branching(nn.Module):
    """Python control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))
        if h.sum() > 0:
            h = h.relu()
        return self.head(h.mean((2, 3)))


def test_a_model_that_does_not_trace_is_calibrated_per_layer() -> None:
    torch.manual_seed(0)
    model = _Branching().eval()
    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    reset = wb.reset_bn(model, data=TensorDataset(x, torch.zeros(20).long()), batch_size=7)
    with torch.no_grad():
        inputs = model.conv(x)
    torch.testing.assert_close(reset.bn.running_mean, inputs.mean((0, 2, 3)))
    torch.testing.assert_close(reset.bn.running_var, inputs.var((0, 2, 3)))
