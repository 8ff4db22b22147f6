"""Weight matching (Ainsworth et al., Git Re-Basin, 2023, Algorithm 1).

Find the permutation of model B's channels that maximizes the inner product between the
two models' weights, one group at a time: with every other group's permutation fixed,
the best permutation of one group is a linear assignment problem. Groups are visited in
a random (seeded) order until a whole pass improves nothing.

One departure from the paper: a group that permutes two different axes of one tensor
(RepVGG's convolutions from a residual stream back into it) makes the objective quadratic
in that group's permutation.
The paper's step, the assignment that is best for the similarity linearized at the
current permutation, then need not improve the objective: on RepVGG-A2 the descent
moved between states pass after pass until ``max_iter``, its answer depending on
``max_iter`` (``benchmarks/weight_matching_loops.py``: objective 517 after 100 passes, 413
after 101). For such a group the paper's step is taken when it improves the exact
objective; otherwise the step with the group's own terms scaled by 1/2, then 1/4, 1/8 and
0 (:data:`LOOP_SCALES`), the first that improves it, or none. Every step improves the
objective, so the descent ends (RepVGG-A2: objective 841). Where no group permutes two
axes of one tensor, every step is exactly the paper's.

For N models, MergeMany (Algorithm 3 of the same paper) weight-matches each model in turn
to the average of the others; it is registered as the method's N-model merger.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment.registry import register_method
from workbench.alignment.weight_similarity import GroupSimilarity, Similarities
from workbench.data import DataLike
from workbench.figures import PALETTE
from workbench.graph import PermutationSpec, resolve_spec
from workbench.graph.transforms import (
    Permutation,
    apply_permutation,
    block_permutation,
    identity_permutation,
)
from workbench.modules import clone, load_weighted_average_
from workbench.validation import check_int, check_models
from workbench.vocabulary import keyword_only

__all__ = ["merge_weight_matching", "weight_matching", "weight_objective"]

LOOP_SCALES = (1.0, 0.5, 0.25, 0.125, 0.0)  # the steps tried, in order, for a group in a loop


def assignment(similarity: torch.Tensor, blocks: int = 1) -> torch.Tensor:
    """The permutation ``p`` maximizing ``sum_i similarity[i, p[i]]`` (scipy's solver);
    with ``blocks``, the best one that keeps every channel in its block (one assignment
    per diagonal block of ``similarity``).

    Each row's maximum and then each column's is subtracted first (where all entries are
    finite): that changes every permutation's sum by the same constant, so not the
    answer, and gives the solver a zero in every row and column to start from (on
    Res2Net's 2048-channel similarities 0.13-0.17 s per solve instead of 0.26 s).
    """
    matrix = similarity.detach().double().cpu().numpy()
    size = len(matrix) // blocks
    parts = []
    for b in range(blocks):
        span = slice(b * size, (b + 1) * size)
        block = matrix[span, span]
        if np.isfinite(block).all():  # (scipy's own errors for the rest)
            block = block - block.max(1, keepdims=True)
            block -= block.max(0, keepdims=True)
        rows, cols = linear_sum_assignment(block, maximize=True)
        if not np.array_equal(rows, np.arange(size)):
            raise RuntimeError("linear_sum_assignment returned an incomplete assignment.")
        parts.append(torch.from_numpy(cols).long())
    return block_permutation(torch.stack(parts))


def _step(
    similarities: Similarities,
    name: str,
    parts: GroupSimilarity,
    perm: Permutation,
    blocks: int,
) -> torch.Tensor | None:
    """Group ``name``'s new permutation, or ``None`` where no step improves the objective.

    Without loops the objective is ``<linear, P>``: the paper's step. With them, the
    assignment for ``linear + s * loops`` for the first ``s`` in :data:`LOOP_SCALES` (1:
    the paper's step) whose assignment improves the exact objective (``<linear, P>`` plus
    the loops' inner product): a backtracking line search on the loops' weight.
    """
    current = perm[name]
    rows = torch.arange(len(current), device=current.device)
    if parts.loops is None:
        best = assignment(parts.linear, blocks).to(current.device)
        old = parts.linear[rows, current].sum().item()
        new = parts.linear[rows, best].sum().item()
        return best if new > old + 1e-12 * max(1.0, abs(old)) else None
    linear = parts.linear.double()

    def value(p: torch.Tensor) -> float:
        return linear[rows, p].sum().item() + similarities.loop_value(name, {**perm, name: p})

    old = value(current)
    for scale in LOOP_SCALES:
        trial = assignment(parts.linear + scale * parts.loops, blocks).to(current.device)
        if not torch.equal(trial, current) and value(trial) > old + 1e-12 * max(1.0, abs(old)):
            return trial
    return None


def weight_objective(models: Sequence[nn.Module]) -> float:
    """What weight matching maximizes: the sum, over pairs of ``models``, of the inner
    product of their parameters (float64; running statistics are not weights). For two
    models ``<A, B>``; for N, what every step of MergeMany raises (matching model i to
    the average of the others raises the pairs that hold i, and only them)."""
    params = [{k: v.detach().double() for k, v in m.named_parameters()} for m in models]
    return sum(
        sum((a[k] * b[k].to(a[k].device)).sum().item() for k in a)
        for i, a in enumerate(params)
        for b in params[i + 1 :]
    )


def merge_weight_matching(
    models: Sequence[nn.Module],
    spec: PermutationSpec,
    *,
    max_rounds: int = 20,
    seed: int = 0,
    restarts: int = 1,
    progress: bool = True,
) -> list[nn.Module]:
    """MergeMany: permute every model so that each best matches the average of the others.

    Rounds visit the models in a seeded random order; each model's permutation starts
    from its current one. Stops when a whole round changes nothing (or ``max_rounds``).
    No model is a reference, and no data is needed. ``restarts``: that many merges, from
    seeds ``seed, seed + 1, ...``; the one with the highest :func:`weight_objective` is
    returned (the first of equal ones).
    """
    check_int("restarts", restarts, minimum=1)
    if restarts == 1:
        return _merge_many(models, spec, max_rounds, seed, progress)
    merges = (_merge_many(models, spec, max_rounds, seed + r, progress) for r in range(restarts))
    return max(merges, key=weight_objective)


def _merge_many(
    models: Sequence[nn.Module], spec: PermutationSpec, max_rounds: int, seed: int, progress: bool
) -> list[nn.Module]:
    """One MergeMany descent from ``seed`` (see :func:`merge_weight_matching`)."""
    perms = [identity_permutation(spec) for _ in models]
    generator = torch.Generator().manual_seed(seed)
    aligned = list(models)
    for _ in tqdm(range(max_rounds), desc="MergeMany", disable=not progress, leave=False):
        changed = False
        for i in torch.randperm(len(models), generator=generator).tolist():
            rest = [m.state_dict() for j, m in enumerate(aligned) if j != i]
            others = load_weighted_average_(clone(models[i]), rest, [1.0 / len(rest)] * len(rest))
            perm = weight_matching(others, models[i], spec=spec, init=perms[i], seed=seed)
            if any(not torch.equal(perm[g], perms[i][g]) for g in perm):
                perms[i], changed = perm, True
                aligned[i] = apply_permutation(models[i], spec=spec, perm=perm)
        if not changed:
            break
    return aligned


@register_method(
    "weight",
    needs_data=False,
    preserves_function=True,
    merger=merge_weight_matching,
    color=PALETTE["blue"],
    marker="o",
)
@keyword_only(("spec", "data"))
def weight_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    spec: PermutationSpec | None = None,
    data: DataLike | None = None,
    example_input: torch.Tensor | None = None,
    max_iter: int = 100,
    seed: int = 0,
    init: Permutation | None = None,
    restarts: int = 1,
    progress: bool = False,
) -> Permutation:
    """The permutation of ``model_b``'s channels that best aligns its weights to ``model_a``.

    ``spec`` defaults to ``permutation_spec(model_a, example_input)``; ``example_input``
    then defaults to :func:`workbench.graph.example_input_for` (a batch of ``data`` when
    given: the weights alone decide the matching). Apply the result with
    ``apply_permutation(model_b, spec, perm)``. Deterministic for a given ``seed``.

    A group is solved again only when a permutation its similarity depends on changed
    since it was last solved (else the answer is the one it gave then), so that large
    graphs with hundreds of groups converge in seconds; ``progress`` shows a bar over
    the groups visited, pass after pass. Every change improves the objective
    ``sum <A, permuted B>`` (see the module docstring for groups that permute two axes
    of one tensor), so the descent ends by itself; ``max_iter`` only bounds its passes.

    The descent ends at a local optimum that depends on the order the groups are visited
    in: on narrow ResNets, merges of the same pair differ by tens of points of accuracy
    from seed to seed (``benchmarks/weight_matching_seeds.py``). ``restarts``: that many
    descents, from seeds ``seed, seed + 1, ...`` (each from ``init``); the permutation
    with the highest objective (:func:`weight_objective`) is returned, the first of equal
    ones. No data decides it.
    """
    check_models([model_a, model_b])
    check_int("max_iter", max_iter, minimum=1)
    check_int("seed", seed)
    check_int("restarts", restarts, minimum=1)
    spec = resolve_spec(model_a, spec, example_input, data)
    spec.check_model(model_a, "model_a")
    spec.check_model(model_b, "model_b")
    device = next(iter(model_a.state_dict().values())).device
    # Parameters only: running statistics are permuted along, but are not weights to match.
    state_a = {k: v.detach().float() for k, v in model_a.named_parameters()}
    state_b = {k: v.detach().float().to(device) for k, v in model_b.named_parameters()}

    start = {
        k: torch.as_tensor(v).to(device)
        for k, v in (init if init is not None else identity_permutation(spec)).items()
    }
    if restarts == 1:
        return _descend(spec, state_a, state_b, start, max_iter, seed, progress)
    found = (
        _descend(spec, state_a, state_b, start, max_iter, seed + r, progress, f"restart {r + 1}, ")
        for r in range(restarts)
    )
    return max(
        found,
        key=lambda p: weight_objective([model_a, apply_permutation(model_b, spec=spec, perm=p)]),
    )


def _descend(
    spec: PermutationSpec,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    start: Permutation,
    max_iter: int,
    seed: int,
    progress: bool,
    label: str = "",
) -> Permutation:
    """One coordinate descent of :func:`weight_matching` from ``start``, the groups visited
    in an order drawn from ``seed`` pass after pass."""
    perm = dict(start)
    names = list(spec.groups)
    similarities = Similarities(spec, state_a, state_b)
    depends = {name: similarities.depends(name) for name in names}
    changed_at: dict[str, int] = {}  # group -> the visit at which its permutation last changed
    solved_at: dict[str, int] = {}  # group -> the visit at which it was last solved
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=len(names), desc="weight matching", disable=not progress, leave=False)
    visit = 0
    for sweep in range(max_iter):
        if sweep:
            bar.total += len(names)  # one more pass over the groups
        bar.set_postfix_str(f"{label}pass {sweep + 1}")
        improved = False
        for i in torch.randperm(len(names), generator=generator).tolist():
            name = names[i]
            visit += 1
            bar.update()
            last = solved_at.get(name)
            if last is not None and all(changed_at.get(d, 0) < last for d in depends[name]):
                continue  # the same assignment problem as last time: the same answer
            solved_at[name] = visit
            parts = similarities.of(name, perm, changed_at, visit)
            best = _step(similarities, name, parts, perm, spec.groups[name].blocks)
            if best is not None:
                perm[name], changed_at[name] = best, visit
                improved = True
        if not improved:
            break
    bar.close()
    return {k: v.cpu() for k, v in perm.items()}
