"""Linear mode connectivity: curves, both barrier definitions, tables and plots."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_state_equal, state_copy
from matplotlib.figure import Figure

import workbench as wb
from workbench.analysis import engine

FRAME_COLUMNS = ["label", "bn", "split", "alpha", "loss", "accuracy"]


@pytest.fixture(scope="module")
def naive_test(shipped_pair, mnist_test):
    a, b = shipped_pair
    return wb.lmc_curve(a, b, eval_data=mnist_test, alphas=5, progress=False)


@pytest.fixture(scope="module")
def reset_test(shipped_pair, train_1k, mnist_test):
    a, b = shipped_pair
    return wb.lmc_curve(
        a,
        b,
        eval_data=mnist_test,
        alphas=[0.0, 0.5, 1.0],
        bn="reset",
        data=train_1k,
        progress=False,
    )


@pytest.fixture(scope="module")
def train_1k(mnist_train):
    return mnist_train.subset(torch.arange(0, 4000, 4), "train")


@pytest.fixture(scope="module")
def train_500(mnist_train):
    return mnist_train.subset(torch.arange(0, 4000, 8), "train")


def _curve(alphas, loss, accuracy=None, **kwargs):
    alphas = np.asarray(alphas, dtype=float)
    accuracy = np.full(len(alphas), 0.9) if accuracy is None else np.asarray(accuracy, dtype=float)
    return wb.LMCCurve(alphas, np.asarray(loss, dtype=float), accuracy, **kwargs)


# --- curves of the shipped pair -----------------------------------------------------------


def test_endpoints_equal_evaluate_exactly(naive_test, shipped_pair, mnist_test):
    a, b = shipped_pair
    ea, eb = wb.evaluate(a, eval_data=mnist_test), wb.evaluate(b, eval_data=mnist_test)
    np.testing.assert_array_equal(naive_test.alphas, np.linspace(0, 1, 5))
    assert naive_test.loss[0] == ea.loss
    assert naive_test.accuracy[0] == ea.accuracy
    assert naive_test.loss[-1] == eb.loss
    assert naive_test.accuracy[-1] == eb.accuracy


def test_interior_points_equal_evaluate_of_interpolation(naive_test, shipped_pair, mnist_test):
    a, b = shipped_pair
    mid = wb.evaluate(wb.interpolate(a, b, alpha=0.25), eval_data=mnist_test)
    assert naive_test.loss[1] == pytest.approx(mid.loss, rel=1e-6)
    assert naive_test.accuracy[1] == mid.accuracy


def test_curve_metadata(naive_test, shipped_pair):
    assert naive_test.split == "test"  # taken from the dataset
    assert naive_test.bn == "none"  # bn=None is the one spelling "none"
    assert naive_test.label == "naive"
    assert naive_test.settings == {
        "batch_size": None,  # chosen for the pass (a memory budget): 500 here
        "data": "first split",
        "models": [wb.fingerprint(m) for m in shipped_pair],
    }
    assert naive_test.loss.shape == naive_test.accuracy.shape == (5,)


def test_naive_barrier_of_shipped_pair_is_large(naive_test):
    assert naive_test.midpoint_accuracy < 0.5
    assert naive_test.barrier > 0.5
    assert naive_test.accuracy_barrier > 0.3
    assert len(naive_test.diverged) == 0


def test_reset_beats_naive_at_midpoint(naive_test, reset_test):
    assert reset_test.bn == "reset"
    assert reset_test.settings["data"] == "given"
    assert reset_test.midpoint_accuracy > naive_test.midpoint_accuracy
    assert reset_test.barrier < naive_test.barrier


def test_lmc_curve_leaves_models_unmodified(shipped_pair, mnist_test):
    a, b = shipped_pair
    before_a, before_b = state_copy(a), state_copy(b)
    wb.lmc_curve(a, b, eval_data=mnist_test, alphas=[0.5], bn="reset", progress=False)
    assert_state_equal(a, before_a)
    assert_state_equal(b, before_b)
    assert not a.training and not b.training


def test_lmc_curves_match_single_calls(shipped_pair, train_500, mnist_test):
    a, b = shipped_pair
    curves = wb.lmc_curves(
        a,
        b,
        eval_data={"train": train_500, "test": mnist_test},
        alphas=[0, 0.5],
        bn="reset",
        progress=False,
    )
    assert list(curves) == ["train", "test"]
    train_curve, test_curve = curves["train"], curves["test"]
    assert train_curve.settings == test_curve.settings
    assert train_curve.settings["data"] == "first split"
    assert (train_curve.bn, test_curve.bn) == ("reset", "reset")
    assert (train_curve.split, test_curve.split) == ("train", "test")
    np.testing.assert_array_equal(train_curve.alphas, test_curve.alphas)

    single_train = wb.lmc_curve(
        a, b, eval_data=train_500, alphas=[0, 0.5], bn="reset", progress=False
    )
    single_test = wb.lmc_curve(
        a, b, eval_data=mnist_test, alphas=[0, 0.5], bn="reset", data=train_500, progress=False
    )
    for joint, single in ((train_curve, single_train), (test_curve, single_test)):
        np.testing.assert_array_equal(joint.loss, single.loss)
        np.testing.assert_array_equal(joint.accuracy, single.accuracy)
    # Resetting on the test data instead gives other numbers: data is really used.
    own = wb.lmc_curve(a, b, eval_data=mnist_test, alphas=[0.5], bn="reset", progress=False)
    assert own.loss[0] != test_curve.loss[1]


def test_lmc_curves_naive_splits(shipped_pair, train_500, mnist_test, naive_test):
    a, b = shipped_pair
    curves = wb.lmc_curves(
        a, b, eval_data={"tr": train_500, "te": mnist_test}, alphas=3, label="mine", progress=False
    )
    assert curves["te"].split == "te" and curves["te"].label == "mine"
    assert curves["tr"].split == "tr"
    # alphas=3 evaluates 0, 0.5, 1: every other point of the 5-point curve.
    np.testing.assert_array_equal(curves["te"].alphas, naive_test.alphas[::2])
    np.testing.assert_array_equal(curves["te"].loss, naive_test.loss[::2])
    np.testing.assert_array_equal(curves["te"].accuracy, naive_test.accuracy[::2])
    train_mid = wb.evaluate(wb.interpolate(a, b, alpha=0.5), eval_data=train_500)
    assert curves["tr"].accuracy[1] == train_mid.accuracy


def test_reset_without_batchnorm_errors(mnist_test):
    a = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    b = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    with pytest.raises(
        ValueError, match="bn='reset' needs BatchNorm layers and SimpleCNN has none"
    ):
        wb.lmc_curve(a, b, eval_data=mnist_test, alphas=3, bn="reset", progress=False)
    # Without reset the same pair is fine.
    curve = wb.lmc_curve(a, b, eval_data=mnist_test, alphas=2, progress=False)
    assert curve.loss.shape == (2,)


@pytest.mark.parametrize(
    ("alphas", "match"),
    [
        (1, "Need at least 2 points on the path, got alphas=1"),
        (0, "Need at least 2 points"),
        ([], "alphas must be a count or a 1-D list of finite numbers"),
        ([[0.0, 1.0]], "alphas must be a count"),
        ([0.0, float("nan"), 1.0], "alphas must be a count"),
        ([0.0, float("inf")], "alphas must be a count"),
    ],
)
def test_bad_alphas(shipped_pair, mnist_test, alphas, match):
    a, b = shipped_pair
    with pytest.raises(ValueError, match=match):
        wb.lmc_curve(a, b, eval_data=mnist_test, alphas=alphas, progress=False)


def test_bad_arguments(shipped_pair, mnist_test):
    a, b = shipped_pair
    with pytest.raises(
        ValueError,
        match=r"bn must be one of \['none', 'reset', 'repair'\] \(None for 'none'\), got 'bogus'",
    ):
        wb.lmc_curve(a, b, eval_data=mnist_test, bn="bogus", progress=False)
    with pytest.raises(ValueError, match="data must name at least one split"):
        wb.lmc_curves(a, b, eval_data={}, progress=False)
    other = wb.create_model("cnn", width=0.5, in_channels=1)
    with pytest.raises(ValueError, match="differ in width"):
        wb.lmc_curve(a, other, eval_data=mnist_test, progress=False)


# --- barrier definitions on synthetic curves -----------------------------------------------


def test_barriers_on_symmetric_curve():
    curve = _curve([0, 0.25, 0.5, 0.75, 1], [1.0, 2.0, 4.0, 2.0, 1.0])
    # Flat chord at height 1: both definitions give 4 - 1.
    assert curve.barrier == pytest.approx(3.0)
    assert curve.rebasin_barrier == pytest.approx(3.0)


def test_barriers_differ_on_tilted_chord():
    alphas = np.array([0, 0.25, 0.5, 0.75, 1])
    loss = np.array([1.0, 5.0, 3.0, 3.0, 3.0])
    curve = _curve(alphas, loss)
    # Chord from L(0)=1 to L(1)=3 is 1 + 2a = [1, 1.5, 2, 2.5, 3]; the excess is
    # [0, 3.5, 1, 0.5, 0], largest at alpha=0.25.
    assert curve.barrier == pytest.approx(3.5)
    # Re-Basin: max L - (L(0) + L(1)) / 2 = 5 - 2.
    assert curve.rebasin_barrier == pytest.approx(3.0)
    chord = (1 - alphas) * loss[0] + alphas * loss[-1]
    assert curve.barrier == pytest.approx(np.max(loss - chord))


def test_barrier_is_zero_below_chord():
    curve = _curve([0, 0.5, 1], [2.0, 0.5, 1.0])
    assert curve.barrier == 0.0  # the endpoints themselves lie on the chord
    assert curve.rebasin_barrier == pytest.approx(2.0 - 1.5)


def test_barrier_ignores_points_outside_unit_interval():
    curve = _curve([-0.5, 0, 0.5, 1, 1.5], [100.0, 1.0, 2.0, 1.0, 50.0])
    assert curve.barrier == pytest.approx(1.0)
    assert curve.rebasin_barrier == pytest.approx(1.0)


def test_accuracy_barrier():
    alphas = [0, 0.25, 0.5, 0.75, 1]
    accuracy = [0.9, 0.5, 0.7, 0.8, 0.8]
    curve = _curve(alphas, [0.1] * 5, accuracy)
    # Chord 0.9 - 0.1a = [0.9, 0.875, 0.85, 0.825, 0.8]; drops [0, 0.375, 0.15, 0.025, 0].
    assert curve.accuracy_barrier == pytest.approx(0.375)
    assert curve.barrier == pytest.approx(0.0)
    assert curve.midpoint_accuracy == 0.7


def test_unordered_alphas():
    curve = _curve([1, 0, 0.5], [3.0, 1.0, 4.0])
    assert curve.barrier == pytest.approx(4.0 - 2.0)


def test_missing_endpoint_raises():
    curve = _curve([0, 0.5, 0.9], [1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"alpha=1 is not among \[0\.0, 0\.5, 0\.9\]"):
        _ = curve.barrier
    with pytest.raises(ValueError, match="alpha=1"):
        _ = curve.rebasin_barrier
    with pytest.raises(ValueError, match="alpha=1"):
        _ = curve.accuracy_barrier
    no_start = _curve([0.1, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match="alpha=0 is not among"):
        _ = no_start.barrier
    no_mid = _curve([0, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"alpha=0\.5 is not among"):
        _ = no_mid.midpoint_accuracy


def test_nan_loss_gives_nan_barrier_and_diverged():
    curve = _curve([0, 0.25, 0.5, 0.75, 1], [1.0, 2.0, float("nan"), float("inf"), 1.0])
    assert math.isnan(curve.barrier)
    assert math.isnan(curve.rebasin_barrier)
    np.testing.assert_array_equal(curve.diverged, [0.5, 0.75])
    finite = _curve([0, 0.5, 1], [1.0, 2.0, 1.0])
    assert len(finite.diverged) == 0


# --- tables --------------------------------------------------------------------------------


def test_barriers_against_b_itself_when_the_far_end_is_not_b():
    """A path that ends at a model computing another function than B (CCA's image of B)
    is measured against B's own loss: a chord to the broken end would hide the barrier."""
    curve = _curve([0, 0.5, 1], [0.1, 1.0, 8.0], [0.98, 0.6, 0.3])
    assert curve.far_end_is_b and curve.barrier == 0.0  # the chord to 8.0 hides it
    honest = dataclasses.replace(curve, original_b_loss=0.1, original_b_accuracy=0.98)
    assert not honest.far_end_is_b
    assert honest.loss_b == 0.1 and honest.accuracy_b == 0.98
    assert honest.barrier == pytest.approx(7.9)  # at alpha = 1: 8.0 above B's 0.1
    assert honest.rebasin_barrier == pytest.approx(7.9)
    assert honest.accuracy_barrier == pytest.approx(0.68)
    record = honest.summary()
    assert record["accuracy_b"] == 0.98
    assert (record["mapped_end_loss"], record["mapped_end_accuracy"]) == (8.0, 0.3)
    assert "mapped_end_loss" not in curve.summary()
    labels = [line.get_label() for line in wb.plot_curves([honest]).axes[0].lines]
    assert labels == ["naive", "naive: model B itself"]


def test_original_b_is_measured_only_when_the_function_differs(shipped_pair, train_500):
    a, b = shipped_pair
    spec = wb.permutation_spec(b, example_input=train_500.images[:2])
    permuted = wb.apply_permutation(b, spec=spec, perm=wb.random_permutation(spec, seed=3))
    same = wb.lmc_curve(
        a, permuted, eval_data=train_500, alphas=3, original_b=b, progress=False, cache=False
    )
    assert same.far_end_is_b and "original_b" not in same.settings
    broken = copy.deepcopy(b)
    with torch.no_grad():
        broken.classifier[-1].weight.mul_(-1)  # another function, same architecture
    curve = wb.lmc_curve(
        a, broken, eval_data=train_500, alphas=3, original_b=b, progress=False, cache=False
    )
    b_alone = wb.evaluate(b, eval_data=train_500)
    assert not curve.far_end_is_b
    assert curve.loss_b == pytest.approx(b_alone.loss, rel=1e-6)
    assert curve.accuracy_b == b_alone.accuracy
    assert curve.loss[-1] > b_alone.loss + 1  # the far end itself is broken
    assert curve.barrier >= curve.loss[-1] - b_alone.loss - 1e-9
    with pytest.raises(ValueError, match="bn must be one of"):
        wb.lmc_curve(a, broken, eval_data=train_500, alphas=3, bn="bad", original_b=b)


def test_to_frame(naive_test):
    frame = naive_test.to_frame()
    assert list(frame.columns) == FRAME_COLUMNS
    assert len(frame) == 5
    assert set(frame["label"]) == {"naive"}
    assert set(frame["bn"]) == {"none"}
    assert set(frame["split"]) == {"test"}
    np.testing.assert_array_equal(frame["loss"].to_numpy(), naive_test.loss)
    np.testing.assert_array_equal(frame["alpha"].to_numpy(), naive_test.alphas)


def test_curves_frame_and_csv(naive_test, reset_test, tmp_path):
    frame = wb.curves_frame([naive_test, reset_test])
    assert list(frame.columns) == FRAME_COLUMNS
    assert len(frame) == len(naive_test.alphas) + len(reset_test.alphas)
    assert frame["bn"].tolist() == ["none"] * 5 + ["reset"] * 3
    path = wb.write_csv([naive_test, reset_test], tmp_path / "out" / "curves.csv")
    assert path.is_file()
    back = pd.read_csv(path)
    assert list(back.columns) == FRAME_COLUMNS
    assert len(back) == 8
    np.testing.assert_allclose(back["loss"].to_numpy(), frame["loss"].to_numpy(), rtol=1e-12)


def test_barrier_table(naive_test, reset_test):
    table = wb.barrier_table([naive_test, reset_test])
    assert len(table) == 2
    for column in (
        "barrier",
        "rebasin_barrier",
        "accuracy_barrier",
        "accuracy_a",
        "accuracy_b",
        "midpoint_accuracy",
    ):
        assert column in table.columns
    for row, curve in zip(table.itertuples(), [naive_test, reset_test], strict=True):
        assert row.barrier == curve.barrier
        assert row.rebasin_barrier == curve.rebasin_barrier
        assert row.accuracy_barrier == curve.accuracy_barrier
        assert row.accuracy_a == curve.accuracy[0]
        assert row.accuracy_b == curve.accuracy[-1]
        assert row.midpoint_accuracy == curve.midpoint_accuracy
    assert table["bn"].tolist() == ["none", "reset"]


def test_summary_without_midpoint():
    record = _curve([0, 1], [1.0, 2.0]).summary()
    assert "midpoint_accuracy" not in record
    assert record["barrier"] == 0.0


# --- plots --------------------------------------------------------------------------------


def test_plot_curves_one_line_per_curve(naive_test, reset_test):
    fig = wb.plot_curves([naive_test, reset_test])
    assert isinstance(fig, Figure)
    [ax] = fig.axes
    assert len(ax.lines) == 2
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), naive_test.alphas)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), naive_test.loss)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["naive", "naive + RESET"]


def test_plot_curves_accuracy_on_given_axes(naive_test, reset_test):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    returned = wb.plot_curves([naive_test], metric="accuracy", ax=axes[1], title="acc")
    assert returned is fig
    assert len(axes[0].lines) == 0
    assert len(axes[1].lines) == 1
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), 100 * naive_test.accuracy)
    assert axes[1].get_title() == "acc"
    assert axes[1].get_ylabel() == "Accuracy (%)"
    fig2 = wb.plot_curves([reset_test], "loss")
    assert isinstance(fig2, Figure) and len(fig2.axes[0].lines) == 1


def test_plot_marks_diverged_points():
    curve = _curve([0, 0.5, 1], [1.0, float("nan"), 1.0], split="train")
    fig = wb.plot_curves([curve])
    lines = fig.axes[0].lines
    assert len(lines) == 2
    assert lines[1].get_label() == "naive: diverged"
    np.testing.assert_array_equal(lines[1].get_xdata(), [0.5])


def test_plot_split_names_when_splits_differ():
    train = _curve([0, 1], [1.0, 1.0], split="train")
    test = _curve([0, 1], [1.0, 1.0], split="test")
    fig = wb.plot_curves([train, test])
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["naive (train)", "naive (test)"]
    # same method and BN handling: same colour and line style; train's markers are hollow
    assert ax.lines[0].get_markerfacecolor() == "white"
    assert ax.lines[1].get_markerfacecolor() != "white"


def test_plot_styles_axes_and_legend(naive_test):
    reset = dataclasses.replace(naive_test, bn="reset", label="weight")
    repair = dataclasses.replace(naive_test, bn="repair", label="weight")
    fig = wb.plot_curves([naive_test, reset, repair], "loss")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == [
        "naive",
        "weight + RESET",
        "weight + REPAIR",
    ]
    assert [line.get_linestyle() for line in ax.lines] == ["-", "--", ":"]
    assert ax.lines[1].get_color() == ax.lines[2].get_color()  # one colour per method
    assert ax.get_ylim()[0] == 0  # a loss axis starts at 0
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().y0 >= ax.get_window_extent().y1 - 1
    accuracy = wb.plot_curves([naive_test], "accuracy").axes[0]
    assert accuracy.get_ylim() == (0, 100)


def test_plot_rejects_bad_input(naive_test):
    with pytest.raises(ValueError, match="metric must be 'loss' or 'accuracy', got 'barrier'"):
        wb.plot_curves([naive_test], metric="barrier")
    with pytest.raises(ValueError, match="Nothing to plot"):
        wb.plot_curves([])


def test_curves_are_cached_by_content(shipped_pair, mnist_test, tmp_path, monkeypatch):
    a, b = shipped_pair
    cache = wb.ResultCache(tmp_path)
    first = wb.lmc_curve(a, b, eval_data=mnist_test, alphas=3, cache=cache, progress=False)
    assert len(list(tmp_path.glob("lmc/*.safetensors"))) == 1
    evaluations = []
    original = engine.evaluate
    monkeypatch.setattr(
        engine, "evaluate", lambda *x, **k: evaluations.append(1) or original(*x, **k)
    )
    again = wb.lmc_curve(
        a, b, eval_data=mnist_test, alphas=3, cache=cache, progress=False, label="other"
    )
    assert evaluations == [] and again.label == "other"
    np.testing.assert_array_equal(again.loss, first.loss)
    changed = wb.interpolate(a, b, alpha=0.01)
    wb.lmc_curve(changed, b, eval_data=mnist_test, alphas=3, cache=cache, progress=False)
    assert len(evaluations) == 3, "a changed model is recomputed"
    wb.lmc_curve(a, b, eval_data=mnist_test, alphas=3, cache=False, progress=False)
    assert len(evaluations) == 6, "cache=False recomputes"
    assert cache.clear() == 2


def test_pairwise_curves_and_bands(shipped_pair, train_500, mnist_test, tmp_path):
    models = [*shipped_pair, wb.load_quickstart_models((2,))[0]]
    curves = wb.pairwise_curves(
        models,
        eval_data={"test": mnist_test},
        alphas=3,
        method="weight",
        data=train_500,
        progress=False,
    )
    assert [c.settings["pair"] for c in curves] == [[0, 1], [0, 2], [1, 2]]
    assert all(c.label == "weight" and c.split == "test" for c in curves)
    direct = wb.lmc_curve(
        models[1],
        wb.align(models[1], models[2], method="weight"),
        eval_data=mnist_test,
        alphas=3,
        progress=False,
    )
    np.testing.assert_allclose(curves[2].loss, direct.loss, rtol=1e-5)
    fig = wb.plot_bands(curves, "loss", band="range")
    ax = fig.axes[0]
    mean = np.mean([c.loss for c in curves], axis=0)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), mean)
    assert "3 pairs" in ax.lines[0].get_label()
    assert len(ax.collections) == 1  # the band
    with pytest.raises(ValueError, match="band must be"):
        wb.plot_bands(curves, band="iqr")
    with pytest.raises(ValueError, match="at least 2 models"):
        wb.pairwise_curves(models[:1], eval_data={"test": mnist_test})
