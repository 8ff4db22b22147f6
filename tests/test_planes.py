"""Loss planes through three models: geometry, exact values, RESET, caching, plots, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_state_equal, state_copy

import workbench as wb
from workbench.analysis import engine
from workbench.analysis.planes import (
    LossPlane,
    log_ticks,
    loss_planes,
    plane_basis,
    plane_weights,
    plot_plane,
)


@pytest.fixture(scope="module")
def trio():
    return wb.load_quickstart_models((0, 1, 2))


@pytest.fixture(scope="module")
def small_test(mnist_test):
    return mnist_test.subset(torch.arange(0, 1000, 5), "test")


@pytest.fixture(scope="module")
def small_train(mnist_train):
    return mnist_train.subset(torch.arange(0, 4000, 16), "train")


def _vector(model):
    return torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])


def test_basis_is_the_triangle_of_weight_distances(trio):
    points = plane_basis(trio)
    assert points[0].tolist() == [0.0, 0.0] and points[1, 1] == 0.0 and points[2, 1] > 0
    vectors = [_vector(m) for m in trio]
    for i in range(3):
        for j in range(3):
            plane = np.linalg.norm(points[i] - points[j])
            assert plane == pytest.approx(float((vectors[i] - vectors[j]).norm()), rel=1e-9)
    # The grid point of model k has weight 1 on model k.
    np.testing.assert_allclose(
        plane_weights(points, points[:, 0], points[:, 1]), np.eye(3), atol=1e-12
    )
    with pytest.raises(ValueError, match="identical parameters"):
        plane_basis([trio[0], trio[0], trio[1]])
    with pytest.raises(ValueError, match="lie on one line"):
        plane_basis([trio[0], trio[1], wb.interpolate(trio[0], trio[1], alpha=0.5)])


def test_grid_values_are_the_combined_models(trio, small_test, small_train):
    before = [state_copy(m) for m in trio]
    planes = loss_planes(
        trio,
        eval_data={"train": small_train, "test": small_test},
        resolution=3,
        bn=None,
        margin=0.0,
        progress=False,
        cache=False,
    )
    plane = planes["test"]
    assert plane.loss.shape == plane.accuracy.shape == (3, 3)
    assert (plane.split, plane.bn, plane.label) == ("test", "none", "none")
    assert plane.settings["models"] == [wb.fingerprint(m) for m in trio]
    # margin 0: the grid spans the triangle's bounding box exactly.
    assert plane.x[0] == min(0.0, plane.points[2, 0]) and plane.x[-1] == plane.points[:, 0].max()
    assert plane.y[0] == 0.0 and plane.y[-1] == plane.points[2, 1]
    # model 1 sits at the corner (0, 0) when model 3 is not behind it: an exact copy.
    if plane.x[0] == 0.0:
        assert plane.loss[0, 0] == wb.evaluate(trio[0], eval_data=small_test).loss
    weights = plane.weights
    for i, j in np.ndindex(3, 3):
        combined = wb.average(trio, weights=weights[i, j].tolist())
        negative_variance = any(
            (m.running_var < 0).any() for m in combined.modules() if hasattr(m, "running_var")
        )
        # Outside the triangle some weights are negative, and so may be a combined
        # running variance: that point diverges (use bn="reset" there).
        assert np.isnan(plane.loss[i, j]) == negative_variance
        if not negative_variance:
            expected = wb.evaluate(combined, eval_data=small_test).loss
            assert plane.loss[i, j] == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(plane.loss).sum() >= 3
    i, j = np.argwhere(np.isfinite(plane.loss))[-1]
    train_value = wb.evaluate(
        wb.average(trio, weights=weights[i, j].tolist()), eval_data=small_train
    ).accuracy
    assert planes["train"].accuracy[i, j] == pytest.approx(train_value, abs=1e-9)
    for model, state in zip(trio, before, strict=True):
        assert_state_equal(model, state)


def test_reset_plane_matches_reset_bn(trio, small_test, small_train):
    plane = wb.loss_plane(
        trio,
        eval_data=small_test,
        resolution=2,
        bn="reset",
        data=small_train,
        progress=False,
        cache=False,
    )
    i, j = 1, 0
    reset = wb.reset_bn(wb.average(trio, weights=plane.weights[i, j].tolist()), data=small_train)
    assert plane.loss[i, j] == pytest.approx(
        wb.evaluate(reset, eval_data=small_test).loss, rel=1e-4
    )


def test_plane_is_cached_by_content(trio, small_test, tmp_path, monkeypatch):
    cache = wb.ResultCache(tmp_path)
    kwargs = {"resolution": 2, "bn": None, "progress": False}
    first = wb.loss_plane(trio, eval_data=small_test, cache=cache, **kwargs)
    assert len(list(tmp_path.glob("plane/*.safetensors"))) == 1
    calls = []
    original = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = wb.loss_plane(trio, eval_data=small_test, cache=cache, labels=("a", "b", "c"), **kwargs)
    assert calls == [] and again.labels == ("a", "b", "c")
    np.testing.assert_array_equal(again.loss, first.loss)
    np.testing.assert_array_equal(again.points, first.points)
    assert again.settings == first.settings
    changed = [trio[0], trio[1], wb.interpolate(trio[2], trio[0], alpha=0.01)]
    wb.loss_plane(changed, eval_data=small_test, cache=cache, **kwargs)
    assert len(calls) == 4, "a changed model is recomputed"
    wb.loss_plane(trio, eval_data=small_test, cache=False, **kwargs)
    assert len(calls) == 8, "cache=False recomputes"


def test_aligned_plane_with_reset_is_lower_and_plots(trio, small_test, small_train, tmp_path):
    kwargs = {"data": small_train, "progress": False, "cache": False}
    naive = wb.loss_plane(trio, eval_data=small_test, resolution=2, bn="reset", **kwargs)
    aligned = wb.loss_plane(
        trio, eval_data=small_test, resolution=2, bn="reset", method="weight", **kwargs
    )
    assert aligned.settings["method"] == "weight" and aligned.label == "weight"
    assert aligned.settings["models"][0] == wb.fingerprint(trio[0])
    assert aligned.settings["models"][1] != wb.fingerprint(trio[1])  # aligned copy
    assert np.median(aligned.loss) < np.median(naive.loss)
    frame = aligned.to_frame()
    assert len(frame) == 4
    assert list(frame.columns) == [
        "label", "bn", "split", "x", "y", "weight_1", "weight_2", "weight_3", "loss", "accuracy"
    ]  # fmt: skip
    np.testing.assert_allclose(frame[["weight_1", "weight_2", "weight_3"]].sum(axis=1), 1.0)
    assert aligned.summary()["min_loss"] == aligned.loss.min()
    fig = plot_plane(aligned, "loss")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["model 1", "model 2", "model 3"]
    (bar,) = ax.child_axes  # the colour bar, an inset as tall as the plot
    assert bar.get_ylabel() == "Cross-entropy loss"
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert bar.get_window_extent(renderer).height == pytest.approx(
        ax.get_window_extent(renderer).height
    )
    tight, (width, height) = fig.get_tightbbox(renderer), fig.get_size_inches()
    assert tight.x0 >= 0 and tight.y0 >= 0 and tight.x1 <= width and tight.y1 <= height
    ticks = [float(t.get_text()) for t in bar.get_yticklabels() if t.get_text()]
    assert len(ticks) >= 3 and ticks == sorted(ticks)
    assert aligned.loss.min() <= ticks[0] and ticks[-1] <= aligned.loss.max()
    markers = [line for line in ax.lines if line.get_marker() == "o"]
    np.testing.assert_allclose(markers[0].get_xydata(), aligned.points)
    paths = wb.figures.save(fig, tmp_path / "plane", formats=("pdf", "svg", "png"))
    assert [p.suffix for p in paths] == [".pdf", ".svg", ".png"]
    pdf = paths[0].read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # embedded TrueType only
    _, axes = wb.figures.new_figure(columns=2, ncols=2)
    assert plot_plane(aligned, "accuracy", ax=axes[1]) is axes[1].figure
    assert aligned.write_csv(tmp_path / "plane.csv").read_text().startswith("label,bn,split,x")


def test_log_ticks_read_as_plain_numbers():
    np.testing.assert_allclose(log_ticks(1.03, 1.5), [1.1, 1.2, 1.4, 1.5])
    np.testing.assert_allclose(log_ticks(0.05, 4.2), [0.05, 0.15, 0.46, 1.4, 4.2])
    np.testing.assert_allclose(log_ticks(1e-3, 10), [1e-3, 1e-2, 1e-1, 1, 10])


def test_diverged_points_are_marked():
    loss = np.array([[0.5, np.nan], [1.0, 2.0]])
    plane = LossPlane(
        np.array([0.0, 1.0]),
        np.array([0.0, 1.0]),
        loss,
        np.array([[0.9, 0.1], [0.5, 0.4]]),
        np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]]),
    )
    np.testing.assert_array_equal(plane.diverged, [[1.0, 0.0]])
    assert plane.summary()["diverged_points"] == 1
    fig = plot_plane(plane, "loss")
    crosses = [line for line in fig.axes[0].lines if line.get_marker() == "x"]
    np.testing.assert_array_equal(crosses[0].get_xydata(), [[1.0, 0.0]])
    with pytest.raises(ValueError, match="metric must be 'loss' or 'accuracy'"):
        plot_plane(plane, "barrier")


def test_bad_input(trio, small_test):
    with pytest.raises(ValueError, match="exactly 3 models, got 2"):
        wb.loss_plane(trio[:2], eval_data=small_test)
    with pytest.raises(
        ValueError,
        match="bn='repair' corrects towards the endpoints' own statistics, and a plane extends beyond",
    ):
        wb.loss_plane(trio, eval_data=small_test, bn="repair")
    with pytest.raises(ValueError, match="resolution must be >= 2, got 1"):
        wb.loss_plane(trio, eval_data=small_test, resolution=1)
    with pytest.raises(ValueError, match=r"margin must be in \[0, inf\], got -0.1"):
        wb.loss_plane(trio, eval_data=small_test, margin=-0.1)
    with pytest.raises(ValueError, match="labels must name the 3 models"):
        wb.loss_plane(trio, eval_data=small_test, labels=("a", "b"))
    empty = small_test.subset(torch.arange(0), "test")
    with pytest.raises(ValueError, match="The 'test' data is empty"):
        wb.loss_plane(trio, eval_data=empty, progress=False)
    colour = torch.utils.data.TensorDataset(torch.zeros(4, 3, 28, 28), torch.zeros(4).long())
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(2, 3, 28, 28\)"):
        wb.loss_plane(trio, eval_data=colour, progress=False)
