"""The interpolation slider: every number it shows comes from merge/evaluate."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_state_equal, state_copy

import workbench as wb
from workbench.widgets import InterpolationSlider


@pytest.fixture(scope="module")
def bn_data(mnist_train):
    return mnist_train.subset(torch.arange(0, 4000, 8), "train")


def test_slider_endpoints_and_midpoint(shipped_pair, mnist_test):
    a, b = shipped_pair
    before_a, before_b = state_copy(a), state_copy(b)
    slider = InterpolationSlider(a, b, mnist_test)
    assert slider.slider.value == 0.5
    assert slider.children == (slider.slider, slider.readout)
    mid = slider.metrics
    assert mid == wb.evaluate(wb.interpolate(a, b, alpha=0.5), eval_data=mnist_test)
    mid_text = slider.readout.value

    slider.slider.value = 0.0
    assert slider.metrics == wb.evaluate(a, eval_data=mnist_test)
    start_text = slider.readout.value
    assert "alpha = 0.00" in start_text
    assert f"{100 * slider.metrics.accuracy:.1f}%" in start_text
    assert f"loss {slider.metrics.loss:.3f}" in start_text
    assert f"on {len(mnist_test)} images" in start_text

    slider.slider.value = 0.5
    assert slider.readout.value != start_text
    assert slider.readout.value == mid_text
    assert "alpha = 0.50" in slider.readout.value
    assert slider.metrics.accuracy != wb.evaluate(a, eval_data=mnist_test).accuracy
    assert slider.metrics.accuracy < 0.5  # the naive midpoint of the shipped pair

    slider.slider.value = 1.0
    assert slider.metrics == wb.evaluate(b, eval_data=mnist_test)

    assert_state_equal(a, before_a)
    assert_state_equal(b, before_b)


def test_slider_reset(shipped_pair, mnist_test, bn_data):
    a, b = shipped_pair
    naive = InterpolationSlider(a, b, mnist_test)
    reset = InterpolationSlider(a, b, mnist_test, bn="reset", bn_data=bn_data)
    expected = wb.evaluate(
        wb.reset_bn(wb.interpolate(a, b, alpha=0.5), data=bn_data), eval_data=mnist_test
    )
    assert reset.metrics.accuracy == expected.accuracy
    assert reset.metrics.loss == pytest.approx(expected.loss, rel=1e-6)
    assert reset.metrics.accuracy > naive.metrics.accuracy
    assert "after RESET" in reset.readout.value
    assert "after RESET" not in naive.readout.value

    reset.slider.value = 0.25
    expected = wb.evaluate(
        wb.reset_bn(wb.interpolate(a, b, alpha=0.25), data=bn_data), eval_data=mnist_test
    )
    assert reset.metrics.accuracy == expected.accuracy
    assert "alpha = 0.25" in reset.readout.value


def test_slider_reset_defaults_to_data(shipped_pair, mnist_test):
    a, b = shipped_pair
    slider = InterpolationSlider(a, b, mnist_test, bn="reset")
    expected = wb.evaluate(
        wb.reset_bn(wb.interpolate(a, b, alpha=0.5), data=mnist_test), eval_data=mnist_test
    )
    assert slider.metrics.accuracy == expected.accuracy


def test_slider_step():
    a = wb.create_model("cnn", width=0.25, in_channels=1)
    b = wb.create_model("cnn", width=0.25, in_channels=1)
    data = wb.TensorImageDataset(
        torch.zeros(4, 1, 28, 28),
        torch.zeros(4, dtype=torch.long),
        wb.dataset_info("mnist-5k"),
        "x",
    )
    slider = InterpolationSlider(a, b, data, step=0.1)
    assert slider.slider.step == 0.1
    assert slider.metrics.count == 4


def test_slider_mismatched_models(shipped_pair, mnist_test):
    other = wb.create_model("cnn", width=0.5, in_channels=1)
    with pytest.raises(ValueError, match="differ in width"):
        InterpolationSlider(shipped_pair[0], other, mnist_test)
    resnet = wb.create_model("resnet20", width=0.25, in_channels=1)
    with pytest.raises(ValueError, match="different architecture"):
        InterpolationSlider(shipped_pair[0], resnet, mnist_test)


def test_slider_bad_bn(shipped_pair, mnist_test):
    a, b = shipped_pair
    with pytest.raises(ValueError, match=r"bn must be one of .*, got 'bogus'"):
        InterpolationSlider(a, b, mnist_test, bn="bogus")
    plain_a = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    plain_b = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    with pytest.raises(
        ValueError, match="bn='reset' needs BatchNorm layers and SimpleCNN has none"
    ):
        InterpolationSlider(plain_a, plain_b, mnist_test, bn="reset")
