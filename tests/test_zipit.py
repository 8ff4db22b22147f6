"""ZipIt!: planted permutations merge back exactly (N = 2 and 3), the merge and unmerge
matrices, within-model merges and their budget, partial zipping, groups that only take
permutations, the validation search through merge_many, bad input, purity."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import workbench as wb
import workbench.merging.zipping as zipit_module
from tests.conftest import assert_state_equal, state_copy
from workbench.alignment.statistics import collect_statistics
from workbench.graph import permutation_spec
from workbench.merging.zipping import (
    DEFAULT_WITHIN_BUDGET,
    DEFAULT_WITHIN_WEIGHT,
    WITHIN_BUDGET_GRID,
    WITHIN_WEIGHT_GRID,
    merge_matrices,
    zip_features,
)
from workbench.merging.zipping_partial import valid_stops


def tiny(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return wb.create_model("cnn", width=0.25, in_channels=1)


@pytest.fixture(scope="module")
def planted(tiny_train):
    """A tiny model, its spec and two randomly permuted copies (same function)."""
    model = tiny(0)
    spec = permutation_spec(model, example_input=tiny_train.images[:2])
    copies = [
        wb.apply_permutation(model, spec=spec, perm=wb.random_permutation(spec, s)) for s in (1, 2)
    ]
    return model, spec, copies


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize(
    "alpha, beta", [(DEFAULT_WITHIN_WEIGHT, DEFAULT_WITHIN_BUDGET), (1.0, 1.0)]
)
def test_planted_permutations_merge_back_exactly(planted, tiny_train, count, alpha, beta) -> None:
    model, spec, copies = planted
    models = [model, *copies][:count]
    before = [state_copy(m) for m in models]
    found = wb.zipit_merge(
        models, spec=spec, data=tiny_train, within_weight=alpha, within_budget=beta, progress=False
    )
    merged = found.model
    for m, state in zip(models, before, strict=True):
        assert_state_equal(m, state)
    x = tiny_train.images  # the units that never fire on them may pair with anything
    assert (outputs(merged, x) - outputs(model, x)).abs().max() < 1e-4
    if beta == 0:
        assert all(sum(w) == 0 for w in found.report.within.values())
    # merged features follow model 0's order: the live units' weights are model 0's own
    conv1 = model.features.conv1.weight
    assert torch.allclose(merged.features.conv1.weight, conv1, atol=1e-6)


def test_through_merge_many_without_bn_is_exact(planted, tiny_train) -> None:
    model, _, copies = planted
    result = wb.merge_many(
        [model, *copies], data=tiny_train, method="zipit", bn=None, within_weight=DEFAULT_WITHIN_WEIGHT, within_budget=DEFAULT_WITHIN_BUDGET,
        progress=False,
    )  # fmt: skip
    x = tiny_train.images
    assert (outputs(result.model, x) - outputs(model, x)).abs().max() < 1e-4
    assert result.report.method == "zipit" and result.report.num_models == 3


def test_merge_and_unmerge_matrices(tiny_train) -> None:
    models = [tiny(s) for s in (3, 4, 5)]
    spec = permutation_spec(models[0], example_input=tiny_train.images[:2])
    stats = collect_statistics(models, data=tiny_train, spec=spec, progress=False)["features.conv3"]
    corr = zipit_module.correlation_of(stats)
    labels, within, overruns = zip_features(corr, 3, within_weight=1.0, within_budget=0.5)
    size = stats.size
    assert sorted(labels.unique().tolist()) == list(range(size))
    merges, unmerges = merge_matrices(labels, 3)
    assert all(
        m.shape == (size, size) and u.shape == (size, size)
        for m, u in zip(merges, unmerges, strict=True)
    )
    assert torch.allclose(sum(merges).sum(1), torch.ones(size, dtype=torch.float64))
    for m, u in zip(merges, unmerges, strict=True):
        assert torch.equal(u.sum(1), torch.ones(size, dtype=torch.float64))  # each used once
        assert set(u.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(m > 0, u.T > 0)
    # the budget is kept: floor(beta (N - 1) C / N) within-model merges per model; a model
    # exceeds it only through merges forced when nothing else was left, and each is counted
    budget = (2 * size) // 3 // 2  # beta = 1/2, N = 3
    assert overruns == 0 and all(0 <= w <= budget for w in within), (within, budget, overruns)
    # with no budget, three models block each other here: the forced merges are counted, and
    # they are the only within-model merges a model takes
    _, forced_within, forced = zip_features(corr, 3, within_weight=1.0, within_budget=0.0)
    assert forced > 0 and all(0 <= w <= forced for w in forced_within), (forced_within, forced)


def test_within_model_merges_need_a_budget(tiny_train) -> None:
    # model 0 holds two copies of one feature, which model 1 lacks
    c = 4
    corr = torch.eye(2 * c, dtype=torch.float64)
    corr[0, 1] = corr[1, 0] = 0.95  # A0 ~ A1
    corr[0, c] = corr[c, 0] = 0.5  # A0 ~ B0, less
    for i in range(1, c):
        corr[i, c + i] = corr[c + i, i] = 0.6  # A_i ~ B_i
    labels, within, _ = zip_features(corr, 2, within_weight=1.0, within_budget=1.0)
    assert within[0] >= 1 and labels[0] == labels[1]
    labels, within, overruns = zip_features(corr, 2, within_weight=1.0, within_budget=0.0)
    assert within == [0, 0] and overruns == 0 and labels[0] != labels[1]
    labels, within, _ = zip_features(corr, 2, within_weight=0.5, within_budget=1.0)  # 0.475 < 0.6
    assert labels[0] != labels[1]
    models = [tiny(6), tiny(7)]
    spec = permutation_spec(models[0], example_input=tiny_train.images[:2])
    allowed = wb.zipit_merge(
        models, spec=spec, data=tiny_train, within_weight=1.0, within_budget=1.0, progress=False
    )
    assert sum(sum(w) for w in allowed.report.within.values()) > 0
    refused = wb.zipit_merge(
        models, spec=spec, data=tiny_train, within_weight=1.0, within_budget=0.0, progress=False
    )
    assert all(w == [0, 0] for w in refused.report.within.values())
    assert set(refused.report.overruns.values()) == {0}


def test_partial_zipping(shipped_pair, tiny_train, mnist_test) -> None:
    models, test = list(shipped_pair), mnist_test.subset(torch.arange(0, 1000, 4), "test")
    spec = permutation_spec(models[0], example_input=tiny_train.images[:2])
    names = list(spec.groups)
    assert valid_stops(models[0], spec) == names
    options = {
        "within_weight": DEFAULT_WITHIN_WEIGHT,
        "within_budget": DEFAULT_WITHIN_BUDGET,
        "progress": False,
    }
    full = wb.zipit(models, data=tiny_train, **options).model
    last = wb.zipit(models, data=tiny_train, stop=names[-1], **options).model
    first = wb.zipit(models, data=tiny_train, stop=names[0], **options)
    x = test.images
    assert outputs(first.model, x).shape == outputs(models[0], x).shape
    assert (outputs(last, x) - outputs(full, x)).abs().max() < 1e-4
    ensemble = outputs(wb.ensemble(models), x)
    assert (outputs(first.model, x) - ensemble).norm() < (outputs(full, x) - ensemble).norm()
    accuracy = {
        k: wb.evaluate(m, eval_data=test).accuracy
        for k, m in [("first", first.model), ("full", full)]
    }
    assert accuracy["first"] >= accuracy["full"] - 0.02
    assert first.report.details.stop == names[0] and first.report.details.zipped == names[:1]
    assert not hasattr(first.model, "zipit")  # the report is in the result, not on the model
    # the trunk is shared: one BatchNorm for both heads, reset once; RESET works on it
    reset = wb.reset_bn(first.model, data=tiny_train)
    assert (outputs(reset, x) - outputs(first.model, x)).abs().max() < 1e-4


def test_search_over_the_declared_grid(tiny_train) -> None:
    result = wb.zipit([tiny(10), tiny(11)], data=tiny_train, val_fraction=0.25, progress=False)
    report = result.report
    assert len(report.validation) == len(WITHIN_WEIGHT_GRID) * len(WITHIN_BUDGET_GRID)
    assert report.hyperparameters["within_weight"] in WITHIN_WEIGHT_GRID
    assert report.hyperparameters["within_budget"] in WITHIN_BUDGET_GRID
    assert report.bn == "reset"


class Grouped(nn.Module):
    """A conv, a grouped conv, a classifier: both groups take permutations only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.depthwise(x)))
        return self.fc(x.mean((2, 3)))


def test_groups_that_take_only_permutations_are_permuted_and_reported(tiny_train) -> None:
    torch.manual_seed(0)
    model = Grouped()
    spec = permutation_spec(model, example_input=tiny_train.images[:2])
    copy = wb.apply_permutation(model, spec=spec, perm=wb.random_permutation(spec, 1))
    with pytest.warns(UserWarning, match="could not zip"):
        found = wb.zipit_merge([model, copy], spec=spec, data=tiny_train, progress=False)
    assert set(found.report.permuted) == set(spec.groups) and not found.report.zipped
    merged = found.model
    x = tiny_train.images
    assert (outputs(merged, x) - outputs(model, x)).abs().max() < 1e-4


def test_bad_input_is_refused_before_any_data_pass(shipped_pair, tiny_train, monkeypatch) -> None:
    def no_pass(*args, **kwargs):
        raise AssertionError("a data pass ran before the arguments were checked")

    monkeypatch.setattr(zipit_module, "collect_statistics", no_pass)
    monkeypatch.setattr(wb.merging.many, "collect_statistics", no_pass)  # merge_many's pass
    pair = list(shipped_pair)
    with pytest.raises(ValueError, match=r"within_weight must be in \[0, 1\]"):
        wb.zipit(pair, data=tiny_train, within_weight=1.5)
    with pytest.raises(ValueError, match="within_budget must be"):
        wb.zipit(pair, data=tiny_train, within_budget=(0.0, -0.1))
    with pytest.raises(TypeError, match="within_weight must be a number"):
        wb.zipit_merge(pair, spec=None, data=tiny_train, within_weight="high")
    with pytest.raises(ValueError, match=r"Did you mean 'features\.conv3'"):
        wb.zipit(pair, data=tiny_train, stop="features.conv33")
    with pytest.raises(ValueError, match="at least 2 models"):
        wb.zipit(pair[:1], data=tiny_train)
    with pytest.raises(ValueError, match="at least 2 models"):
        wb.zipit_merge(pair[:1], spec=None, data=tiny_train)
    other = wb.create_model("cnn", width=0.5, in_channels=1)
    with pytest.raises(ValueError):
        wb.zipit([pair[0], other], data=tiny_train)
    with pytest.raises(ValueError):
        wb.zipit_merge([pair[0], other], spec=None, data=tiny_train)
    with pytest.raises(ValueError, match="bn='repair' corrects towards the endpoints"):
        wb.zipit(pair, data=tiny_train, bn="repair")


def test_registered_as_a_merge_method() -> None:
    method = wb.alignment.get_method("zipit")
    assert method.kind == "merge" and method.needs_data and not method.preserves_function
    assert method.search == {
        "within_weight": WITHIN_WEIGHT_GRID,
        "within_budget": WITHIN_BUDGET_GRID,
    }
    assert "zipit" not in wb.alignment.pairwise_methods()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="merges models"):
            wb.align(tiny(0), tiny(1), method="zipit")
