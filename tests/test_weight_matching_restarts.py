"""Weight matching and MergeMany from several seeds: the descent ends at a local optimum
that depends on the order the groups (and, for MergeMany, the models) are visited in;
``restarts=k`` returns the answer of the seed with the highest objective among
``seed, ..., seed + k - 1``, the very permutation that seed gives alone. The objective is
checked against ``sum <A, B permuted>`` written out axis by axis, and every MergeMany
step raises the sum over pairs of models: its result is a fixed point of matching each
model to the average of the others."""

from __future__ import annotations

import pytest
import torch
from test_weight_matching_cache import _objective

import workbench as wb
from workbench.alignment.weight import merge_weight_matching, weight_matching, weight_objective
from workbench.graph import permutation_spec
from workbench.graph.transforms import identity_permutation
from workbench.modules import clone, load_weighted_average_


@pytest.fixture(scope="module")
def resnets() -> list[torch.nn.Module]:
    """Three randomly initialized ResNet-20s at half width: on a random pair the descent's
    answer depends on its seed."""
    found = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        found.append(wb.create_model("resnet20", width=0.5, in_channels=1).eval())
    return found


@pytest.fixture(scope="module")
def spec(resnets) -> wb.PermutationSpec:
    return permutation_spec(resnets[0], example_input=torch.randn(2, 1, 28, 28))


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def test_the_objective_is_the_inner_product_of_the_permuted_weights(resnets, spec) -> None:
    a, b, c = resnets
    perm = wb.random_permutation(spec, seed=4)
    permuted = wb.apply_permutation(b, spec=spec, perm=perm)
    expected = _objective(_params(a), _params(b), spec, perm)
    assert weight_objective([a, permuted]) == pytest.approx(expected, rel=1e-12)
    pairs = [(a, b), (a, c), (b, c)]
    total = sum(
        _objective(_params(x), _params(y), spec, identity_permutation(spec)) for x, y in pairs
    )
    assert weight_objective([a, b, c]) == pytest.approx(total, rel=1e-12)


def test_restarts_return_the_seed_with_the_highest_objective(resnets, spec) -> None:
    a, b, _ = resnets
    seeds = range(3, 7)
    alone = [weight_matching(a, b, spec=spec, seed=s) for s in seeds]
    values = [weight_objective([a, wb.apply_permutation(b, spec=spec, perm=p)]) for p in alone]
    assert len({round(v, 6) for v in values}) > 1  # the seeds end at other optima
    best = alone[max(range(len(values)), key=values.__getitem__)]
    found = weight_matching(a, b, spec=spec, seed=3, restarts=4)
    assert all(torch.equal(found[g], best[g]) for g in spec.groups)
    assert max(values) > values[0]  # here restarts improve on the first seed


def test_merge_many_restarts_keep_the_best_merge(resnets, spec) -> None:
    seeds = range(0, 3)
    alone = [merge_weight_matching(resnets, spec, seed=s, progress=False) for s in seeds]
    values = [weight_objective(models) for models in alone]
    assert len({round(v, 6) for v in values}) > 1
    best = alone[max(range(len(values)), key=values.__getitem__)]
    found = merge_weight_matching(resnets, spec, seed=0, restarts=3, progress=False)
    for got, expected in zip(found, best, strict=True):
        for (key, x), y in zip(
            got.state_dict().items(), expected.state_dict().values(), strict=True
        ):
            assert torch.equal(x, y), key
    merged = wb.merge_many(resnets, method="weight", bn=None, restarts=3, progress=False).model
    average = load_weighted_average_(clone(resnets[0]), [m.state_dict() for m in best], [1 / 3] * 3)
    for key, value in average.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)


def test_merge_many_ends_where_no_model_matches_the_others_better(resnets, spec) -> None:
    aligned = merge_weight_matching(resnets, spec, seed=0, progress=False)
    assert weight_objective(aligned) > weight_objective(resnets)
    for i, model in enumerate(aligned):
        rest = [m.state_dict() for j, m in enumerate(aligned) if j != i]
        others = load_weighted_average_(clone(model), rest, [0.5, 0.5])
        perm = weight_matching(others, model, spec=spec, seed=0)
        assert all(torch.equal(p, torch.arange(len(p))) for p in perm.values()), i


@pytest.mark.parametrize("restarts", [0, -2, 1.5, "4"])
def test_restarts_must_be_a_positive_integer(resnets, spec, restarts) -> None:
    with pytest.raises((ValueError, TypeError), match="restarts"):
        weight_matching(*resnets[:2], spec=spec, restarts=restarts)
    with pytest.raises((ValueError, TypeError), match="restarts"):
        merge_weight_matching(resnets, spec, restarts=restarts)
