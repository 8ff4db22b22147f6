"""The interpolation slider and the dashboards' shared pieces: every number the slider shows
comes from an LMC curve computed once (or a point computed when asked), and what is on
screen always matches the controls."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest
import torch
from conftest import assert_state_equal, state_copy

import workbench as wb
from workbench.alignment import calibration
from workbench.analysis import engine
from workbench.widgets import InterpolationSlider
from workbench.widgets.common import ComputeOnButton, FigureView


@pytest.fixture(scope="module")
def bn_data(mnist_train):
    return mnist_train.subset(torch.arange(0, 4000, 8), "train")


@pytest.fixture(scope="module")
def small_test(mnist_test):
    return mnist_test.subset(torch.arange(0, 1000, 4), "test")


def _direct(a, b, alpha, data, bn_data=None):
    merged = wb.interpolate(a, b, alpha=alpha)
    return wb.evaluate(
        merged if bn_data is None else wb.reset_bn(merged, data=bn_data), eval_data=data
    )


def _values_seen(widget: widgets.Widget) -> list[str]:
    """Every value ``widget`` is given from now on (what the browser is sent, in order)."""
    seen: list[str] = []
    widget.observe(lambda change: seen.append(change["new"]), names="value")
    return seen


def test_slider_reads_a_curve_computed_once(shipped_pair, mnist_test):
    a, b = shipped_pair
    before_a, before_b = state_copy(a), state_copy(b)
    slider = InterpolationSlider(a, b, eval_data=mnist_test, step=0.5)
    assert slider.slider.value == 0.5 and slider.slider.step == 0.5
    assert slider.alphas == [0.0, 0.5, 1.0]
    mid = _direct(a, b, 0.5, mnist_test)
    assert slider.metrics.accuracy == mid.accuracy and slider.metrics.count == 1000
    assert slider.metrics.loss == pytest.approx(mid.loss, rel=1e-6)
    mid_text = slider.readout.value

    slider.slider.value = 0.0
    start = wb.evaluate(a, eval_data=mnist_test)
    assert slider.metrics.accuracy == start.accuracy
    start_text = slider.readout.value
    assert "alpha = 0.00" in start_text and "(0: model A, 1: model B)" in start_text
    assert f"test accuracy <b>{100 * start.accuracy:.1f}%</b>" in start_text
    assert f"loss {slider.metrics.loss:.3f} (1000 images)" in start_text

    slider.slider.value = 0.5
    assert slider.readout.value == mid_text and "alpha = 0.50" in mid_text
    assert slider.metrics.accuracy < 0.5  # the naive midpoint of the shipped pair
    slider.slider.value = 1.0
    assert slider.metrics.accuracy == wb.evaluate(b, eval_data=mnist_test).accuracy
    assert slider.alphas == [0.0, 0.5, 1.0], "grid steps compute nothing new"
    assert_state_equal(a, before_a)
    assert_state_equal(b, before_b)


def test_slider_refines_its_grid_and_computes_an_alpha_off_it(shipped_pair, small_test):
    a, b = shipped_pair
    slider = InterpolationSlider(a, b, eval_data=small_test, step=0.5)
    assert "3 points computed" in slider.status.value and "step 0.25" in slider.status.value
    slider.refine.click()
    assert slider.alphas == [0.0, 0.25, 0.5, 0.75, 1.0] and slider.slider.step == 0.25
    assert "5 points computed" in slider.status.value
    slider.slider.value = 0.25
    assert slider.metrics.accuracy == _direct(a, b, 0.25, small_test).accuracy

    readouts = _values_seen(slider.readout)
    slider.slider.value = 0.3  # off the grid (from Python): computed now, with a busy sign
    assert "wb-busy" in readouts[0] and "computing" in readouts[0]
    assert "wb-busy" not in readouts[-1] and "alpha = 0.30" in readouts[-1]
    assert slider.metrics.accuracy == _direct(a, b, 0.3, small_test).accuracy
    assert 0.3 in slider.alphas


def test_slider_reads_the_curve_a_cell_computed(shipped_pair, small_test, bn_data, monkeypatch):
    a, b = shipped_pair
    splits = {"train": bn_data, "test": small_test}
    curves = wb.lmc_curves(a, b, eval_data=splits, alphas=3, bn="reset", progress=False)

    def no_work(*_args, **_kwargs):
        raise AssertionError("the slider recomputed a curve that is on disk")

    monkeypatch.setattr(engine, "load_weighted_average_", no_work)
    slider = InterpolationSlider(a, b, eval_data=splits, bn="reset", step=0.5)
    assert slider.split_metrics["train"].accuracy == curves["train"].accuracy[1]
    assert slider.split_metrics["test"].loss == curves["test"].loss[1]
    text = slider.readout.value
    assert "after RESET on 500 train images" in text
    assert "train accuracy" in text and "test accuracy" in text and "(250 images)" in text


def test_slider_reset(shipped_pair, mnist_test, bn_data):
    a, b = shipped_pair
    naive = InterpolationSlider(a, b, eval_data=mnist_test, step=0.5)
    reset = InterpolationSlider(a, b, eval_data=mnist_test, bn="reset", data=bn_data, step=0.25)
    expected = _direct(a, b, 0.5, mnist_test, bn_data)
    assert reset.metrics.accuracy == expected.accuracy
    assert reset.metrics.loss == pytest.approx(expected.loss, rel=1e-6)
    assert reset.metrics.accuracy > naive.metrics.accuracy
    assert "after RESET on 500 train images" in reset.readout.value
    assert "after RESET" not in naive.readout.value

    reset.slider.value = 0.25
    assert reset.metrics.accuracy == _direct(a, b, 0.25, mnist_test, bn_data).accuracy
    assert "alpha = 0.25" in reset.readout.value


def test_slider_reset_defaults_to_data(shipped_pair, small_test):
    a, b = shipped_pair
    slider = InterpolationSlider(a, b, eval_data=small_test, bn="reset", step=0.5)
    assert slider.metrics.accuracy == _direct(a, b, 0.5, small_test, small_test).accuracy
    assert "after RESET on 250 test images" in slider.readout.value


def test_reset_finds_the_batchnorm_order_once_per_model(shipped_pair, tiny_train, monkeypatch):
    found = []
    execution_order = calibration._execution_order

    def counted(*args):
        found.append(args[0])
        return execution_order(*args)

    monkeypatch.setattr(calibration, "_execution_order", counted)
    merged = wb.interpolate(*shipped_pair, alpha=0.5)
    expected = wb.reset_bn(merged, data=tiny_train)
    assert len(found) == 1
    work = wb.interpolate(*shipped_pair, alpha=0.5)
    for _ in range(3):
        wb.merging.reset_bn_(work, data=tiny_train)
    assert len(found) == 2, "the working model's order is found once, not per call"
    assert_state_equal(work, expected.state_dict())


def test_slider_step():
    a = wb.create_model("cnn", width=0.25, in_channels=1)
    b = wb.create_model("cnn", width=0.25, in_channels=1)
    data = wb.TensorImageDataset(
        torch.zeros(4, 1, 28, 28),
        torch.zeros(4, dtype=torch.long),
        wb.dataset_info("mnist-5k"),
        "x",
    )
    slider = InterpolationSlider(a, b, eval_data=data, step=0.1)
    assert slider.slider.step == pytest.approx(0.1) and len(slider.alphas) == 11
    assert slider.metrics.count == 4
    with pytest.raises(ValueError, match=r"step must divide \[0, 1\] into equal parts.*0.3"):
        InterpolationSlider(a, b, eval_data=data, step=0.3)
    fine = InterpolationSlider(a, b, eval_data=data, step=1 / 32)
    assert fine.slider.readout_format == ".5f" and not fine.refine.disabled
    fine.refine.click()
    assert fine.slider.step == 1 / 64 and fine.refine.disabled, "1/80 is the finest grid"
    assert "alpha = 0.50000" in fine.readout.value


def test_slider_mismatched_models(shipped_pair, mnist_test):
    other = wb.create_model("cnn", width=0.5, in_channels=1)
    with pytest.raises(ValueError, match="differ in width"):
        InterpolationSlider(shipped_pair[0], other, eval_data=mnist_test)
    resnet = wb.create_model("resnet20", width=0.25, in_channels=1)
    with pytest.raises(ValueError, match="different architecture"):
        InterpolationSlider(shipped_pair[0], resnet, eval_data=mnist_test)


def test_slider_bad_bn(shipped_pair, mnist_test):
    a, b = shipped_pair
    with pytest.raises(ValueError, match=r"bn must be one of .*, got 'bogus'"):
        InterpolationSlider(a, b, eval_data=mnist_test, bn="bogus")
    plain_a = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    plain_b = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    with pytest.raises(
        ValueError, match="bn='reset' needs BatchNorm layers and SimpleCNN has none"
    ):
        InterpolationSlider(plain_a, plain_b, eval_data=mnist_test, bn="reset")


def test_compute_on_button_never_shows_a_stale_result():
    choice = widgets.Dropdown(options=["a", "b"])
    button, status, progress = widgets.Button(description="Go"), widgets.HTML(), widgets.Output()
    shown, computed = [], []

    def compute(key):
        computed.append(key)
        if computed.count("b") == 1 and key == "b":
            raise ValueError("b failed once")
        return key.upper()

    runner = ComputeOnButton(
        button,
        [choice],
        key=lambda: choice.value,
        compute=compute,
        show=lambda key, result: shown.append(result),
        clear=lambda: shown.append(None),
        status=status,
        progress=progress,
    )
    runner.refresh()
    assert shown == [None] and "press Go" in status.value and not button.disabled
    statuses = _values_seen(status)
    button.click()
    assert "wb-busy" in statuses[0] and shown[-1] == "A" and button.disabled
    assert runner.current == "A" and runner.seconds >= 0
    choice.value = "b"  # not computed: the old result goes at once
    assert shown[-1] is None and runner.current is None and not button.disabled
    with pytest.raises(ValueError, match="b failed once"):
        runner.press()
    assert "b failed once" in status.value and not button.disabled
    button.click()
    assert shown[-1] == "B"
    choice.value = "a"  # computed before: shown again without computing
    assert shown[-1] == "A" and computed == ["a", "b", "b"]


def test_figure_view_redraws_only_the_marker():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    (marker,) = ax.plot([0.5], [0.5], "o")
    view = FigureView()
    assert view.layout.display == "none"
    view.show(fig, [marker])
    first = bytes(view.value)
    assert first.startswith(b"\x89PNG") and view.layout.display is None
    marker.set_data([0.0], [0.0])
    view.update()
    assert bytes(view.value) != first and view.figure is fig
    marker.set_data([0.5], [0.5])
    view.update()
    assert bytes(view.value) == first, "the same marker position gives the same image"
    view.clear()
    assert view.figure is None and bytes(view.value) == b"" and view.layout.display == "none"


def test_figure_view_shows_a_kept_figure_again_without_drawing_it(monkeypatch):
    view, figures = FigureView(), []
    for y in (0, 1):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [y, 1 - y])
        figures.append(fig)
        view.show(fig, keep=True)
    first = figures[0]
    drawn = []
    monkeypatch.setattr(type(first.canvas), "draw", lambda canvas: drawn.append(canvas))
    view.show(first, keep=True)
    assert view.figure is first and view.layout.display is None and drawn == []
