"""Weight matching, activation matching, the statistics they share, and align()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.alignment import (
    activation_matching,
    align,
    apply_permutation,
    collect_statistics,
    inverse,
    match,
    random_permutation,
    weight_matching,
)
from workbench.graph import permutation_spec


@pytest.fixture(scope="module")
def spec(shipped_pair):
    return permutation_spec(shipped_pair[0], example_input=torch.zeros(2, 1, 28, 28))


def _equal_perms(p, q) -> bool:
    return p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)


@pytest.mark.parametrize("name,shape", [("cnn", (2, 1, 28, 28)), ("resnet20", (2, 3, 32, 32))])
def test_weight_matching_recovers_a_planted_permutation(name, shape) -> None:
    torch.manual_seed(0)
    model = wb.create_model(name, in_channels=shape[1]).eval()
    spec = permutation_spec(model, example_input=torch.zeros(*shape))
    planted = random_permutation(spec, seed=5)
    shuffled = apply_permutation(model, spec=spec, perm=planted)
    found = weight_matching(model, shuffled, spec=spec)
    assert _equal_perms(found, inverse(planted))


def test_weight_matching_is_deterministic(shipped_pair, spec) -> None:
    a, b = shipped_pair
    assert _equal_perms(
        weight_matching(a, b, spec=spec, seed=3), weight_matching(a, b, spec=spec, seed=3)
    )


def test_activation_matching_recovers_a_planted_permutation_on_live_units(
    shipped_pair, spec, mnist_train
) -> None:
    a = shipped_pair[0]
    planted = random_permutation(spec, seed=2)
    shuffled = apply_permutation(a, spec=spec, perm=planted)
    data = mnist_train.subset(torch.arange(500), "train")
    found = activation_matching(a, shuffled, data=data, spec=spec, progress=False)
    stats = collect_statistics([a], data=data, spec=spec, progress=False)
    expected = inverse(planted)
    for name, group_stats in stats.items():
        live = group_stats.std(0) > 0  # dead units correlate with nothing: any order is fine
        assert live.sum() > group_stats.size // 2
        assert torch.equal(found[name][live], expected[name][live]), name


def test_statistics_match_a_direct_computation(shipped_pair, spec, mnist_train) -> None:
    a, b = shipped_pair
    data = mnist_train.subset(torch.arange(300), "train")
    stats = collect_statistics([a, b], data=data, spec=spec, batch_size=128, progress=False)
    captured: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    for key, model in (("a", a), ("b", b)):
        handle = model.features.relu2.register_forward_hook(
            lambda _m, _i, out, key=key: captured[key].append(out)
        )
        with torch.no_grad():
            model(data.images)
        handle.remove()
    channels = a.features.conv2.out_channels
    rows = [captured[k][0].movedim(1, -1).reshape(-1, channels).double() for k in ("a", "b")]
    stacked = torch.cat(rows, 1)
    group = stats["features.conv2"]
    assert group.count == len(stacked)
    torch.testing.assert_close(group.mean, stacked.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(group.covariance, torch.cov(stacked.T), rtol=1e-4, atol=1e-6)
    corr = torch.corrcoef(stacked.T)[:channels, channels:]
    live = (group.std(0)[:, None] > 0) & (group.std(1)[None, :] > 0)
    torch.testing.assert_close(group.correlation()[live], corr[live], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["none", "weight", "activation"])
def test_align_returns_the_same_function(shipped_pair, spec, mnist_train, mnist_test, method):
    a, b = shipped_pair
    aligned = align(
        a,
        b,
        method=method,
        data=mnist_train,
        spec=spec,
        **({"progress": False} if method == "activation" else {}),
    )
    x = mnist_test.images[:64]
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), b(x), rtol=1e-4, atol=1e-4)
    changed = any(not torch.equal(v, aligned.state_dict()[k]) for k, v in b.state_dict().items())
    assert changed == (method != "none")


def test_alignment_removes_most_of_the_barrier(shipped_pair, spec, mnist_train, mnist_test):
    """Measured on the shipped pair (endpoints 97.95% after RESET): naive + RESET barrier
    1.89, midpoint 43.8%; weight matching + RESET 0.03 (97.0%); activation matching + RESET
    0.05 (96.6%). Issue 3's target is a gap of 1.5 points over all six pairs; one pair gets
    half a point of slack (a few test images) for other machines' float rounding."""
    a, b = shipped_pair
    kwargs = {"alphas": [0, 0.5, 1], "bn": "reset", "data": mnist_train, "progress": False}
    naive = wb.lmc_curve(a, b, eval_data=mnist_test, **kwargs)
    for method in ("weight", "activation"):
        aligned = align(a, b, method=method, data=mnist_train, spec=spec)
        curve = wb.lmc_curve(a, aligned, eval_data=mnist_test, spec=spec, **kwargs)
        assert curve.barrier < 0.1 * naive.barrier, method
        assert curve.midpoint_accuracy > curve.accuracy[[0, -1]].mean() - 0.02, method


def test_bad_input_fails_before_any_work(shipped_pair, spec, mnist_train) -> None:
    a, _ = shipped_pair
    width = wb.checkpoint_metadata(a)["architecture"]["width"]
    wider = wb.create_model("cnn", in_channels=1, width=2 * width)
    with pytest.raises(ValueError, match="differ in width"):
        weight_matching(a, wider)
    other = wb.create_model("vgg11", in_channels=1, width=0.25)
    with pytest.raises(ValueError, match="different architecture"):
        align(a, other)
    spec_vgg = permutation_spec(other, example_input=torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="built for another architecture"):
        weight_matching(a, a, spec=spec_vgg)
    rgb = torch.utils.data.TensorDataset(
        torch.zeros(8, 3, 28, 28), torch.zeros(8, dtype=torch.long)
    )
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(2, 3, 28, 28\)"):
        activation_matching(a, a, data=rgb, spec=spec, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        match(a, a, method="magic")
    with pytest.raises(ValueError, match="needs data"):
        align(a, a, method="activation")


def test_matching_does_not_modify_inputs(shipped_pair, spec, mnist_train) -> None:
    a, b = shipped_pair
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    weight_matching(a, b, spec=spec)
    activation_matching(
        a, b, data=mnist_train.subset(torch.arange(200), "train"), spec=spec, progress=False
    )
    for model, saved in zip((a, b), before, strict=True):
        assert not model.training
        for key, value in model.state_dict().items():
            assert torch.equal(value, saved[key])


def test_weight_matching_on_a_model_without_batchnorm() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    spec = permutation_spec(model, example_input=torch.zeros(2, 6))
    planted = random_permutation(spec, 4)
    found = weight_matching(model, apply_permutation(model, spec=spec, perm=planted), spec=spec)
    assert _equal_perms(found, inverse(planted))


class _Grouped(nn.Module):
    """A ResNeXt-style block: 1x1 conv, grouped 3x3 conv (4 groups), 1x1 conv, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.grouped = nn.Sequential(
            nn.Conv2d(24, 24, 3, padding=1, groups=4), nn.BatchNorm2d(24), nn.ReLU()
        )
        self.expand = nn.Sequential(nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.head(x.mean((2, 3)))


def test_grouped_convolutions_give_blocked_groups_that_matching_recovers() -> None:
    torch.manual_seed(0)
    model, x = _Grouped().eval(), torch.randn(8, 3, 8, 8)
    spec = permutation_spec(model, example_input=x)
    assert spec.coverage() == 1.0
    assert {n: g.blocks for n, g in spec.groups.items()} == {
        "stem.0": 1, "reduce.0": 4, "grouped.0": 4
    }  # fmt: skip
    grouped_in = [ax for ax in spec.groups["reduce.0"].axes if ax.key == "grouped.0.weight"]
    assert [(ax.axis, ax.grouped, ax.role) for ax in grouped_in] == [(1, 4, "in")]
    loaded = wb.PermutationSpec.from_dict(spec.to_dict())  # the structure survives JSON
    assert loaded.groups["reduce.0"].blocks == 4
    assert [ax.grouped for ax in loaded.groups["reduce.0"].axes] == [
        ax.grouped for ax in spec.groups["reduce.0"].axes
    ]
    planted = random_permutation(spec, seed=5)
    block_of = torch.arange(24) // 6
    assert torch.equal(block_of[planted["reduce.0"]], block_of)  # moves within blocks only
    assert not torch.equal(planted["reduce.0"], torch.arange(24))
    shuffled = apply_permutation(model, spec=spec, perm=planted)
    with torch.no_grad():
        torch.testing.assert_close(shuffled(x), model(x), rtol=0, atol=1e-5)
    assert _equal_perms(weight_matching(model, shuffled, spec=spec), inverse(planted))
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 8, 8), torch.zeros(64).long())
    found = activation_matching(model, shuffled, data=data, spec=spec, progress=False)
    assert _equal_perms(found, inverse(planted))
    # a permutation across blocks is refused with the reason
    across = {**planted, "reduce.0": torch.arange(24).roll(1)}
    with pytest.raises(ValueError, match="moves channels between blocks"):
        apply_permutation(model, spec=spec, perm=across)
    # CCA cannot pass a grouped convolution: those groups get block permutations
    cca = match(
        model, shuffled, method="cca", data=data, spec=spec, gamma=1e-3, progress=False
    ).transform
    eye = torch.eye(24, dtype=torch.float64)
    torch.testing.assert_close(cca["reduce.0"], eye[inverse(planted)["reduce.0"]])
