"""Streaming correctness: results of passes over data depend on the data, never on how it
is batched or in which order a loader serves it.

RESET and REPAIR give the same statistics (and the same corrected model) for batches of
1, 7, 64 examples, the whole dataset at once, and a DataLoader with an uneven (or a
one-example) last batch; dataset exemplars carry the dataset indices and the very images
that produced their scores, whatever the sampler.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import workbench as wb
from workbench import featviz as fv
from workbench.alignment.statistics import channel_moments
from workbench.graph import permutation_spec
from workbench.merging import repair_points

RTOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Batches of one example are all overhead: one thread avoids contention on a shared
    CPU (results agree to rounding across thread counts)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small(mnist_train) -> wb.TensorImageDataset:
    """120 training images: every batching below covers all of them."""
    return mnist_train.subset(torch.arange(0, 3600, 30), "train")


@pytest.fixture(scope="module")
def midpoint(shipped_pair) -> nn.Module:
    return wb.interpolate(*shipped_pair, alpha=0.5)


def _batchings(data: wb.TensorImageDataset) -> dict[str, object]:
    """The same examples as batches of 1, 7 (the last of one example: 120 = 17 * 7 + 1) and
    64, all at once, and as DataLoaders whose last batch is uneven (120 = 64 + 56) or, in
    a shuffled order, a single example (120 = 7 * 17 + 1)."""
    pairs = TensorDataset(data.images, data.targets)
    return {
        "1": 1,
        "7": 7,
        "64": 64,
        "all": len(data),
        "loader 64 (last 56)": DataLoader(pairs, batch_size=64),
        "shuffled loader 17 (last 1)": DataLoader(
            pairs, batch_size=17, shuffle=True, generator=torch.Generator().manual_seed(0)
        ),
    }


def _run(fn, data: wb.TensorImageDataset, batching: object):
    """``fn(data, batch_size)``: a batch size applies to the dataset, a loader replaces it."""
    if isinstance(batching, DataLoader):
        return fn(batching, 500)
    return fn(data, batching)


def _relative(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() - y.double()).abs().max() / y.double().abs().max())


def _bn_statistics(model: nn.Module) -> list[torch.Tensor]:
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    return [s for m in layers for s in (m.running_mean, m.running_var)]


def _bn_inputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The inputs of every BatchNorm layer when ``model`` runs in eval mode."""
    seen: list[torch.Tensor] = []
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    handles = [m.register_forward_pre_hook(lambda _m, a: seen.append(a[0])) for m in layers]
    with wb.modules.eval_mode(model), torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return seen


# --- RESET --------------------------------------------------------------------------------


def test_reset_statistics_do_not_depend_on_the_batch_size(midpoint, small) -> None:
    reference = _bn_statistics(wb.reset_bn(midpoint, data=small, batch_size=len(small)))
    for name, batching in _batchings(small).items():
        reset = _run(lambda d, bs: wb.reset_bn(midpoint, data=d, batch_size=bs), small, batching)
        for got, want in zip(_bn_statistics(reset), reference, strict=True):
            assert _relative(got, want) < RTOL, name


def test_reset_statistics_are_those_of_the_reset_network(midpoint, small) -> None:
    """Every layer's running statistics are the exact (unbiased) moments of its inputs
    when the reset network itself runs in eval mode: RESET's fixed point."""
    reset = wb.reset_bn(midpoint, data=small, batch_size=7)
    layers = [m for m in reset.modules() if isinstance(m, _BatchNorm)]
    for layer, inputs in zip(layers, _bn_inputs(reset, small.images), strict=True):
        dims = [0, 2, 3]
        assert _relative(layer.running_mean, inputs.double().mean(dims)) < RTOL
        assert _relative(layer.running_var, inputs.double().var(dims)) < RTOL
        assert int(layer.num_batches_tracked) == -(-len(small) // 7)


def test_reset_with_batches_of_one_on_1x1_maps(small) -> None:
    """BatchNorm1d after a linear layer sees one value per channel in a batch of one, which
    train-mode BatchNorm refuses; RESET measures in eval mode and needs no batch."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10)
    )
    one = wb.reset_bn(model, data=small, batch_size=1)
    whole = wb.reset_bn(model, data=small, batch_size=len(small))
    with torch.no_grad():
        hidden = model[1](small.images.flatten(1)).double()
    assert _relative(one[2].running_mean, hidden.mean(0)) < RTOL
    assert _relative(one[2].running_var, hidden.var(0)) < RTOL
    for got, want in zip(_bn_statistics(one), _bn_statistics(whole), strict=True):
        assert _relative(got, want) < RTOL


def test_reset_refuses_a_batchnorm_layer_used_twice(small) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn(self.bn(self.conv(x)))
            return self.head(x.mean((2, 3)))

    with pytest.raises(ValueError, match=r"runs 'bn' 2 times in one forward pass"):
        wb.reset_bn(Twice(), data=small)


# --- REPAIR -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aligned(shipped_pair) -> tuple[nn.Module, nn.Module, object]:
    a, b = shipped_pair
    spec = permutation_spec(a, example_input=torch.zeros(2, 1, 28, 28))
    return a, wb.align(a, b, method="weight", spec=spec), spec


def test_repair_does_not_depend_on_the_batch_size(aligned, small, mnist_test) -> None:
    a, b, spec = aligned
    merged = wb.interpolate(a, b, alpha=0.5)
    images = mnist_test.images[:200]

    def repaired(data, batch_size):
        return wb.repair(merged, [a, b], alpha=0.5, data=data, spec=spec, batch_size=batch_size)

    with torch.no_grad():
        reference = repaired(small, len(small)).eval()(images)
        for name, batching in _batchings(small).items():
            outputs = _run(repaired, small, batching).eval()(images)
            assert _relative(outputs, reference) < RTOL, name


def test_repaired_statistics_equal_the_targets_exactly(aligned, small) -> None:
    a, b, spec = aligned
    alpha = 0.3
    repaired = wb.repair(
        wb.interpolate(a, b, alpha=alpha), [a, b], alpha=alpha, data=small, spec=spec, batch_size=1
    )
    points = repair_points(spec)
    ends = [channel_moments(m, small, points) for m in (a, b)]
    got = channel_moments(repaired, small, points)
    for p in points:
        mean_t = (1 - alpha) * ends[0][p.point][0] + alpha * ends[1][p.point][0]
        std_t = (1 - alpha) * ends[0][p.point][1] + alpha * ends[1][p.point][1]
        live = got[p.point][1] > 1e-6  # a dead channel can only be shifted
        assert _relative(got[p.point][1][live], std_t[live]) < RTOL, p.point
        assert _relative(got[p.point][0], mean_t) < RTOL, p.point


def test_repair_without_batchnorm_with_batches_of_one(small) -> None:
    torch.manual_seed(0)
    a, b = (wb.create_model("cnn", width=0.5, in_channels=1, batch_norm=False) for _ in "ab")
    spec = permutation_spec(a, example_input=torch.zeros(2, 1, 28, 28))
    merged = wb.interpolate(a, b, alpha=0.5)
    one = wb.repair(merged, [a, b], alpha=0.5, data=small, spec=spec, batch_size=1)
    whole = wb.repair(merged, [a, b], alpha=0.5, data=small, spec=spec, batch_size=len(small))
    with torch.no_grad():
        assert _relative(one(small.images), whole(small.images)) < RTOL


# --- the one-working-model engine: lmc_curve and loss_plane ---------------------------------


@pytest.mark.parametrize("bn", ["reset", "repair"])
def test_lmc_curve_does_not_depend_on_the_batch_size(aligned, small, bn) -> None:
    a, b, spec = aligned
    curves = [
        wb.lmc_curve(
            a,
            b,
            eval_data=small,
            alphas=3,
            bn=bn,
            spec=spec,
            batch_size=bs,
            cache=False,
            progress=False,
        )
        for bs in (16, len(small))
    ]
    assert _relative(torch.tensor(curves[0].loss), torch.tensor(curves[1].loss)) < RTOL
    assert curves[0].accuracy.tolist() == curves[1].accuracy.tolist()


def test_loss_plane_reset_does_not_depend_on_the_batch_size(small) -> None:
    trio = wb.load_quickstart_models(seeds=(0, 1, 2))
    planes = [
        wb.loss_plane(
            trio, eval_data=small, resolution=2, batch_size=bs, cache=False, progress=False
        )
        for bs in (16, len(small))
    ]
    assert _relative(torch.tensor(planes[0].loss), torch.tensor(planes[1].loss)) < RTOL


# --- exemplars ------------------------------------------------------------------------------


def _exemplars(model: nn.Module, data: object) -> fv.Exemplars:
    return fv.top_exemplars(
        model,
        layer="features.conv3",
        data=data,
        channels=[0, 5, 7],
        k=4,
        cache=False,
        progress=False,
    )


def test_exemplars_of_a_shuffled_loader_are_those_of_the_dataset(shipped_pair, small) -> None:
    model = shipped_pair[0]
    sequential = _exemplars(model, small)
    loader = DataLoader(
        TensorDataset(small.images, small.targets),
        batch_size=37,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    shuffled = _exemplars(model, loader)
    assert torch.equal(shuffled.indices, sequential.indices)
    torch.testing.assert_close(shuffled.scores, sequential.scores, rtol=RTOL, atol=1e-6)
    assert torch.equal(shuffled.images, sequential.images)
    for c in range(3):
        for r in range(4):
            assert torch.equal(shuffled.images[c, r], small[int(shuffled.indices[c, r])][0])


class _Noisy(Dataset):
    """Every read of an image adds fresh noise (a random augmentation)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i] + 0.5 * torch.randn_like(self.images[i]), 0


def test_exemplar_images_are_the_ones_that_produced_the_scores(shipped_pair, small) -> None:
    """With a random augmentation, reading ``dataset[i]`` again gives another image: the
    returned images are the ones the model scored."""
    model = shipped_pair[0]
    torch.manual_seed(0)
    found = _exemplars(model, DataLoader(_Noisy(small.images), batch_size=50, shuffle=True))
    seen = []
    handle = model.features.conv3.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model.eval()(found.images.flatten(0, 1))
    handle.remove()
    rescored = seen[0][:, [0, 5, 7]].flatten(2).amax(2).reshape(3, 4, 3)
    own = rescored[torch.arange(3)[:, None], torch.arange(4), torch.arange(3)[:, None]]
    torch.testing.assert_close(own, found.scores, rtol=RTOL, atol=1e-5)


def test_exemplars_of_an_iterable_dataset_have_unknown_indices(shipped_pair, small) -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            return (small[i] for i in range(len(small)))

    model = shipped_pair[0]
    found = _exemplars(model, DataLoader(Stream(), batch_size=50))
    assert torch.equal(found.indices, torch.full((3, 4), -1))
    assert torch.equal(found.images, _exemplars(model, small).images)


def test_exemplars_refuse_an_unbatched_loader(shipped_pair, small) -> None:
    loader = DataLoader(TensorDataset(small.images, small.targets), batch_size=None)
    with pytest.raises(ValueError, match=r"DataLoader with batch_size=None"):
        _exemplars(shipped_pair[0], loader)


def test_layer_exemplars_view_uses_the_dataset_images(shipped_pair, small) -> None:
    comparison = fv.compare_layer(
        *shipped_pair, layer="features.conv2", data=small, method="weight"
    )
    found = fv.layer_exemplars(comparison, small, [0, 1], k=2, cache=False, progress=False)
    for exemplars in found.values():
        for c in range(2):
            for r in range(2):
                index = int(exemplars.indices[c, r])
                assert torch.equal(exemplars.images[c, r], small.images[index])
