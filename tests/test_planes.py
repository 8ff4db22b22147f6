"""Loss planes through three models: geometry, exact values at the models, caching, plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.planes import plane_basis


@pytest.fixture(scope="module")
def trio():
    return wb.load_quickstart_models((0, 1, 2))


@pytest.fixture(scope="module")
def small_test(mnist_test):
    return mnist_test.subset(torch.arange(0, 1000, 5), "test")


def test_basis_is_the_triangle_of_weight_distances(trio):
    points = plane_basis(trio)[0]
    vectors = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in trio]
    for i in range(3):
        for j in range(3):
            plane = np.linalg.norm(points[i] - points[j])
            weights = float((vectors[i] - vectors[j]).norm())
            assert plane == pytest.approx(weights, rel=1e-5)
    with pytest.raises(ValueError, match="identical"):
        plane_basis([trio[0], trio[0], trio[1]])
    with pytest.raises(ValueError, match="one line"):
        plane_basis([trio[0], trio[1], wb.interpolate(trio[0], trio[1], 0.5)])


def test_plane_passes_through_the_models(trio, small_test, tmp_path):
    cache = wb.ResultCache(tmp_path)
    # margin 0 and resolution 2: the grid's corners include model 1 at (0, 0)
    plane = wb.loss_plane(
        trio, small_test, resolution=3, bn=None, margin=0.0, cache=cache, progress=False
    )
    assert plane.loss.shape == plane.accuracy.shape == (3, 3)
    assert plane.points[0].tolist() == [0.0, 0.0]
    i, j = np.argwhere((plane.y[:, None] == 0) & (plane.x[None, :] == 0))[0]
    assert plane.loss[i, j] == pytest.approx(wb.evaluate(trio[0], small_test).loss, rel=1e-4)
    frame = plane.to_frame()
    assert len(frame) == 9 and set(frame.columns) >= {"x", "y", "loss", "accuracy"}
    again = wb.loss_plane(
        trio, small_test, resolution=3, bn=None, margin=0.0, cache=cache, progress=False
    )
    np.testing.assert_array_equal(again.loss, plane.loss)
    assert len(list(tmp_path.glob("plane/*.safetensors"))) == 1


def test_aligned_plane_with_reset_is_lower_and_plots(trio, small_test, mnist_train, tmp_path):
    train = mnist_train.subset(torch.arange(0, 4000, 8), "train")
    kwargs = {"resolution": 3, "bn": "reset", "bn_data": train, "progress": False, "cache": False}
    naive = wb.loss_plane(trio, small_test, **kwargs)
    aligned = wb.loss_plane(trio, small_test, method="weight", **kwargs)
    assert aligned.settings["method"] == "weight"
    assert np.median(aligned.loss) < np.median(naive.loss)
    fig = aligned.plot("loss")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["model 1", "model 2", "model 3"]
    paths = wb.figures.save(fig, tmp_path / "plane", formats=("pdf", "png"))
    assert all(p.stat().st_size > 0 for p in paths)
    aligned.plot("accuracy")
    with pytest.raises(ValueError, match="exactly 3 models"):
        wb.loss_plane(trio[:2], small_test)
    with pytest.raises(ValueError, match="bn must be None or 'reset'"):
        wb.loss_plane(trio, small_test, bn="repair")
