"""Permutation specs derived from the graph: exactness on every supported model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.alignment import apply_permutation, compose, inverse, random_permutation
from workbench.graph import Axis, GraphTraceError, permutation_spec
from workbench.graph.transforms import permute_state
from workbench.graph.verify import randomized_copy


def _randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics and affine parameters that differ per channel (so that a wrongly
    permuted one changes the output), near identity (so that 50 layers keep logits O(1))."""
    generator = torch.Generator().manual_seed(seed)

    def near(center: float, n: int) -> torch.Tensor:
        return center + 0.4 * (torch.rand(n, generator=generator) - 0.5)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data.copy_(near(0.0, len(m.bias)))  # torchvision starts biases at 0
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(near(0.0, n))
            m.running_var.copy_(near(1.0, n))
            m.weight.data.copy_(near(1.0, n))
            m.bias.data.copy_(near(0.0, n))
    return model.eval()


def _sequential() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


CASES = {
    "cnn": (lambda: wb.create_model("cnn", in_channels=1), (2, 1, 28, 28)),
    "vgg11": (lambda: wb.create_model("vgg11", width=0.25), (2, 3, 32, 32)),
    "vgg11_bn": (lambda: wb.create_model("vgg11_bn", width=0.25), (2, 3, 32, 32)),
    "vgg16": (lambda: wb.create_model("vgg16", width=0.25), (2, 3, 32, 32)),
    "vgg16_bn": (lambda: wb.create_model("vgg16_bn", width=0.25), (2, 3, 32, 32)),
    "resnet20": (lambda: wb.create_model("resnet20"), (2, 3, 32, 32)),
    "resnet20x4": (lambda: wb.create_model("resnet20", width=4), (2, 3, 32, 32)),
    "tv:resnet18": (lambda: wb.create_model("tv:resnet18"), (2, 3, 64, 64)),
    "tv:resnet50": (lambda: wb.create_model("tv:resnet50"), (2, 3, 64, 64)),
    "tv:vgg11_bn": (lambda: wb.create_model("tv:vgg11_bn"), (2, 3, 32, 32)),
    "tv:mobilenet_v2": (lambda: wb.create_model("tv:mobilenet_v2"), (2, 3, 64, 64)),
    "tv:densenet121": (lambda: wb.create_model("tv:densenet121"), (2, 3, 64, 64)),
    "sequential": (_sequential, (2, 3, 16, 16)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_random_permutation_preserves_function(name: str) -> None:
    torch.manual_seed(0)
    build, shape = CASES[name]
    model = _randomize_statistics(build())
    x = torch.randn(*shape)
    spec = permutation_spec(model, example_input=x)
    # every hidden conv/linear channel can be aligned: a spec that froze layers would pass
    # the exactness check below, so coverage is asserted too
    assert spec.coverage() == 1.0, spec.summary()
    perm = random_permutation(spec, seed=1)
    permuted = apply_permutation(model, spec=spec, perm=perm)
    with torch.no_grad():
        expected, got = model(x), permuted(x)
    assert (expected - got).abs().max().item() < 1e-4
    # Every permuted axis really changed its tensor (a no-op would pass the check above).
    before, after = model.state_dict(), permuted.state_dict()
    for group in spec.groups.values():
        if torch.equal(perm[group.name], torch.arange(group.size)):
            continue
        for ax in group.axes:
            assert not torch.equal(before[ax.key], after[ax.key]), (group.name, ax)
    # The input model is untouched and the logits layer is reported, not permuted.
    assert any("output" in line for line in spec.report)


def test_residual_groups_are_united() -> None:
    spec = permutation_spec(wb.create_model("resnet20"), example_input=torch.zeros(2, 3, 32, 32))
    # Three residual streams (one per stage) plus two convs inside each of the 9 blocks,
    # less the shared ones: the stem conv, the two projection shortcuts and 9 inner convs.
    stream = spec.groups["conv1"]
    assert "layer1.2.bn2.weight" in {ax.key for ax in stream.axes}
    assert ("layer2.0.conv1.weight", 1) in stream.axes
    assert ("layer2.0.shortcut.0.weight", 1) in stream.axes
    assert len(spec.groups) == 12
    assert {g.size for g in spec.groups.values()} == {16, 32, 64}


def test_flatten_expands_channels_into_blocks() -> None:
    spec = permutation_spec(_sequential(), example_input=torch.zeros(2, 3, 16, 16))
    group = spec.groups["4"]  # the second conv's 16 channels, 7x7 positions each
    fc = [ax for ax in group.axes if ax.key == "7.weight"]
    assert fc == [("7.weight", 1)]
    assert fc[0].block == 49 and fc[0].offset == 0


def test_cat_gives_sliced_consumer_axes() -> None:
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.left, self.right = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
            self.bn = nn.BatchNorm2d(10)
            self.head = nn.Conv2d(10, 5, 1)

        def forward(self, x):
            return self.head(torch.relu(self.bn(torch.cat([self.left(x), self.right(x)], 1))))

    model = _randomize_statistics(Branches())
    x = torch.randn(2, 3, 8, 8)
    spec = permutation_spec(model, example_input=x)
    right = {ax.key: ax for ax in spec.groups["right"].axes}
    assert right["bn.weight"].offset == 4 and right["head.weight"].offset == 4
    permuted = apply_permutation(model, spec=spec, perm=random_permutation(spec, 3))
    with torch.no_grad():
        assert torch.allclose(model(x), permuted(x), atol=1e-5)


def test_depthwise_conv_ties_input_and_output() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.Conv2d(8, 4, 1)
    )
    spec = permutation_spec(model, example_input=torch.zeros(1, 3, 8, 8))
    assert ("2.weight", 0) in spec.groups["0"].axes
    assert "2" not in spec.groups  # no group of its own


def test_grouped_conv_moves_channels_within_its_blocks() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 4, 1)
    )
    x = torch.randn(2, 3, 8, 8)
    spec = permutation_spec(model, example_input=x)
    assert spec.groups["0"].blocks == spec.groups["2"].blocks == 2
    assert spec.coverage() == 1.0
    permuted = apply_permutation(model, spec=spec, perm=random_permutation(spec, seed=3))
    with torch.no_grad():
        assert torch.allclose(model(x), permuted(x), atol=1e-6)


def test_a_grouped_conv_with_one_input_channel_per_group_moves_its_outputs_with_it() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=4), nn.ReLU(), nn.Conv2d(8, 2, 1)
    )
    x = torch.randn(2, 3, 8, 8)
    spec = permutation_spec(model, example_input=x)
    # each input channel's two outputs move with it, a block of two: one group of 4
    assert list(spec.groups) == ["0"] and spec.groups["0"].size == 4
    blocks = {(ax.key, ax.axis): ax.block for ax in spec.groups["0"].axes}
    assert blocks["0.weight", 0] == 1 and blocks["2.weight", 0] == 2
    assert blocks["4.weight", 1] == 2
    assert spec.coverage() == 1.0  # was 8 / 12: the first layer's channels could not move
    permuted = apply_permutation(model, spec=spec, perm=random_permutation(spec, seed=3))
    with torch.no_grad():
        assert torch.allclose(model(x), permuted(x), atol=1e-6)


def test_channel_slicing_with_a_step_is_left_unpermuted() -> None:
    class Slicer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.conv(x)[:, ::2])

    spec = permutation_spec(Slicer(), example_input=torch.zeros(1, 3, 4, 4))
    assert "conv" not in spec.groups
    assert any("conv: a slice with a step along the channel axis" in line for line in spec.report)


class _Branchy(nn.Module):
    """Python control flow on tensor values: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_untraceable_model_names_the_problem() -> None:
    with pytest.raises(GraphTraceError, match=r"_Branchy.*leaf_modules"):
        permutation_spec(_Branchy(), example_input=torch.zeros(1, 3, 4, 4))
    wrapper = nn.Sequential(nn.Conv2d(3, 3, 1), _Branchy())
    spec = permutation_spec(
        wrapper, example_input=torch.zeros(1, 3, 4, 4), leaf_modules=(_Branchy,)
    )
    assert "0" not in spec.groups  # feeds an opaque module: frozen, reported
    assert any("_Branchy" in line for line in spec.report)


def test_example_input_that_does_not_fit() -> None:
    with pytest.raises(
        ValueError, match=r"cannot run on the example input of shape \(2, 3, 28, 28\)"
    ):
        permutation_spec(
            wb.create_model("cnn", in_channels=1), example_input=torch.zeros(2, 3, 28, 28)
        )


def test_spec_rejects_a_model_of_another_architecture() -> None:
    spec = permutation_spec(
        wb.create_model("cnn", in_channels=1), example_input=torch.zeros(2, 1, 28, 28)
    )
    wider = wb.create_model("cnn", in_channels=1, width=2)
    with pytest.raises(ValueError, match="built for another architecture"):
        apply_permutation(wider, spec=spec, perm=random_permutation(spec))


def test_permutation_validation_and_algebra() -> None:
    model = wb.create_model("cnn", in_channels=1)
    spec = permutation_spec(model, example_input=torch.zeros(2, 1, 28, 28))
    bad = random_permutation(spec)
    bad["features.conv1"] = torch.zeros(16, dtype=torch.long)
    with pytest.raises(ValueError, match="not a permutation of range"):
        apply_permutation(model, spec=spec, perm=bad)
    with pytest.raises(ValueError, match="missing groups"):
        apply_permutation(model, spec=spec, perm={})
    p, q = random_permutation(spec, 1), random_permutation(spec, 2)
    twice = apply_permutation(apply_permutation(model, spec=spec, perm=p), spec=spec, perm=q)
    once = apply_permutation(model, spec=spec, perm=compose(p, q))
    for key, value in twice.state_dict().items():
        assert torch.equal(value, once.state_dict()[key])
    back = apply_permutation(
        apply_permutation(model, spec=spec, perm=p), spec=spec, perm=inverse(p)
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, back.state_dict()[key])


def test_axis_behaves_as_a_pair() -> None:
    ax = Axis("conv.weight", 1, offset=4, block=9)
    key, axis = ax
    assert (key, axis) == ("conv.weight", 1) and ax == ("conv.weight", 1)
    assert ax.offset == 4 and ax.block == 9


def test_spec_building_leaves_the_model_untouched() -> None:
    model = wb.create_model("cnn", in_channels=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    permutation_spec(model, example_input=torch.randn(4, 1, 28, 28))
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_spec_is_pure_data_saved_and_loaded_as_json(tmp_path) -> None:
    model = _randomize_statistics(wb.create_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    spec = permutation_spec(model, example_input=x)
    path = spec.save(tmp_path / "resnet20.json")
    loaded = wb.PermutationSpec.load(path)
    assert loaded == spec and loaded.to_dict() == spec.to_dict()
    assert [ax.identity() for ax in loaded.groups["conv1"].axes] == [
        ax.identity() for ax in spec.groups["conv1"].axes
    ]
    assert [ax.role for ax in loaded.groups["conv1"].axes] == [
        ax.role for ax in spec.groups["conv1"].axes
    ]
    # the loaded spec permutes and observes exactly as the traced one
    perm = random_permutation(spec, seed=2)
    with torch.no_grad():
        a = apply_permutation(model, spec=spec, perm=perm)(x)
        b = apply_permutation(model, spec=loaded, perm=perm)(x)
    assert torch.equal(a, b)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), torch.zeros(16).long())
    stats = wb.alignment.collect_statistics([model, model], data=data, spec=loaded, progress=False)
    assert set(stats) == set(spec.groups)
    with pytest.raises(FileExistsError):
        spec.save(path)  # never overwrites
    with pytest.raises(ValueError, match="Not a saved permutation spec"):
        wb.PermutationSpec.from_dict({"groups": []})


def test_leaf_modules_are_recorded_by_name_and_retraced() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), _Branchy())
    spec = permutation_spec(model, example_input=torch.zeros(1, 3, 4, 4), leaf_modules=(_Branchy,))
    assert spec.leaf_modules == (f"{_Branchy.__module__}.{_Branchy.__qualname__}",)
    with pytest.raises(TypeError, match=r"nn\.Module subclasses"):
        permutation_spec(model, example_input=torch.zeros(1, 3, 4, 4), leaf_modules=(3,))


class _Tied(nn.Module):
    """Two layers sharing one weight: the rules see two groups, but permuting either one
    changes the shared tensor for both layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def test_verification_freezes_what_the_rules_got_wrong() -> None:
    model, x = _Tied(), torch.randn(4, 6)
    unchecked = permutation_spec(model, example_input=x, verify=False)
    assert set(unchecked.groups) == {"a", "b"} and unchecked.verification == {}
    perm = random_permutation(unchecked, seed=3)
    broken = copy.deepcopy(model)
    broken.load_state_dict(permute_state(model.state_dict(), unchecked, perm))
    with torch.no_grad():
        assert (broken(x) - model(x)).norm() > 0.1 * model(x).norm()  # the rules alone break it
    with pytest.raises(ValueError, match=r"a\.weight and b\.weight are one shared tensor"):
        apply_permutation(model, spec=unchecked, perm=perm)  # refused, never silently wrong
    spec = permutation_spec(model, example_input=x)
    assert spec.groups == {}
    assert spec.verification["failed_groups"] == ["a", "b"]
    assert spec.verification["relative_error"] == 0.0
    assert any("a: failed verification" in line and "(6 channels)" in line for line in spec.report)
    assert "verified in float32" in spec.summary()


class _Cancelling(nn.Module):
    """Two equal hidden layers whose heads nearly cancel: the outputs are 1e-3 of the sums
    that make them, so float32 rounding alone moves them by about 2e-4."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b = nn.Linear(8, 64), nn.Linear(8, 64)
        self.head_a, self.head_b = nn.Linear(64, 4), nn.Linear(64, 4)
        with torch.no_grad():
            self.b.load_state_dict(self.a.state_dict())
            self.head_a.weight.copy_(100 * torch.randn(4, 64, generator=g))
            near = 1 + 1e-3 * torch.randn(4, 64, generator=g)
            self.head_b.weight.copy_(-self.head_a.weight * near)
            self.head_b.bias.copy_(-self.head_a.bias)

    def forward(self, x):
        return self.head_a(torch.relu(self.a(x))) + self.head_b(torch.relu(self.b(x)))


def test_verification_moves_to_float64_where_float32_rounding_exceeds_the_tolerance() -> None:
    model = _Cancelling()
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    unchecked = permutation_spec(model, example_input=x, verify=False)
    work = randomized_copy(model, seed=0, dtype=torch.float32)
    moved = copy.deepcopy(work)
    moved.load_state_dict(
        permute_state(work.state_dict(), unchecked, random_permutation(unchecked))
    )
    with torch.no_grad():
        rounding = float((moved(x) - work(x)).norm() / work(x).norm())
    assert 1e-4 < rounding < 1e-2  # a right permutation fails a float32 check at 1e-4
    spec = permutation_spec(model, example_input=x)
    v = spec.verification
    assert v["dtype"] == "float64" and v["failed_groups"] == [], spec.summary()
    assert v["float32_noise"] > 1e-5 and v["relative_error"] < 1e-10
    assert set(spec.groups) == set(unchecked.groups) and spec.coverage() == 1.0
    assert "verified in float64" in spec.summary()


def test_verification_costs_two_forward_passes_when_the_spec_is_exact() -> None:
    model = wb.create_model("resnet20")
    spec = permutation_spec(model, example_input=torch.zeros(2, 3, 32, 32))
    v = spec.verification
    assert v["forward_passes"] == 2 and v["failed_groups"] == []
    assert v["relative_error"] < 1e-6 and v["dtype"] == "float32"
    assert v["float32_noise"] is None  # measured only where the float32 check fails
    assert len(spec.groups) == 12


def test_ops_that_return_tuples_without_a_rule_freeze_their_inputs() -> None:
    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
            self.left, self.right = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=2)
            self.head = nn.Conv2d(8, 5, 1)

        def forward(self, x):
            a, b = torch.tensor_split(torch.relu(self.bn(self.stem(x))), 2, dim=1)
            return self.head(torch.cat([self.left(a), self.right(b)], 1)).mean((2, 3))

    model, x = _randomize_statistics(Split()), torch.randn(2, 3, 8, 8)
    spec = permutation_spec(model, example_input=x, verify=False)  # the rules alone are safe here
    assert "stem" not in spec.groups
    assert any("stem: tensor_split returns a tuple of tensors" in line for line in spec.report)
    permuted = apply_permutation(model, spec=spec, perm=random_permutation(spec, seed=1))
    with torch.no_grad():
        assert torch.allclose(model(x), permuted(x), atol=1e-6)


class _Split(nn.Module):
    """Mixed kernels: the channels split in two, each half convolved by its own kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.left, self.right = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=2)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        a, b = torch.split(torch.relu(self.bn(self.stem(x))), [4, 4], dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1)).mean((2, 3))


class _CrossStage(nn.Module):
    """Cross-stage partial: one half passes, the other is processed (with a residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.inner, self.head = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        a, b = torch.relu(self.bn(self.stem(x))).chunk(2, 1)
        return self.head(torch.cat([a, torch.relu(self.inner(b)) + b], 1)).mean((2, 3))


class _Hierarchical(nn.Module):
    """Res2Net-style: each piece is added to the next one's input; two pieces summed."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 1)
        self.p1, self.p2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        a, b, c = torch.chunk(torch.relu(self.stem(x)), 3, dim=1)
        b2 = torch.relu(self.p1(b))
        c2 = torch.relu(self.p2(c + b2))
        return self.head(torch.cat([a + b2, c2], 1)).mean((2, 3))


@pytest.mark.parametrize("build", [_Split, _CrossStage, _Hierarchical])
def test_equal_splits_give_each_piece_its_share_of_the_producer(build) -> None:
    model, x = _randomize_statistics(build()), torch.randn(2, 3, 8, 8)
    spec = permutation_spec(model, example_input=x, verify=False)  # the rules alone are exact
    assert spec.coverage() == 1.0, spec.summary()
    assert "stem" not in spec.groups and "stem[0/" in " ".join(spec.groups)
    perm = random_permutation(spec, seed=1)
    permuted = apply_permutation(model, spec=spec, perm=perm)
    with torch.no_grad():
        assert torch.allclose(model(x), permuted(x), atol=1e-5)
    # each piece owns one slice of the producer's rows
    slices = sorted(
        ax.offset for g in spec.groups.values() for ax in g.axes if ax.key == "stem.weight"
    )
    assert slices == list(range(0, model.stem.out_channels, slices[1] - slices[0]))
    assert permutation_spec(model, example_input=x).verification["failed_groups"] == []


def test_splits_through_a_flattened_channel_are_opaque() -> None:
    class Unaligned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.a, self.b = nn.Conv2d(3, 8, 1), nn.Linear(6, 2), nn.Linear(26, 2)

        def forward(self, x):  # 8 channels of 2 x 2 positions, cut after 6 entries
            a, b = torch.split(self.stem(x).flatten(1), [6, 26], dim=1)
            return self.a(a) + self.b(b)

    spec = permutation_spec(Unaligned(), example_input=torch.randn(2, 3, 2, 2), verify=False)
    assert "stem" not in spec.groups
    assert any("stem: split through a flattened channel's block" in line for line in spec.report)


def test_verification_refuses_outputs_that_are_not_finite() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.full((2, 3, 4, 4), float("inf"))
    with pytest.raises(ValueError, match="outputs on the example input are not finite"):
        permutation_spec(model, example_input=x)
    assert permutation_spec(model, example_input=x, verify=False).groups  # the caller who knows
