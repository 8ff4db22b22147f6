"""Optimal-transport fusion: plans, planted permutations, different widths, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

import workbench as wb
from tests.conftest import assert_state_equal, state_copy
from workbench.alignment import collect_statistics, get_method, ot
from workbench.graph import permutation_spec
from workbench.graph.transforms import GroupMap, inverse, random_permutation
from workbench.modules import state_shapes

QUIET = {"progress": False}


def _cnn(width: float, seed: int, **kwargs) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return wb.create_model("cnn", width=width, in_channels=1, **kwargs)


@pytest.fixture(scope="module")
def trained(mnist_train) -> dict[str, torch.nn.Module]:
    """A quarter-width and a half-width CNN trained for three epochs on mnist-5k."""
    options = {"batch_size": 128, "lr": 0.2, "device": "cpu", "progress": False}
    return {
        "narrow": wb.train_model(_cnn(0.25, 0), data=mnist_train, epochs=3, seed=0, **options),
        "wide": wb.train_model(_cnn(0.5, 1), data=mnist_train, epochs=3, seed=1, **options),
    }


def test_plans_have_uniform_marginals_and_tend_to_the_exact_one() -> None:
    cost = torch.rand(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = ot.exact_plan(cost)
    for plan in (exact, ot.sinkhorn(cost, 0.05), ot.transport_plan(cost, 0.05)):
        assert torch.allclose(plan.sum(1), torch.full((6,), 1 / 6, dtype=torch.float64))
        assert torch.allclose(plan.sum(0), torch.full((4,), 1 / 4, dtype=torch.float64))
    assert (exact > 1e-12).sum() <= 6 + 4 - 1  # a vertex of the transport polytope
    costs = [float((ot.sinkhorn(cost, eps) * cost).sum()) for eps in (0.3, 0.03, 0.001)]
    optimum = float((exact * cost).sum())
    assert costs[0] > costs[1] > costs[2] >= optimum - 1e-6
    assert costs[2] - optimum < 1e-3
    square = torch.rand(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal((ot.exact_plan(square) * 5).sum(1), torch.ones(5, dtype=torch.float64))
    flat = ot.sinkhorn(torch.ones(3, 2), 0.1)  # every pair costs the same
    assert torch.allclose(flat, torch.full((3, 2), 1 / 6, dtype=torch.float64))
    blocked = ot.transport_plan(torch.rand(4, 6), 0.0, blocks=2)
    assert torch.equal(blocked[:2, 3:], torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(6, 4), (3, 7), (5, 5)])
def test_plans_equal_independent_solvers(shape) -> None:
    """The exact plan has the optimal cost of the transportation LP (scipy's HiGHS, the
    solver before POT's emd), and the entropic one is the fixed point of plain Sinkhorn
    iterations (numpy, in the exp domain, far from underflow at this epsilon)."""
    n, m = shape
    cost = torch.rand(n, m, generator=torch.Generator().manual_seed(n * m), dtype=torch.float64)
    rows = np.kron(np.eye(n), np.ones((1, m)))
    columns = np.kron(np.ones((1, n)), np.eye(m))
    lp = linprog(
        cost.numpy().reshape(-1),
        A_eq=np.vstack([rows, columns]),
        b_eq=np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)]),
        method="highs",
    )
    exact = ot.exact_plan(cost)
    assert float((exact * cost).sum()) == pytest.approx(lp.fun, abs=1e-12)
    assert torch.equal(exact * n * m, (exact * n * m).round())  # a vertex, exactly
    epsilon = 0.2
    reg = epsilon * float((cost - cost.min()).mean())
    kernel = np.exp(-cost.numpy() / reg)
    u, v = np.ones(n), np.ones(m)
    for _ in range(5000):
        u = (1 / n) / (kernel @ v)
        v = (1 / m) / (kernel.T @ u)
    expected = u[:, None] * kernel * v[None, :]
    assert np.abs(expected.sum(1) - 1 / n).sum() < 1e-12  # converged
    # to the tolerance of workbench's stopping rule (the row marginal's L1 error < 1e-7)
    found = ot.sinkhorn(cost, epsilon)
    torch.testing.assert_close(found, torch.from_numpy(expected), rtol=0, atol=1e-7)


@pytest.mark.parametrize("epsilon", [0.0, 1e-4])
def test_a_planted_permutation_is_recovered(tiny_model, tiny_train, epsilon) -> None:
    spec = permutation_spec(tiny_model, example_input=tiny_train.images[:2])
    perm = random_permutation(spec, seed=3)
    permuted = wb.apply_permutation(tiny_model, spec=spec, perm=perm)
    maps = wb.ot_maps(tiny_model, permuted, data=tiny_train, spec=spec, epsilon=epsilon, **QUIET)
    stats = collect_statistics([tiny_model], data=tiny_train, spec=spec, **QUIET)
    for name, p in inverse(perm).items():
        # every unit that ever fires: dead ones (an untrained fc1 has some) are all alike
        live = stats[name].std(0) > 0
        expected = torch.eye(len(p), dtype=torch.float64)[p][live]
        assert isinstance(maps[name], GroupMap)
        out, into = maps[name]
        assert live.sum() >= len(p) // 2
        if epsilon == 0:
            assert torch.equal(out[live], expected) and torch.equal(into[:, live], expected.T)
        else:
            assert (out[live] - expected).abs().max() < 1e-4
            assert (into[:, live] - expected.T).abs().max() < 1e-4
    if epsilon == 0:  # a permutation: B's function, and activation matching's assignment
        aligned = wb.align(tiny_model, permuted, method="ot", data=tiny_train, spec=spec, **QUIET)
        x = tiny_train.images[:64]
        with torch.no_grad():
            assert (aligned(x) - tiny_model.eval()(x)).abs().max() < 1e-5
        matched = wb.activation_matching(tiny_model, permuted, data=tiny_train, spec=spec, **QUIET)
        for name, p in inverse(perm).items():
            live = stats[name].std(0) > 0
            assert torch.equal(matched[name][live], p[live])


@pytest.mark.parametrize(("width_a", "width_b"), [(0.25, 0.5), (0.5, 0.25)])
def test_models_of_other_widths_come_out_at_the_reference_width(
    tiny_train, width_a, width_b
) -> None:
    model_a, model_b = _cnn(width_a, 0), _cnn(width_b, 1)
    spec_a = permutation_spec(model_a, example_input=tiny_train.images[:2])
    spec_b = permutation_spec(model_b, example_input=tiny_train.images[:2])
    result = wb.match(model_a, model_b, method="ot", data=tiny_train, epsilon=0.03, **QUIET)
    assert result.kind == "linear" and result.spec_b is not None
    for name, group in spec_a.groups.items():
        n_a, n_b = group.size, spec_b.groups[name].size
        assert n_a != n_b
        out, into = result.transform[name]
        assert out.shape == (n_a, n_b) and into.shape == (n_b, n_a)
        assert torch.allclose(out.sum(1), torch.ones(n_a, dtype=torch.float64))
    aligned = wb.alignment.apply_alignment(model_b, result=result, data=tiny_train, model_a=model_a)
    assert state_shapes(aligned) == state_shapes(model_a)
    exact = wb.ot_fusion(model_a, model_b, data=tiny_train, **QUIET)
    assert state_shapes(exact) == state_shapes(model_a)
    again = wb.ot_fusion(model_a, model_b, data=tiny_train, **QUIET)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in exact.state_dict().items())


def test_a_wide_model_fused_into_a_narrow_one_merges_well_above_chance(trained, tiny_train) -> None:
    narrow, wide = trained["narrow"], trained["wide"]
    before = {name: state_copy(m) for name, m in trained.items()}
    aligned = wb.align(narrow, wide, method="ot", data=tiny_train, **QUIET)
    assert state_shapes(aligned) == state_shapes(narrow)
    merged = wb.merge_many(
        [narrow, aligned], data=tiny_train, method="none", bn="reset", **QUIET
    ).model
    metrics = wb.evaluate(merged, eval_data=tiny_train)
    assert math.isfinite(metrics.loss) and metrics.accuracy > 0.5  # chance: 0.1
    # merge_many does the same by itself: B at the reference's widths, averaged, RESET
    direct = wb.merge_many([narrow, wide], data=tiny_train, method="ot", epsilon=0.0, **QUIET)
    assert state_shapes(direct.model) == state_shapes(narrow)
    assert direct.report.permuted_groups == {}
    assert wb.evaluate(direct.model, eval_data=tiny_train).accuracy == pytest.approx(
        metrics.accuracy
    )
    with pytest.raises(ValueError, match=r"architecture|width"):
        wb.merge_many([narrow, wide], data=tiny_train, method="weight", **QUIET)
    for name, model in trained.items():
        assert_state_equal(model, before[name])


def test_merge_many_chooses_epsilon_on_validation(trained, tiny_train) -> None:
    method = get_method("ot")
    assert method.kind == "linear" and method.any_width and method.uses_statistics
    assert method.search["epsilon"] == ot.EPSILON_GRID and ot.EPSILON_GRID[0] == 0.0
    narrow = trained["narrow"]
    other = wb.train_model(
        _cnn(0.25, 5), data=tiny_train, epochs=1, seed=5, device="cpu", progress=False
    )
    result = wb.merge_many([narrow, other], data=tiny_train, method="ot", bn="reset", **QUIET)
    assert result.report.hyperparameters["epsilon"] in ot.EPSILON_GRID
    assert len(result.report.validation) == len(ot.EPSILON_GRID)


def test_collect_statistics_takes_one_spec_per_width(tiny_train) -> None:
    models = [_cnn(0.25, 0), _cnn(0.5, 1)]
    specs = [permutation_spec(m, example_input=tiny_train.images[:2]) for m in models]
    stats = collect_statistics(
        models, data=tiny_train, spec=specs[0], specs=specs, max_batches=1, **QUIET
    )
    group = stats["features.conv2"]
    assert group.sizes == (8, 16) and group.num_models == 2
    assert group.block(0, 1).shape == (8, 16) and group.correlation().shape == (8, 16)
    with pytest.raises(ValueError, match="spec was built for another architecture"):
        collect_statistics(models, data=tiny_train, spec=specs[0], max_batches=1, **QUIET)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("cnn", {"in_channels": 3}, "no permutation group owns"),
        ("cnn", {"in_channels": 1, "num_classes": 5}, "no permutation group owns"),
        ("cnn", {"in_channels": 1, "batch_norm": False}, "another architecture"),
        ("resnet20", {"in_channels": 1}, "another architecture"),
    ],
)
def test_mismatched_architectures_are_refused(
    tiny_model, tiny_train, name, kwargs, message
) -> None:
    model_b = wb.create_model(name, width=0.5, **kwargs)
    with pytest.raises(ValueError, match=message):
        wb.align(tiny_model, model_b, method="ot", data=tiny_train, **QUIET)
    with pytest.raises(ValueError, match=message):
        wb.ot_fusion(tiny_model, model_b, data=tiny_train, **QUIET)


def test_bad_options_are_refused_before_any_data_pass(tiny_model, tiny_train, monkeypatch) -> None:
    def no_pass(*args, **kwargs):
        raise AssertionError("a data pass ran before the options were checked")

    monkeypatch.setattr(ot, "collect_statistics", no_pass)
    model_b = _cnn(0.25, 9)
    before, images = state_copy(model_b), tiny_train.images.clone()
    cases = [
        ({"epsilon": -0.1}, ValueError, r"epsilon must be in \[0"),
        ({"epsilon": math.nan}, ValueError, "finite"),
        ({"epsilon": "small"}, TypeError, "epsilon must be a number"),
        ({"transport": "sinkhorn"}, ValueError, "transport must be one of"),
        ({"transport": "entropic"}, ValueError, "needs epsilon > 0"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            wb.ot_fusion(tiny_model, model_b, data=tiny_train, **options, **QUIET)
        with pytest.raises(error, match=message):
            wb.align(tiny_model, model_b, method="ot", data=tiny_train, **options, **QUIET)
    with pytest.raises(ValueError, match="needs data"):
        wb.align(tiny_model, model_b, method="ot")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        wb.ot_fusion(tiny_model, model_b, data=tiny_train, batch_size=0)
    assert_state_equal(model_b, before)
    assert torch.equal(tiny_train.images, images)


def test_statistics_of_other_models_are_refused(tiny_model, tiny_train) -> None:
    spec = permutation_spec(tiny_model, example_input=tiny_train.images[:2])
    wide = _cnn(0.5, 2)
    specs = [spec, permutation_spec(wide, example_input=tiny_train.images[:2])]
    stats = collect_statistics([tiny_model, wide], data=tiny_train, spec=spec, specs=specs, **QUIET)
    with pytest.raises(ValueError, match="statistics of group"):
        wb.ot_maps(tiny_model, _cnn(0.25, 3), data=tiny_train, spec=spec, statistics=stats)
