"""Weight matching where a group permutes two axes of one tensor (a RepVGG block: a 3x3
and a 1x1 convolution from the residual stream back into it, beside an identity branch).

Git Re-Basin's step (the assignment best for the similarity linearized at the current
permutation) never settles here: the descent flips between states until ``max_iter``, so
its answer depends on ``max_iter``. Ours takes only steps that improve the exact
objective, so it ends, and it ends higher than the paper's step anywhere in its
oscillation; a model and a permuted copy of itself are still matched exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import workbench as wb
from workbench.alignment.weight import assignment
from workbench.graph.transforms import identity_permutation, permute_axis


class RepBlock(nn.Module):
    """RepVGG's training-time block: ``relu(bn(conv3x3(x)) + bn(conv1x1(x)) + bn(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn3, self.bn1, self.bn0 = (nn.BatchNorm2d(channels) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn3(self.conv3(x)) + self.bn1(self.conv1(x)) + self.bn0(x))


class RepNet(nn.Module):
    """A stem, three RepVGG blocks on one 16-channel stream, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(*(RepBlock(16) for _ in range(3)))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(F.relu(self.bn(self.stem(x)))).mean((2, 3)))


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def _pair() -> tuple[nn.Module, nn.Module, wb.PermutationSpec]:
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(RepNet().eval())
    return models[0], models[1], wb.permutation_spec(models[0], example_input=X)


def _objective(a: nn.Module, b: nn.Module, spec: wb.PermutationSpec, perm: dict) -> float:
    """``sum <A, B permuted by perm>`` over every parameter."""
    aligned = dict(wb.apply_permutation(b, spec=spec, perm=perm).named_parameters())
    return sum((w.double() * aligned[k].double()).sum().item() for k, w in a.named_parameters())


def _papers_steps(a: nn.Module, b: nn.Module, spec: wb.PermutationSpec) -> list[dict]:
    """Algorithm 1 on the one-group stream: the assignment for the similarity with B
    permuted by the current permutation on every other axis, while it improves that
    similarity's sum; the permutation after each of at most 101 passes."""
    ((name, group),) = spec.groups.items()
    state_a, state_b = dict(a.named_parameters()), dict(b.named_parameters())
    perm, history = identity_permutation(spec), []
    for _ in range(101):
        similarity = torch.zeros(group.size, group.size)
        for ax in group.axes:
            if ax.key not in state_a:
                continue
            w_b = state_b[ax.key].detach()
            for other in group.axes:
                if other.key == ax.key and other.axis != ax.axis:
                    w_b = permute_axis(w_b, other, perm[name])
            rows_a = state_a[ax.key].detach().movedim(ax.axis, 0).reshape(group.size, -1)
            similarity += rows_a @ w_b.movedim(ax.axis, 0).reshape(group.size, -1).T
        best, rows = assignment(similarity), torch.arange(group.size)
        if similarity[rows, best].sum() <= similarity[rows, perm[name]].sum() * (1 + 1e-12):
            break
        perm = {name: best}
        history.append(perm)
    return history


def test_the_papers_step_oscillates_here() -> None:
    a, b, spec = _pair()
    assert len(spec.groups) == 1
    history = _papers_steps(a, b, spec)
    assert len(history) == 101
    assert _objective(a, b, spec, history[99]) != _objective(a, b, spec, history[100])


def test_the_descent_ends_and_beats_the_papers_step() -> None:
    a, b, spec = _pair()
    found = wb.weight_matching(a, b, spec=spec, max_iter=100)
    assert all(torch.equal(found[k], v) for k, v in wb.weight_matching(a, b, spec=spec).items())
    longer = wb.weight_matching(a, b, spec=spec, max_iter=101)
    assert all(torch.equal(found[k], longer[k]) for k in found)
    ours = _objective(a, b, spec, found)
    papers = [_objective(a, b, spec, perm) for perm in _papers_steps(a, b, spec)[-12:]]
    assert ours > max(papers) > _objective(a, b, spec, identity_permutation(spec))


def test_a_permuted_copy_is_matched_exactly() -> None:
    a, _, spec = _pair()
    planted = wb.random_permutation(spec, seed=5)
    shuffled = wb.apply_permutation(a, spec=spec, perm=planted)
    found = wb.weight_matching(a, shuffled, spec=spec)
    aligned = wb.apply_permutation(shuffled, spec=spec, perm=found)
    for (key, w), w_aligned in zip(
        a.state_dict().items(), aligned.state_dict().values(), strict=True
    ):
        assert torch.equal(w, w_aligned), key
