"""Feature visualization: batched rendering on lucent, exemplars, merging-aware views,
caching and errors. Small settings (few steps, few channels) keep it fast."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from tests.conftest import assert_state_equal, state_copy
from workbench import featviz as fv
from workbench.alignment.statistics import observation_points
from workbench.cache import ResultCache


@pytest.fixture
def cache(tmp_path) -> ResultCache:
    return ResultCache(tmp_path / "cache")


def _channel_means(model, layer, images) -> torch.Tensor:
    """Mean activation of every channel of ``layer`` for images (N, H, W, C) in [0, 1]."""
    info = wb.dataset_info("mnist-5k")
    x = (images.permute(0, 3, 1, 2) - info.mean[0]) / info.std[0]
    captured = []
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, i, o: captured.append(o)
    )
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return captured[0].flatten(2).mean(2)


def test_render_channels_excites_each_channel(shipped_pair, cache) -> None:
    model = shipped_pair[0]
    before = state_copy(model)
    channels = [0, 3, 5, 9]
    images = fv.render_channels(
        model, layer="features.conv3", channels=channels, steps=48, cache=cache, progress=False
    )
    assert images.shape == (4, 28, 28, 1)
    assert images.min() >= 0 and images.max() <= 1
    assert_state_equal(model, before)
    assert all(p.requires_grad for p in model.parameters())
    acts = _channel_means(model, "features.conv3", images)[:, channels]  # (image, channel)
    start = fv.render_channels(
        model, layer="features.conv3", channels=channels, steps=1, cache=False
    )
    baseline = _channel_means(model, "features.conv3", start)[:, channels]
    # the optimization drives each image's own channel up from where it started, and
    # above what the other images of the batch do to that channel
    assert (acts.diagonal() > baseline.diagonal() + 0.05).all()
    assert (acts.argmax(0) == torch.arange(4)).all()


def test_render_is_seeded_and_independent_of_the_batch(shipped_pair, cache) -> None:
    model = shipped_pair[0]
    kwargs = {"steps": 8, "cache": False, "progress": False}
    batch = fv.render_channels(model, layer="features.conv2", channels=[1, 2, 6], **kwargs)
    alone = fv.render_channels(model, layer="features.conv2", channels=[6], **kwargs)
    torch.testing.assert_close(alone[0], batch[2], atol=1e-5, rtol=0)
    again = fv.render_channels(model, layer="features.conv2", channels=[1, 2, 6], **kwargs)
    torch.testing.assert_close(again, batch, atol=1e-6, rtol=0)
    other_seed = fv.render_channels(model, layer="features.conv2", channels=[6], seed=1, **kwargs)
    assert (other_seed[0] - alone[0]).abs().max() > 0.05


def test_renders_are_cached_per_channel(shipped_pair, cache, monkeypatch) -> None:
    model = shipped_pair[0]
    first = fv.render_channels(
        model, layer="features.conv1", channels=[0, 1], steps=8, cache=cache, progress=False
    )
    calls = []
    original = fv.render._optimize
    monkeypatch.setattr(
        fv.render, "_optimize", lambda *a, **k: calls.append(a[2]) or original(*a, **k)
    )
    hit = fv.render_channels(
        model, layer="features.conv1", channels=[1, 0], steps=8, cache=cache, progress=False
    )
    assert calls == [] and torch.equal(hit[0], first[1])
    fv.render_channels(
        model, layer="features.conv1", channels=[0, 2], steps=8, cache=cache, progress=False
    )
    assert calls == [[2]], "only the channel not rendered before is optimized"
    changed = wb.interpolate(model, shipped_pair[1], alpha=0.1)
    fv.render_channels(
        changed, layer="features.conv1", channels=[0], steps=8, cache=cache, progress=False
    )
    assert calls[-1] == [0], "a changed model misses the cache"


def test_layer_and_channel_errors(shipped_pair) -> None:
    model = shipped_pair[0]
    n = model.features.conv1.out_channels
    with pytest.raises(ValueError, match=r"no layer 'features\.conv4'.*features\.conv"):
        fv.render_channels(model, layer="features.conv4", channels=[0], steps=1)
    with pytest.raises(ValueError, match=r"is a BatchNorm2d; .* conv and linear"):
        fv.render_channels(model, layer="features.bn1", channels=[0], steps=1)
    with pytest.raises(
        ValueError,
        match=rf"channels of layer 'features\.conv1'\[1\] must be in \[0, {n - 1}\], got {n}",
    ):
        fv.render_channels(model, layer="features.conv1", channels=[3, n], steps=1)


def test_exemplars_equal_a_brute_force_top_k(shipped_pair, mnist_test, cache) -> None:
    model = shipped_pair[0]
    found = fv.top_exemplars(
        model,
        layer="features.conv2",
        data=mnist_test,
        channels=[0, 4, 9],
        k=5,
        cache=cache,
        progress=False,
    )
    captured = []
    handle = model.features.conv2.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model.eval()(mnist_test.images)
    handle.remove()
    scores = captured[0][:, [0, 4, 9]].flatten(2).amax(2)
    top = scores.topk(5, dim=0)
    assert torch.equal(found.indices, top.indices.T)
    torch.testing.assert_close(found.scores, top.values.T)
    assert found.maps.shape == (3, 5, 14, 14)
    torch.testing.assert_close(found.maps[1, 0], captured[0][found.indices[1, 0], 4])
    assert torch.equal(found.images[2, 1], mnist_test.images[found.indices[2, 1]])
    linear = fv.top_exemplars(
        model, layer="classifier.fc1", data=mnist_test, k=2, cache=False, progress=False
    )
    hidden = model.classifier.fc1.out_features
    assert linear.indices.shape == (hidden, 2) and linear.maps.shape == (hidden, 2, 1, 1)


def test_unit_views(shipped_pair, tiny_train, cache, tmp_path) -> None:
    model_a, model_b = shipped_pair
    comparison = fv.compare_layer(
        model_a, model_b, layer="features.conv2", data=tiny_train, method="activation"
    )
    match = comparison.match
    assert list(comparison.models) == ["A", "B (matched)", "merged", "merged + RESET"]
    channels = model_a.features.conv2.out_channels
    assert sorted(match.matched.tolist()) == list(range(channels))
    assert match.correlation.max() <= 1 and match.correlation.median() > 0.3
    order = match.order()
    assert match.correlation[order[0]] == match.correlation.max()
    frame = match.to_frame()
    assert list(frame.columns) == ["unit", "matched_unit", "correlation"] and len(frame) == channels
    units = order[:2]
    images = fv.render_layer(comparison, units, steps=4, cache=cache, progress=False)
    assert {name: tuple(t.shape) for name, t in images.items()} == {
        name: (2, 28, 28, 1) for name in comparison.models
    }
    exemplars = fv.layer_exemplars(comparison, tiny_train, units, k=3, cache=cache, progress=False)
    fig = fv.plot_unit_comparison(comparison, units[1], images, exemplars, units)
    assert f"= {float(match.correlation[units[1]]):.2f}" in fig._suptitle.get_text()
    assert len(fig.axes) == 8
    paths = wb.figures.save(fig, tmp_path / "unit", formats=("pdf", "png"))
    assert all(p.stat().st_size > 0 for p in paths)
    bars = fv.plot_layer_matches(match)
    heights = [patch.get_height() for patch in bars.axes[0].patches]
    assert heights == sorted(heights, reverse=True) and len(heights) == channels
    gallery = fv.plot_gallery(images["A"], ["a", "b"])
    assert [ax.get_title() for ax in gallery.axes] == ["a", "b"]
    with pytest.raises(ValueError, match="was not rendered"):
        fv.plot_unit_comparison(comparison, order[5], images, exemplars, units)
    with pytest.raises(ValueError, match="produces no permutation group"):
        fv.matched_units(model_a, model_b, layer="classifier.fc2", data=tiny_train)


def test_feature_visualization_and_alignment_agree_on_what_a_nonlinearity_is() -> None:
    """One table of nonlinearities (workbench.graph.rules): a SELU after a conv is where the
    study observes "relu" and where alignment observes the group."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.SELU(), torch.nn.Conv2d(4, 2, 3),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ).eval()  # fmt: skip
    found = fv.observation_point(model, layer="0", point="relu")
    assert found.module == "1"
    spec = wb.permutation_spec(model, example_input=torch.zeros(2, 1, 8, 8))
    (group,) = spec.groups.values()
    assert observation_points(group) == {"_1": 1}  # the SELU's output node, channels on dim 1


class _Viewed(torch.nn.Module):
    """A CNN that flattens with ``.view``, which needs the default (NCHW) strides."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


def test_renders_take_the_fast_layout_where_the_model_can() -> None:
    """On the CPU the images are channels last (the same values, faster convolutions),
    except for a model whose code needs NCHW strides, which renders as it always did."""
    from workbench.featviz.points import observation_point, run_to
    from workbench.featviz.render import _channels_last, _layout, _same

    torch.manual_seed(0)
    resnet = wb.create_model("resnet20").eval()
    probe = torch.randn(2, 3, 32, 32)
    where = observation_point(resnet, layer="layer2.1.conv2", point="output")
    assert _layout(resnet, where, probe) is _channels_last
    with torch.no_grad():
        fast, plain = run_to(resnet, where, _channels_last(probe)), run_to(resnet, where, probe)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    viewed = _Viewed().eval()
    assert _layout(viewed, observation_point(viewed, layer="fc", point="output"), probe) is _same
    images = wb.render_channels(viewed, layer="fc", channels=[0, 1], steps=2, cache=False)
    assert images.shape == (2, 32, 32, 3) and images.isfinite().all()


class _ReadsMemory(torch.nn.Module):
    """A CNN whose code reads an activation's memory as NCHW whatever its strides (as a
    custom kernel may): in channels last it runs, and computes something else."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        n, c, h, w = x.shape
        return self.conv2(torch.as_strided(x, (n, c, h, w), (c * h * w, h * w, w, 1)))


def test_renders_keep_the_images_as_they_are_where_channels_last_changes_the_values() -> None:
    """A model that runs in channels last but computes other values there renders from
    NCHW images, as it always did: the probe compares both layouts' values."""
    from workbench.featviz.points import observation_point, run_to
    from workbench.featviz.render import _channels_last, _layout, _same

    torch.manual_seed(0)
    model = _ReadsMemory().eval()
    where = observation_point(model, layer="conv2", point="output")
    probe = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, plain = run_to(model, where, _channels_last(probe)), run_to(model, where, probe)
    assert (fast - plain).abs().max() > 0.1  # silently other values in channels last
    assert _layout(model, where, probe) is _same
