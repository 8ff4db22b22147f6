"""C2M3 (cycle-consistent multi-model merging): the objective and its gradient against the
paper's formulas written out here for an MLP, the soft channel mixing against the
library's permutations on structured graphs (concatenations, grouped convolutions,
flatten blocks), planted permutations found exactly, cycle consistency, the Frank-Wolfe
descent's bookkeeping, the departure from the paper measured, and bad inputs.

The invariants every registered method passes (a model merged with itself or with a
permuted copy comes back; beats averaging, near weight matching on trained pairs) run in
``tests/test_merge_invariants.py``, which reads the registry."""

from __future__ import annotations

import pytest
import torch
from test_graph_structured import DualPath, SplitAttention
from torch import nn

import workbench as wb
from workbench.alignment.c2m3 import _one_hot, _Problem, match_to_universe
from workbench.alignment.weight import weight_objective
from workbench.graph import permutation_spec
from workbench.graph.transforms import compose, identity_permutation, inverse, permute_state


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


class Flattening(nn.Module):
    """A convolution read by a linear layer through ``flatten``: each channel owns a block
    of the linear layer's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.out = (
            nn.Conv2d(3, 4, 3),
            nn.Linear(4 * 10 * 10, 5),
            nn.Linear(5, 3),
        )

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def _doubly_stochastic(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random point of the Birkhoff polytope: a convex combination of 4 permutations."""
    weights = torch.rand(4, generator=generator, dtype=torch.float64)
    weights /= weights.sum()
    perms = [torch.randperm(n, generator=generator) for _ in range(4)]
    return sum(
        w * torch.eye(n, dtype=torch.float64)[p] for w, p in zip(weights, perms, strict=True)
    )


def test_objective_and_gradient_are_the_papers_formulas_on_an_mlp() -> None:
    """Three MLPs 6-5-4-3, every model's two hidden groups at random doubly stochastic
    matrices M (channels mixed as M @ x). Written out from the paper: each layer n in
    universe order is U^n = M^n W^n (M^(n-1))^T with bias M^n b^n (M = I at the input and
    output), f = sum over pairs a < b of <U_a, U_b> over layers, and the gradient for
    model a's group n is V^n M_a^(n-1) W_a^n^T + v^n b_a^n^T + V^(n+1)^T M_a^(n+1) W_a^(n+1),
    with V (v) the sum of the other models' U (u)."""
    models = [_mlp(s) for s in range(3)]
    spec = permutation_spec(models[0], example_input=torch.randn(2, 6))
    assert {name: g.size for name, g in spec.groups.items()} == {"0": 5, "2": 4}
    generator = torch.Generator().manual_seed(0)
    mixings = [{"0": _doubly_stochastic(5, generator), "2": _doubly_stochastic(4, generator)}]
    mixings += [
        {"0": _doubly_stochastic(5, generator), "2": _doubly_stochastic(4, generator)}
        for _ in models[1:]
    ]

    def layers(model, mixing):
        w = [model[i].weight.detach().double() for i in (0, 2, 4)]
        b = [model[i].bias.detach().double() for i in (0, 2, 4)]
        m = [
            torch.eye(6, dtype=torch.float64),
            mixing["0"],
            mixing["2"],
            torch.eye(3, dtype=torch.float64),
        ]
        return w, b, m

    universe = []
    for model, mixing in zip(models, mixings, strict=True):
        w, b, m = layers(model, mixing)
        universe.append([(m[n + 1] @ w[n] @ m[n].T, m[n + 1] @ b[n]) for n in range(3)])
    expected = sum(  # the output bias, which no group permutes, is left out: a constant
        (universe[a][n][0] * universe[c][n][0]).sum()
        + (universe[a][n][1] @ universe[c][n][1] if n < 2 else 0.0)
        for a in range(3)
        for c in range(a + 1, 3)
        for n in range(3)
    )
    problem = _Problem(models, spec)
    leaves = [{k: v.clone().requires_grad_(True) for k, v in mix.items()} for mix in mixings]
    value = problem.objective(leaves)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    grads = torch.autograd.grad(value, [leaves[a][g] for a in range(3) for g in ("0", "2")])
    for a in range(3):
        w, b, m = layers(models[a], mixings[a])
        others = [universe[c] for c in range(3) if c != a]
        v = [sum(o[n][0] for o in others) for n in range(3)]
        vb = [sum(o[n][1] for o in others) for n in range(3)]
        for k, n in enumerate((0, 1)):  # group "0" is layer 0's outputs, "2" layer 1's
            closed = (
                v[n] @ m[n] @ w[n].T + torch.outer(vb[n], b[n]) + v[n + 1].T @ m[n + 2] @ w[n + 1]
            )
            torch.testing.assert_close(grads[2 * a + k], closed, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("build", [DualPath, SplitAttention, Flattening, "resnet20"])
def test_mixing_by_a_permutation_matrix_is_the_permutation(build) -> None:
    """Concatenation slices (DualPath), a grouped convolution's input and block-structured
    groups (SplitAttention), flatten blocks (the quickstart CNN's classifier) and residual
    groups (ResNet-20): a one-hot matrix mixes exactly as ``permute_state`` permutes."""
    if build == "resnet20":
        model, x = wb.create_model("resnet20", width=0.5, in_channels=1), torch.randn(2, 1, 28, 28)
    else:
        torch.manual_seed(0)
        model, x = build().eval(), torch.randn(2, 3, 12, 12)
    spec = permutation_spec(model, example_input=x)
    if build is SplitAttention:
        assert any(g.blocks > 1 for g in spec.groups.values())
        assert any(ax.grouped > 1 for g in spec.groups.values() for ax in g.axes)
    if build is DualPath:
        assert any(ax.offset > 0 for g in spec.groups.values() for ax in g.axes)
    if build is Flattening:
        assert any(ax.block > 1 for g in spec.groups.values() for ax in g.axes)
    perm = wb.random_permutation(spec, seed=2)
    problem = _Problem([model, model], spec)
    mixed = problem.universe(0, {k: _one_hot(p, problem.device) for k, p in perm.items()})
    expected = permute_state(model.state_dict(), spec, perm)
    assert mixed.keys() == problem.axes.keys() and mixed
    for key, tensor in mixed.items():
        assert torch.equal(tensor, expected[key].detach().double()), key


@pytest.mark.parametrize("build", [SplitAttention, "quickstart", "resnet20"])
def test_a_planted_permutation_is_found_exactly(build) -> None:
    if build == "quickstart":
        model, x = wb.load_quickstart_models((0,))[0], torch.randn(2, 1, 28, 28)
    elif build == "resnet20":
        torch.manual_seed(1)
        model, x = wb.create_model("resnet20", width=0.5, in_channels=1), torch.randn(2, 1, 28, 28)
    else:
        torch.manual_seed(0)
        model, x = build().eval(), torch.randn(2, 3, 12, 12)
    spec = permutation_spec(model, example_input=x)
    planted = wb.random_permutation(spec, seed=5)
    shuffled = wb.apply_permutation(model, spec=spec, perm=planted)
    found = match_to_universe([model, shuffled], spec=spec, progress=False)
    assert found.converged
    undone = compose(planted, found.pairwise(0, 1))
    assert all(torch.equal(p, torch.arange(len(p))) for p in undone.values())
    assert found.objective == pytest.approx(found.relaxed, rel=1e-9)


def test_every_model_moving_stalls_where_the_anchored_descent_finds_the_copy() -> None:
    """The evidence for the module's one departure: with every model's matrices moving
    (the paper's procedure), the descent on a model and a permuted copy of it stays far
    from the permutation; anchored at model 0's order it finds it in a step or two."""
    model = wb.load_quickstart_models((0,))[0]
    spec = permutation_spec(model, example_input=torch.randn(2, 1, 28, 28))
    shuffled = wb.apply_permutation(model, spec=spec, perm=wb.random_permutation(spec, seed=3))
    anchored = match_to_universe([model, shuffled], spec=spec, progress=False)
    free = match_to_universe(
        [model, shuffled], spec=spec, anchor=False, max_iter=100, progress=False
    )
    assert anchored.steps <= 2 and anchored.converged
    assert not free.converged and free.steps == 100
    assert free.objective < 0.6 * anchored.objective


@pytest.fixture(scope="module")
def resnets() -> tuple[list[nn.Module], wb.PermutationSpec]:
    found = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        found.append(wb.create_model("resnet20", width=0.5, in_channels=1).eval())
    return found, permutation_spec(found[0], example_input=torch.randn(2, 1, 28, 28))


def test_the_objective_is_weight_matchings_and_the_descent_only_climbs(resnets) -> None:
    """f counts the permuted tensors' pairwise inner products, so it moves exactly as
    ``weight_objective`` of the models in universe order; each step raises it, and the
    gap that ends the descent is below the tolerance."""
    models, spec = resnets
    found = match_to_universe(models, spec=spec, max_iter=300, progress=False)
    aligned = [
        wb.apply_permutation(m, spec=spec, perm=p)
        for m, p in zip(models, found.permutations, strict=True)
    ]
    problem = _Problem(models, spec)
    identity = identity_permutation(spec)
    start = problem.objective(
        [{k: _one_hot(p, problem.device) for k, p in identity.items()}] * 3
    ).item()
    gain = weight_objective(aligned) - weight_objective(models)
    assert found.objective - start == pytest.approx(gain, rel=1e-9)
    assert gain > 0
    assert all(
        later >= earlier for earlier, later in zip(found.history, found.history[1:], strict=False)
    )
    assert found.converged and found.gap <= 1e-6 * abs(found.relaxed)
    assert all(torch.equal(p, torch.arange(len(p))) for p in found.permutations[0].values())


def test_pairwise_maps_are_cycle_consistent_and_reproducible(resnets) -> None:
    models, spec = resnets
    found = match_to_universe(models, spec=spec, max_iter=20, progress=False)
    loop = compose(compose(found.pairwise(2, 0), found.pairwise(1, 2)), found.pairwise(0, 1))
    assert all(torch.equal(p, torch.arange(len(p))) for p in loop.values())
    assert all(torch.equal(found.pairwise(1, 0)[k], inverse(found.pairwise(0, 1))[k]) for k in loop)
    again = match_to_universe(models, spec=spec, max_iter=20, progress=False)
    assert again.history == found.history
    other = match_to_universe(models, spec=spec, max_iter=20, seed=1, progress=False)
    assert other.history != found.history  # the start's perturbation comes from the seed


def test_c2m3_runs_through_merge_many_and_align(resnets) -> None:
    models, spec = resnets
    merged = wb.merge_many(models, method="c2m3", spec=spec, bn=None, max_iter=20, progress=False)
    found = match_to_universe(models, spec=spec, max_iter=20, progress=False)
    aligned = [
        wb.apply_permutation(m, spec=spec, perm=p)
        for m, p in zip(models, found.permutations, strict=True)
    ]
    average = wb.average(aligned)
    for key, value in average.state_dict().items():
        torch.testing.assert_close(merged.model.state_dict()[key], value)
    result = wb.match(models[0], models[1], method="c2m3", spec=spec, max_iter=20, progress=False)
    pair = match_to_universe(models[:2], spec=spec, max_iter=20, progress=False)
    assert all(
        torch.equal(result.permutation[k], pair.pairwise(0, 1)[k]) for k in pair.pairwise(0, 1)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"init": "random"}, ValueError, r"init must be one of \['barycenter', 'identity'\]"),
        ({"anchor": "yes"}, ValueError, "anchor must be one of"),
        ({"max_iter": 0}, ValueError, "max_iter must be >= 1"),
        ({"tol": -1.0}, ValueError, "tol must be in"),
        ({"seed": 1.5}, TypeError, "seed must be an integer"),
    ],
)
def test_bad_options_are_refused_before_any_work(resnets, kwargs, error, message) -> None:
    models, spec = resnets
    with pytest.raises(error, match=message):
        match_to_universe(models, spec=spec, progress=False, **kwargs)


def test_one_model_or_mismatched_models_are_refused(resnets) -> None:
    models, spec = resnets
    with pytest.raises(ValueError, match="at least 2 models; got 1"):
        match_to_universe(models[:1], spec=spec)
    wider = wb.create_model("resnet20", width=1, in_channels=1)
    with pytest.raises(ValueError):
        match_to_universe([models[0], wider], spec=spec)
