"""Optimal-transport fusion (Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS
2020): model B's channels transported onto model A's (the reference), group by group.

At every permutation group the channels of A and of B are two point clouds with uniform
mass (``1/n_A`` and ``1/n_B``), and the plan ``T`` (``n_A x n_B``, rows summing to
``1/n_A``, columns to ``1/n_B``) moving B's mass onto A's at the least total cost says
how much of each of B's channels goes into each of A's slots. B's group then becomes
A-shaped (:class:`~workbench.graph.transforms.GroupMap`): its producers' rows (and
BatchNorm parameters) by ``out = n_A T`` (each slot of A takes the weighted mean of the
B channels sent to it), its consumers' input columns by ``into = n_A T^T`` (the same
weighted means of their columns, as in the paper).

**Ground cost.** ``cost[i, j] = 1 - corr(a_i, b_j)``, the Pearson correlation of the
activations (from :func:`collect_statistics`), which is half the squared Euclidean distance
between the standardized activation vectors. The paper uses the unnormalized activations'
distance (or the weights'); standardizing makes the cost blind to each channel's scale
(which BatchNorm and ReLU networks leave arbitrary), bounded in ``[0, 2]``, and makes
exact transport between equal widths the assignment that activation matching (Git
Re-Basin) finds. Dead channels correlate 0 with everything (cost 1).

**Transport.** ``epsilon = 0`` (the default, ``transport="exact"``): the unregularized
plan. Between equal widths it is a permutation (Birkhoff), found by
:func:`scipy.optimize.linear_sum_assignment` within the group's blocks, so a planted
permutation is recovered exactly and B keeps its function. Between different widths it
is the exact transportation-problem plan, from POT's network simplex (:func:`ot.emd`):
a vertex of the transport polytope, so mostly a hard assignment (with ``n_B = 2 n_A``
each slot of A takes two of B's channels) and at most ``n_A + n_B - 1`` nonzero entries.
``epsilon > 0`` (``"entropic"``): Sinkhorn's plan with regularization ``epsilon`` times
the cost's scale (its mean distance above its minimum), from POT's log-domain Sinkhorn
in float64 with epsilon scaling; it tends to the exact plan as ``epsilon -> 0``. :func:`~workbench.merge_many` chooses ``epsilon`` among
:data:`EPSILON_GRID` (0: exact) on a validation split.

**Departures from the paper.** The standardized cost above; every group aligned from
one pass of both models (not layer by layer with the previous layer's plan applied
first: B's activations do not depend on how its earlier layers would be mapped); the
averaging and RESET are left to the caller (:func:`~workbench.merge_many` with
``bn="reset"``). On the consumer side ``n_B T^T`` (each of B's channels handing its
outgoing weights to the slots it went to, split by the plan, which keeps B's function
when merged channels are copies) was tried against the paper's ``n_A T^T``; the two are
equal between equal widths, and the paper's merged better between different widths on
the validation split (``benchmarks/ot_fusion.py``), so it is kept.

**BatchNorm.** A soft or rectangular map cannot pass per-channel parameters exactly. A
:class:`GroupMap` carries them along with ``out`` (weighted means of B's BatchNorm
parameters and statistics), and RESET after merging measures the statistics again
(:func:`~workbench.alignment.map_model`, which applies GroupMaps so, into a copy of A):
the path every linear method takes, CCA's included.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from workbench.alignment.api import apply_alignment, match, other_width_spec
from workbench.alignment.group_statistics import GroupStatistics
from workbench.alignment.registry import register_method
from workbench.alignment.statistics import collect_statistics
from workbench.alignment.weight import assignment
from workbench.data import DataLike
from workbench.figures import PALETTE
from workbench.graph import PermutationGroup, PermutationSpec, resolve_spec
from workbench.graph.transforms import GroupMap, LinearMaps
from workbench.validation import check_choice, check_int, check_models, check_number, check_pass
from workbench.vocabulary import keyword_only

__all__ = [
    "DEFAULT_EPSILON",
    "EPSILON_GRID",
    "TRANSPORTS",
    "exact_plan",
    "ground_cost",
    "ot_fusion",
    "ot_maps",
    "plan_map",
    "sinkhorn",
    "transport_plan",
]

TRANSPORTS = ("exact", "entropic")
DEFAULT_EPSILON = 0.0  # exact transport
# What merge_many tries on a validation split (relative to the cost's scale; 0: exact).
EPSILON_GRID = (0.0, 0.003, 0.01, 0.03)
# Sinkhorn, the last epsilon-scaling stage and the intermediate ones: at most so many
# iterations, or until the L1 error of the plan's row marginal (its mass is 1) is below
# (POT tests the L2 error, against these over sqrt(n), which bounds the L1 error).
_ITERATIONS, _STAGE_ITERATIONS = 2000, 100
_TOLERANCE, _STAGE_TOLERANCE = 1e-7, 1e-2
# The smallest entropic regularization (relative to the cost's scale): below it the plan
# is the exact one to float precision, and Sinkhorn would need ever more iterations (in
# about 1/epsilon) to get there; epsilon=0 computes it exactly, at once.
MIN_EPSILON = 1e-4
# POT's network simplex (exact transport between different widths): at most so many
# iterations (its default, 10^5, is not always enough for widths in the thousands).
_EMD_ITERATIONS = 10**7


def _check_epsilon(epsilon: float) -> float:
    """``epsilon`` if it is 0 (exact transport) or at least :data:`MIN_EPSILON`."""
    epsilon = check_number("epsilon", epsilon, low=0.0)
    if 0 < epsilon < MIN_EPSILON:
        raise ValueError(
            f"epsilon={epsilon:g} is below {MIN_EPSILON:g} (relative to the cost's scale): "
            "the entropic plan is then the exact one to float precision, and Sinkhorn "
            "would take very long to converge to it. Use epsilon=0 (exact transport), or "
            f"an epsilon >= {MIN_EPSILON:g}."
        )
    return epsilon


def ground_cost(statistics: GroupStatistics) -> torch.Tensor:
    """``1 - corr(a_i, b_j)`` between A's channels (rows) and B's (columns), float64."""
    return 1.0 - statistics.correlation(0, 1).double()


def sinkhorn(cost: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The entropic optimal-transport plan between uniform marginals (``n x m``, rows
    summing to ``1/n``, columns exactly to ``1/m``), with regularization ``epsilon`` times
    the cost's scale (its mean distance above its minimum): POT's log-domain Sinkhorn
    (:func:`ot.bregman.sinkhorn_log`) in float64, the regularization halved from the
    cost's scale down to ``epsilon`` (each stage warm-started from the last stage's
    potentials)."""
    import ot as pot  # POT: loaded on first use (a second to import)

    epsilon = _check_epsilon(epsilon)
    if epsilon == 0:
        raise ValueError("sinkhorn needs epsilon > 0; epsilon=0 is exact_plan(cost).")
    cost = torch.as_tensor(cost, dtype=torch.float64).cpu()
    n, m = cost.shape
    scale = float((cost - cost.min()).mean())
    if scale <= 0:  # every pair costs the same: any plan is optimal, take the uniform one
        return torch.full((n, m), 1.0 / (n * m), dtype=torch.float64)
    # POT's last update in an iteration makes its rows' marginal exact: B's channels (the
    # columns here) are its rows, and it checks the other marginal (A's) for convergence.
    cost_t = cost.T.contiguous()
    mass_b = torch.full((m,), 1.0 / m, dtype=torch.float64)
    mass_a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    target = epsilon * scale
    stages = max(0, math.ceil(math.log2(max(scale / target, 1.0))))
    potentials = None  # (B's, A's) in units of the cost; POT's are these over reg
    for stage in range(stages + 1):
        reg = max(target, scale / 2**stage)
        last = reg == target
        plan, log = pot.bregman.sinkhorn_log(
            mass_b,
            mass_a,
            cost_t,
            reg,
            numItermax=_ITERATIONS if last else _STAGE_ITERATIONS,
            # POT's test is on the L2 norm of the error; L1 <= sqrt(n) L2
            stopThr=(_TOLERANCE if last else _STAGE_TOLERANCE) / math.sqrt(n),
            warmstart=None if potentials is None else (potentials[0] / reg, potentials[1] / reg),
            log=True,
            warn=False,
        )
        potentials = (reg * log["log_u"], reg * log["log_v"])
    plan = plan.T.contiguous()
    error = float((plan.sum(1) - 1.0 / n).abs().sum())
    if error >= 1e-3:
        warnings.warn(
            f"Sinkhorn did not converge for epsilon={epsilon:g} (row marginal error "
            f"{error:.1e}); use a larger epsilon, or epsilon=0 (exact transport).",
            RuntimeWarning,
            stacklevel=2,
        )
    return plan


def exact_plan(cost: torch.Tensor) -> torch.Tensor:
    """The optimal plan between uniform marginals (``n x m``, float64): a permutation
    matrix divided by ``n`` when ``n == m`` (scipy's linear assignment, which finds the
    same optimum as POT's :func:`ot.emd` 1.1-2.4 times faster: ``benchmarks/ot_fusion.py
    --plans``), else POT's network simplex (:func:`ot.emd`), a vertex of the transport
    polytope."""
    cost = torch.as_tensor(cost, dtype=torch.float64).cpu()
    n, m = cost.shape
    if n == m:
        return torch.eye(n, dtype=torch.float64)[assignment(-cost)] / n
    import ot as pot  # POT: loaded on first use (a second to import)

    # Integer marginals (m per row, n per column) keep the vertex's entries integral, so
    # exact in floating point; the plan is the solution divided by n * m.
    rows = torch.full((n,), float(m), dtype=torch.float64)
    columns = torch.full((m,), float(n), dtype=torch.float64)
    plan, log = pot.emd(rows, columns, cost, numItermax=_EMD_ITERATIONS, log=True)
    if log["result_code"] != 1:
        raise RuntimeError(f"The exact transport (ot.emd) failed ({log['warning']}).")
    return plan.clamp_min(0.0) / (n * m)


def transport_plan(cost: torch.Tensor, epsilon: float = 0.0, blocks: int = 1) -> torch.Tensor:
    """The plan between A's channels (rows) and B's (columns) for ``cost``: exact for
    ``epsilon == 0``, else entropic (:func:`sinkhorn`). With ``blocks``, channels move only
    within their block (a block-diagonal plan; blocks have equal sizes on each side)."""
    epsilon = _check_epsilon(epsilon)
    blocks = check_int("blocks", blocks, minimum=1)
    n, m = cost.shape
    if n % blocks or m % blocks:
        raise ValueError(f"A {n} x {m} cost cannot be cut into {blocks} diagonal blocks.")
    parts = []
    for b in range(blocks):
        part = cost[
            b * n // blocks : (b + 1) * n // blocks, b * m // blocks : (b + 1) * m // blocks
        ]
        parts.append((exact_plan(part) if epsilon == 0 else sinkhorn(part, epsilon)) / blocks)
    return torch.block_diag(*parts)


def plan_map(plan: torch.Tensor) -> GroupMap:
    """The :class:`GroupMap` of a plan (``n_A x n_B``): ``out = n_A T`` (rows normalized to
    sum 1: each of A's slots the weighted mean of B's channels) and ``into = out^T`` (the
    consumers' columns combined alike). A permutation plan gives a permutation matrix
    and its transpose."""
    plan = torch.as_tensor(plan, dtype=torch.float64)
    out = plan / plan.sum(1, keepdim=True)
    return GroupMap(out.contiguous(), out.T.contiguous())


def _check_transport(transport: str | None, epsilon: float) -> tuple[str, float]:
    """The transport (exact or entropic) that ``transport`` and ``epsilon`` ask for."""
    epsilon = _check_epsilon(epsilon)
    if transport is None:
        return ("exact" if epsilon == 0 else "entropic"), epsilon
    check_choice("transport", transport, TRANSPORTS)
    if transport == "entropic" and epsilon == 0:
        raise ValueError(
            "transport='entropic' needs epsilon > 0 (the regularization relative to the "
            f"cost's scale, e.g. epsilon={EPSILON_GRID[1]}); epsilon=0 is exact transport."
        )
    return transport, (0.0 if transport == "exact" else epsilon)


def _exact_only(group: PermutationGroup) -> bool:
    """Whether a group takes permutations only (blocks, or a grouped convolution)."""
    return group.blocks > 1 or any(ax.grouped != 1 for ax in group.axes)


def _group_map(
    name: str, group: PermutationGroup, size_b: int, stats: GroupStatistics | None, eps: float
) -> GroupMap:
    if stats is None or _exact_only(group):
        why = "is never observed" if stats is None else "feeds a grouped convolution"
        if group.size != size_b:
            raise ValueError(
                f"Group {name!r} {why}, so it can only keep its channels or be permuted, "
                f"but model A has {group.size} of them and model B {size_b}: OT cannot "
                "change this group's width."
            )
        if stats is None:  # nothing to correlate: the group keeps its order
            eye = torch.eye(group.size, dtype=torch.float64)
            return GroupMap(eye, eye.clone())
        eps = 0.0  # a permutation within blocks
    cost = ground_cost(stats)
    if tuple(cost.shape) != (group.size, size_b):
        raise ValueError(
            f"The statistics of group {name!r} are for {tuple(cost.shape)} channels, the "
            f"models have ({group.size}, {size_b}): pass the statistics of (A, B), A first."
        )
    return plan_map(transport_plan(cost, eps, group.blocks))


def _ot(
    model_a: nn.Module,
    model_b: nn.Module,
    data: DataLike,
    spec: PermutationSpec,
    spec_b: PermutationSpec,
    epsilon: float,
    statistics: dict[str, GroupStatistics] | None,
    passes: dict,
) -> LinearMaps:
    if statistics is None:
        check_pass(data, passes["batch_size"], passes["max_batches"])
        statistics = collect_statistics(
            [model_a, model_b],
            data=data,
            spec=spec,
            specs=[spec, spec_b],
            within=False,  # the cost is a correlation between the models
            **passes,
        )
    return {
        name: _group_map(name, group, spec_b.groups[name].size, statistics.get(name), epsilon)
        for name, group in spec.groups.items()
    }


@register_method(
    "ot",
    needs_data=True,
    preserves_function=False,
    kind="linear",
    search={"epsilon": EPSILON_GRID},
    defaults={"epsilon": DEFAULT_EPSILON},
    uses_statistics=True,
    any_width=True,
    color=PALETTE["orange"],
    marker="v",
)
@keyword_only(("data", "spec"))
def ot_maps(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: DataLike,
    spec: PermutationSpec | None = None,
    spec_b: PermutationSpec | None = None,
    transport: str | None = None,
    epsilon: float = DEFAULT_EPSILON,
    statistics: dict[str, GroupStatistics] | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> LinearMaps:
    """The registered ``"ot"`` method: for every group, the :class:`GroupMap` of the
    transport plan of ``model_b``'s channels onto ``model_a``'s (``out``: ``n_A x n_B``;
    see the module docstring), from one activation-statistics pass over ``data``.

    ``epsilon``: 0 (default) for exact transport, else the entropic regularization
    relative to the cost's scale (Sinkhorn). ``transport`` (``"exact"`` or
    ``"entropic"``) may say it explicitly; exact transport ignores ``epsilon``.
    ``model_b`` may be wider or narrower than ``model_a`` (one architecture): ``spec``
    is A's, ``spec_b`` B's (traced from ``model_b`` when it does not fit ``spec``).
    ``statistics`` (joint, A first) saves the data pass when the caller has them.
    """
    _, epsilon = _check_transport(transport, epsilon)
    passes = {"batch_size": batch_size, "max_batches": max_batches, "progress": progress}
    check_models(model_a, "model_a")
    check_models(model_b, "model_b")
    if statistics is None:
        check_pass(data, batch_size, max_batches)
    spec = resolve_spec(model_a, spec, data=data)
    spec_b = other_width_spec(model_b, spec, data, spec_b) or spec
    return _ot(model_a, model_b, data, spec, spec_b, epsilon, statistics, passes)


@keyword_only(("data", "spec"))
def ot_fusion(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: DataLike,
    spec: PermutationSpec | None = None,
    transport: str | None = None,
    epsilon: float = DEFAULT_EPSILON,
    statistics: dict[str, GroupStatistics] | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """``model_b`` transported into ``model_a``'s neuron space by optimal transport on
    ``data`` (the maps themselves: :func:`ot_maps`): a model of ``model_a``'s widths and
    architecture, made to be averaged with A and then RESET (``merge_many`` or
    ``average`` and ``reset_bn``). ``model_b`` may have other widths than ``model_a``.

    Exact transport between equal widths permutes B (its function is kept); any other
    plan mixes channels, which does not preserve B's function.
    """
    _check_transport(transport, epsilon)
    check_pass(data, batch_size, max_batches)
    options = {"transport": transport, "epsilon": epsilon, "statistics": statistics}
    passes = {"batch_size": batch_size, "max_batches": max_batches, "progress": progress}
    result = match(model_a, model_b, method="ot", data=data, spec=spec, **options, **passes)
    return apply_alignment(model_b, result=result, data=data, model_a=model_a)
