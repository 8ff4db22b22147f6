"""C2M3: cycle-consistent multi-model merging (Crisostomi et al., NeurIPS 2024).

Pairwise matching gives a permutation for every ordered pair of models, and nothing makes
them agree: going A -> B -> C -> A need not bring A's channels back where they were. C2M3
gives every model ``i`` one permutation per group, taking its channels into a shared
*universe* order; the map from model j to model i is then ``P_i^-1 P_j``, and every cycle of
such maps is the identity by construction. The permutations are chosen together, data
free, to maximize the weight-matching objective over all pairs,

    f = sum over pairs i < j of <U_i, U_j>,   U_i = model i's parameters in universe order,

the quantity MergeMany raises too (:func:`~workbench.alignment.weight.weight_objective`
of the models in universe order). What differs is the optimizer: MergeMany changes one
group of one model at a time (a coordinate descent); C2M3 moves every group of every model
at once, by Frank-Wolfe over the Birkhoff polytope (each permutation relaxed to a doubly
stochastic matrix ``M``, channels mixed as ``new = M @ old`` along each axis the group
permutes):

1. the gradient of ``f`` with respect to every ``M`` (autograd);
2. the linear maximization oracle: for each model and group, the permutation matrix ``S``
   that maximizes ``<gradient, S>`` (one linear assignment, within blocks where the group
   has them);
3. an exact line search on ``M + t (S - M)``, ``t`` in [0, 1]: ``f`` is a polynomial in
   ``t`` of degree twice the number of permuted axes of a tensor (4 for convolutions),
   known exactly from that many + 1 evaluations;

until the Frank-Wolfe gap ``sum <gradient, S - M>`` (which bounds how much a step can
still gain) falls below ``tol * |f|``, or ``max_iter`` steps. Each relaxed matrix is
then projected onto the nearest permutation (the assignment maximizing ``<M, P>``).

Where this follows the paper and where it departs:

* **The universe is model 0's order** (``anchor=True``, the default): model 0's matrices
  stay the identity and only the others move. ``f`` of permutations does not change when
  every model's permutation is composed with the same one, so this loses no solution and
  keeps every cycle consistent; what it removes is the direction in which all models
  move together. The paper moves every model's matrices: from the same start the
  Frank-Wolfe steps of two models then chase each other, and the descent stalls far from
  a permutation. Measured on a shipped quickstart CNN and a randomly permuted copy of it
  (``tests/test_c2m3.py``): anchored, the copy's permutation is found exactly in one
  step; every model moving (``anchor=False``, the paper's procedure), 500 steps end
  at about half the objective (258 and 238 of 525 from the identity and the barycenter),
  and the permutation is wrong.
* The start of the moving models is the paper's choice for merging: the barycenter of
  the permutations (all entries ``1 / n``) perturbed by up to 1 % and scaled back to
  doubly stochastic by Sinkhorn's iterations (POT), from ``seed``; ``init="identity"``
  starts from the models as they are (the paper's choice for two models).
* The line search is exact (the polynomial above) where the authors' code searches ``t``
  numerically (``fminbound``); the stopping rule is the Frank-Wolfe gap, not five steps
  without improvement.
* Parameters only: BatchNorm running statistics are permuted along but are not weights to
  match (as in :func:`~workbench.alignment.weight.weight_matching`).
* Everything is computed in float64: the line search compares values of ``f`` that
  differ by far less than float32 resolves late in the descent.

Each step costs one forward and backward pass of the mixing (dense products of size
channels^2 per permuted axis, for every model) plus ``2k + 1`` forward passes for the line
search, and one assignment per group and model: cubic in the width, unlike weight
matching's gathers. It is meant for the models of CIFAR-scale studies; on wide networks
expect minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import ot
import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment.registry import register_method
from workbench.alignment.weight import assignment
from workbench.data import DataLike
from workbench.graph import Axis, PermutationSpec, resolve_spec
from workbench.graph.transforms import Permutation, apply_permutation, compose, inverse
from workbench.validation import check_choice, check_int, check_models, check_number
from workbench.vocabulary import keyword_only

__all__ = ["UniverseMatching", "c2m3_matching", "match_to_universe", "merge_c2m3"]

INITS = ("barycenter", "identity")
PERTURBATION = 0.01  # the barycenter start's noise, relative to its entries (the paper's)

Mixing = dict[str, torch.Tensor]  # group -> doubly stochastic (size x size) matrix


@dataclass(frozen=True)
class UniverseMatching:
    """What :func:`match_to_universe` found.

    ``permutations[i]``: model i's channels in universe order (apply it with
    ``apply_permutation(models[i], spec=spec, perm=permutations[i])``). ``objective``:
    ``f`` of those permutations (the sum over pairs of the universe models' parameter
    inner products, counting only the tensors the spec permutes), ``relaxed``: ``f`` of
    the doubly stochastic matrices the descent ended at, ``history``: ``f`` after each
    step, ``gap``: the last Frank-Wolfe gap, ``converged``: whether it fell below
    ``tol * |f|`` (or no step gained any more) before ``max_iter`` steps."""

    permutations: list[Permutation]
    objective: float
    relaxed: float
    history: list[float] = field(repr=False)
    gap: float
    converged: bool

    @property
    def steps(self) -> int:
        """How many Frank-Wolfe steps were taken."""
        return len(self.history)

    def pairwise(self, i: int, j: int) -> Permutation:
        """The permutation that puts model ``j``'s channels in model ``i``'s order:
        ``apply_permutation(models[j], spec=spec, perm=...)`` aligned to ``models[i]``.
        Cycle-consistent: composing the maps around any cycle gives the identity."""
        return compose(self.permutations[j], inverse(self.permutations[i]))


def _mix(tensor: torch.Tensor, ax: Axis, matrix: torch.Tensor, size: int) -> torch.Tensor:
    """``tensor`` with the group's channels along ``ax`` mixed by ``matrix``: ``new[i] =
    sum_j matrix[i, j] old[j]``. For a permutation matrix (``matrix[i, p[i]] = 1``) this
    is :func:`~workbench.graph.transforms.permute_axis` with ``p``."""
    if ax.grouped != 1:  # a grouped convolution's input: each part by its diagonal block
        parts = tensor.unflatten(0, (ax.grouped, -1))  # (groups, rows, local, ...)
        local = parts.shape[2]
        blocks = torch.stack(
            [
                matrix[b * local : (b + 1) * local, b * local : (b + 1) * local]
                for b in range(ax.grouped)
            ]
        )
        flat = parts.flatten(3) if parts.ndim > 3 else parts.unsqueeze(-1)
        mixed = torch.einsum("gij,grjk->grik", blocks, flat)
        return mixed.reshape(parts.shape).flatten(0, 1)
    moved = tensor.movedim(ax.axis, 0)
    start, stop = ax.offset, ax.offset + size * ax.block
    part = moved[start:stop].reshape(size, -1)  # a channel's block entries stay together
    mixed = (matrix @ part).reshape(stop - start, *moved.shape[1:])
    return torch.cat([moved[:start], mixed, moved[stop:]]).movedim(0, ax.axis)


class _Problem:
    """The objective of C2M3 for ``models`` under ``spec``: every permuted parameter of
    every model, and the (group, axis) pairs that mix it."""

    def __init__(self, models: Sequence[nn.Module], spec: PermutationSpec) -> None:
        self.spec = spec
        first = dict(models[0].named_parameters())
        self.device = next(iter(first.values())).device
        self.axes: dict[str, list[tuple[str, Axis]]] = {}
        for name, group in spec.groups.items():
            for ax in group.axes:
                if ax.key in first:
                    self.axes.setdefault(ax.key, []).append((name, ax))
        self.weights = [
            {
                k: p.detach().to(self.device, torch.float64)
                for k, p in m.named_parameters()
                if k in self.axes
            }
            for m in models
        ]
        # f is a polynomial of this degree along a line (2 x the most permuted tensor axes)
        self.degree = 2 * max(
            (len({ax.axis for _, ax in axes}) for axes in self.axes.values()), default=1
        )

    def universe(self, i: int, mixing: Mixing) -> dict[str, torch.Tensor]:
        """Model ``i``'s permuted parameters mixed by ``mixing``."""
        out = {}
        for key, axes in self.axes.items():
            tensor = self.weights[i][key]
            for name, ax in axes:
                tensor = _mix(tensor, ax, mixing[name], self.spec.groups[name].size)
            out[key] = tensor
        return out

    def objective(self, mixings: Sequence[Mixing]) -> torch.Tensor:
        """``f``: the sum over pairs of models of their mixed parameters' inner products,
        as ``(|sum_i U_i|^2 - sum_i |U_i|^2) / 2`` (one pass over the models, not over
        the pairs)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        for i, mixing in enumerate(mixings):
            for key, tensor in self.universe(i, mixing).items():
                total = total - tensor.square().sum()
                sums[key] = tensor if key not in sums else sums[key] + tensor
        for tensor in sums.values():
            total = total + tensor.square().sum()
        return total / 2


def _one_hot(perm: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The permutation matrix of ``perm``: ``matrix[i, perm[i]] = 1``."""
    matrix = torch.zeros(len(perm), len(perm), dtype=torch.float64, device=device)
    matrix[torch.arange(len(perm)), perm.to(device)] = 1.0
    return matrix


def _start(
    spec: PermutationSpec, init: str, generator: torch.Generator, device: torch.device
) -> Mixing:
    """One model's starting matrices: the identity, or the perturbed barycenter (within
    each block of a block-structured group), made doubly stochastic by Sinkhorn."""
    mixing = {}
    for name, group in spec.groups.items():
        if init == "identity":
            mixing[name] = torch.eye(group.size, dtype=torch.float64, device=device)
            continue
        n = group.block_size
        blocks = []
        for _ in range(group.blocks):
            noise = torch.rand(n, n, generator=generator, dtype=torch.float64)
            kernel = (1.0 + PERTURBATION * noise) / n
            ones = np.ones(n)
            plan = ot.sinkhorn(ones, ones, -np.log(kernel.numpy()), reg=1.0, stopThr=1e-12)
            blocks.append(torch.as_tensor(plan))
        mixing[name] = torch.block_diag(*blocks).to(device)
    return mixing


@keyword_only()
def match_to_universe(
    models: Sequence[nn.Module],
    *,
    spec: PermutationSpec | None = None,
    example_input: torch.Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-6,
    init: str = "barycenter",
    anchor: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> UniverseMatching:
    """C2M3's permutations of ``models`` into one universe order (see the module docstring).

    ``spec`` defaults to ``permutation_spec(models[0], example_input)``. ``max_iter``:
    the most Frank-Wolfe steps (the paper's 200); ``tol``: stop when the Frank-Wolfe gap
    is below ``tol * |f|``; ``init``: ``"barycenter"`` (the paper's start for merging,
    perturbed from ``seed``) or ``"identity"``; ``anchor``: keep model 0's order as the
    universe's (see the module docstring; ``False`` moves every model, as the paper
    does). Deterministic for a given ``seed``.
    """
    check_models(models)
    if len(models) < 2:
        raise ValueError(f"C2M3 matches at least 2 models; got {len(models)}.")
    check_int("max_iter", max_iter, minimum=1)
    check_int("seed", seed)
    check_number("tol", tol, low=0.0)
    check_choice("init", init, INITS)
    check_choice("anchor", anchor, (True, False))
    spec = resolve_spec(models[0], spec, example_input)
    for index, model in enumerate(models):
        spec.check_model(model, f"model {index}")
    problem = _Problem(models, spec)
    generator = torch.Generator().manual_seed(seed)
    moving = range(1 if anchor else 0, len(models))
    mixings = [
        _start(spec, init if i in moving else "identity", generator, problem.device)
        for i in range(len(models))
    ]
    value, gap, history, converged = problem.objective(mixings).item(), float("inf"), [], False
    bar = tqdm(range(max_iter), desc="C2M3", disable=not progress, leave=False)
    for _ in bar:
        leaves = [
            {k: m.clone().requires_grad_(i in moving) for k, m in mixing.items()}
            for i, mixing in enumerate(mixings)
        ]
        variables = [m for i in moving for m in leaves[i].values()]
        grads = iter(torch.autograd.grad(problem.objective(leaves), variables))
        targets, gap = mixings[: len(models) - len(moving)], 0.0
        for i in moving:
            target = {}
            for name, matrix in mixings[i].items():
                grad = next(grads)
                target[name] = _one_hot(assignment(grad, spec.groups[name].blocks), problem.device)
                gap += (grad * (target[name] - matrix)).sum().item()
            targets.append(target)
        if gap <= tol * max(abs(value), 1.0):
            converged = True
            break
        step, new = _line_search(problem, mixings, targets, value)
        if step == 0.0:  # no step gains: stationary to the precision of f
            converged = True
            break
        mixings = [
            {k: m + step * (t[k] - m) for k, m in mixing.items()}
            for mixing, t in zip(mixings, targets, strict=True)
        ]
        value = new
        history.append(value)
        bar.set_postfix_str(f"f={value:.6g} gap={gap:.3g}")
    bar.close()
    permutations = [
        {name: assignment(m, spec.groups[name].blocks) for name, m in mixing.items()}
        for mixing in mixings
    ]
    hard = [{k: _one_hot(p, problem.device) for k, p in perm.items()} for perm in permutations]
    return UniverseMatching(
        permutations=permutations,
        objective=problem.objective(hard).item(),
        relaxed=value,
        history=history,
        gap=gap,
        converged=converged,
    )


def _line_search(
    problem: _Problem, mixings: list[Mixing], targets: list[Mixing], value: float
) -> tuple[float, float]:
    """The step ``t`` in [0, 1] that maximizes ``f(M + t (S - M))``, and ``f`` there.

    ``f`` along the line is a polynomial of degree ``problem.degree``: its values at that
    many + 1 points of [0, 1] give it exactly; its maximum on [0, 1] is at an end or at a
    root of its derivative. The step is checked against ``f`` itself; 0 where nothing
    gains (``value``: ``f`` at ``t = 0``)."""
    degree = problem.degree
    ts = np.linspace(0.0, 1.0, degree + 1)

    def at(t: float) -> float:
        with torch.no_grad():
            return problem.objective(
                [
                    {k: m + t * (target[k] - m) for k, m in mixing.items()}
                    for mixing, target in zip(mixings, targets, strict=True)
                ]
            ).item()

    values = [value] + [at(t) for t in ts[1:]]
    poly = np.polynomial.Polynomial.fit(ts, values, degree, domain=[0.0, 1.0], window=[0.0, 1.0])
    roots = poly.deriv().roots()
    candidates = [0.0, 1.0] + [r.real for r in roots if abs(r.imag) < 1e-9 and 0.0 < r.real < 1.0]
    best = max(candidates, key=poly)
    found = values[-1] if best == 1.0 else (value if best == 0.0 else at(best))
    if found <= value:
        return 0.0, value
    return best, found


def merge_c2m3(
    models: Sequence[nn.Module],
    spec: PermutationSpec,
    *,
    max_iter: int = 200,
    tol: float = 1e-6,
    init: str = "barycenter",
    anchor: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> list[nn.Module]:
    """``models`` permuted into C2M3's universe order (:func:`match_to_universe`): the
    N-model merger of the ``"c2m3"`` method (``merge_many`` averages them and handles
    BatchNorm)."""
    options = dict(max_iter=max_iter, tol=tol, init=init, anchor=anchor, seed=seed)
    found = match_to_universe(models, spec=spec, progress=progress, **options)
    return [
        apply_permutation(model, spec=spec, perm=perm)
        for model, perm in zip(models, found.permutations, strict=True)
    ]


@register_method(
    "c2m3",
    needs_data=False,
    preserves_function=True,
    merger=merge_c2m3,
    color="#AA4499",  # Paul Tol's muted purple: outside the colours others get by default
    marker="p",
)
@keyword_only(("spec", "data"))
def c2m3_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    spec: PermutationSpec | None = None,
    data: DataLike | None = None,
    example_input: torch.Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-6,
    init: str = "barycenter",
    anchor: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> Permutation:
    """The permutation of ``model_b``'s channels into ``model_a``'s order that C2M3 finds
    for the two (:func:`match_to_universe`; ``data`` is not used: the method is data
    free). Apply it with ``apply_permutation(model_b, spec, perm)``."""
    check_models([model_a, model_b])
    spec = resolve_spec(model_a, spec, example_input, data)
    options = dict(max_iter=max_iter, tol=tol, init=init, anchor=anchor, seed=seed)
    found = match_to_universe([model_a, model_b], spec=spec, progress=progress, **options)
    return found.pairwise(0, 1)
