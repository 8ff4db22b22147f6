"""The steps/quality trade-off of feature visualization: the quality measure rises with
optimization on a real unit, the result's shapes, its figure, and input errors."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench import featviz as fv
from workbench.cache import ResultCache

LAYER = "features.conv2"


@pytest.fixture
def cache(tmp_path) -> ResultCache:
    return ResultCache(tmp_path / "cache")


@pytest.fixture(scope="module")
def tradeoff(shipped_pair, tiny_train) -> fv.StepsTradeoff:
    return fv.steps_tradeoff(
        shipped_pair[0],
        layer=LAYER,
        data=tiny_train,
        channels=[0, 1],
        steps=(64, 2),
        progress=False,
    )


def test_quality_grows_with_steps_on_a_real_unit(tradeoff) -> None:
    assert tradeoff.steps == (2, 64)  # sorted
    early, late = tradeoff.quality
    assert (late > early + 0.5).all(), tradeoff.quality
    assert (late > 1.0).all(), "64 steps beat the best training image on its own objective"
    assert (tradeoff.contrast[1] > tradeoff.contrast[0]).all()


def test_quality_is_on_the_data_scale(shipped_pair, tiny_train, tradeoff) -> None:
    """quality = (objective - data mean) / (data max - data mean): the data's own images
    score 0 on average and 1 at best; render_quality agrees with the trade-off."""
    model = shipped_pair[0]
    again = fv.render_quality(
        model, layer=LAYER, channels=[0, 1], images=tradeoff.images[64], data=tiny_train
    )
    torch.testing.assert_close(again, tradeoff.quality[1])
    info = wb.dataset_info("mnist-5k")
    pictures = (tiny_train.images * info.std[0] + info.mean[0]).permute(0, 2, 3, 1)
    own = fv.render_quality(
        model, layer=LAYER, channels=[5] * len(pictures), images=pictures, data=tiny_train
    )
    assert abs(float(own.mean())) < 1e-4
    assert abs(float(own.max()) - 1.0) < 1e-4


def test_result_shapes_and_table(tradeoff) -> None:
    assert tradeoff.channels == (0, 1)
    assert set(tradeoff.images) == set(tradeoff.seconds) == set(tradeoff.cpu_seconds) == {2, 64}
    assert tradeoff.images[64].shape == (2, 28, 28, 1)
    for field in (tradeoff.quality, tradeoff.objective, tradeoff.contrast):
        assert field.shape == (2, 2)
    assert tradeoff.data_mean.shape == tradeoff.data_best.shape == (2,)
    assert (tradeoff.data_best > tradeoff.data_mean).all()
    assert all(s > 0 for s in tradeoff.seconds.values())
    assert tradeoff.mean_quality().shape == (2,)
    table = tradeoff.to_frame()
    assert len(table) == 4
    assert list(table.columns) == [
        "steps",
        "channel",
        "quality",
        "objective",
        "contrast",
        "seconds",
        "cpu_seconds",
    ]
    with pytest.raises(AttributeError):
        tradeoff.steps = (1,)  # frozen


def test_plot_shows_a_gallery_row_per_step_count(tradeoff) -> None:
    fig = tradeoff.plot()
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2 * 2  # 2 step counts x 2 channels (fewer than shown=4)
    assert len(fig.axes) == len(image_axes) + 2  # quality and seconds against steps
    assert len([ax for ax in tradeoff.plot(shown=1).axes if ax.images]) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": ()}, "steps is empty"),
        ({"steps": (8, 0)}, r"positive integers; got \[0\]"),
        ({"steps": (-4, 8)}, r"got \[-4\]"),
        ({"steps": (8.5,)}, r"got \[8.5\]"),
        ({"layer": "features.conv9"}, "has no layer 'features.conv9'"),
        ({"layer": "features.bn2"}, "is a BatchNorm2d"),
        ({"channels": [64]}, r"must be in \[0, 63\], got 64"),
        ({"cache": False}, "always renders with cache=False"),
    ],
)
def test_bad_input_names_the_problem(shipped_pair, tiny_train, kwargs, message) -> None:
    args = {"layer": LAYER, "channels": [0], "steps": (2,), **kwargs}
    layer, channels = args.pop("layer"), args.pop("channels")
    with pytest.raises(ValueError, match=message):
        fv.steps_tradeoff(shipped_pair[0], layer=layer, data=tiny_train, channels=channels, **args)


def test_render_quality_checks_the_images(shipped_pair, tiny_train, cache) -> None:
    model = shipped_pair[0]
    images = fv.render_channels(
        model, layer=LAYER, channels=[0, 1], steps=1, cache=cache, progress=False
    )
    with pytest.raises(ValueError, match="one image per channel"):
        fv.render_quality(model, layer=LAYER, channels=[0], images=images, data=tiny_train)
    empty = tiny_train.subset(torch.arange(0), "train")
    with pytest.raises(ValueError, match="data is empty"):
        fv.render_quality(model, layer=LAYER, channels=[0, 1], images=images, data=empty)
