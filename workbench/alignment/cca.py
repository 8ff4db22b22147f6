"""CCA alignment (Horoi et al., "Harmony in Diversity: Merging Neural Networks with
Canonical Correlation Analysis", ICML 2024).

Permutation methods pair each neuron of one model with exactly one of the other. CCA
instead finds, for each group, the linear combinations of model B's channels and of model
A's channels that correlate most, and maps B's channels into A's space by the matrix
that sends B's canonical variables onto A's. With ridge-regularized covariances
``S_a = C_aa + g I``, ``S_b = C_bb + g I`` (``g`` = ``gamma`` times the mean channel
variance, so ``gamma`` does not depend on the activations' scale) and the SVD
``S_a^{-1/2} C_ab S_b^{-1/2} = U diag(rho) V^T`` (``rho``: the canonical correlations),

    T = S_a^{1/2} U V^T S_b^{-1/2},   B's channels x  ->  T x.

``T`` whitens B's activations, rotates them onto A's canonical directions and gives them
A's covariance. For a large ``gamma`` the covariances become multiples of the identity and
``T`` tends to the orthogonal Procrustes rotation of the cross-covariance; when B is A with
its channels permuted, ``T`` is that permutation (for small ``gamma``).

Each map is applied as a :class:`~workbench.graph.transforms.GroupMap` ``(T, T^{-1})``:
``T`` multiplies the producing layers' rows and biases and, as the authors' code does,
the BatchNorm parameters and statistics of the group (running variances by ``|T|``, so
they stay positive); ``T^{-1}`` multiplies the consumers' columns. BatchNorm statistics
are then measured again (RESET), as in the paper. Groups holding per-channel tensors
that are not BatchNorm (depthwise filters) or feeding grouped convolutions fall back to
the permutation that maximizes correlation, and are listed in the result.

**Directions without correlation.** Where the whitened cross-covariance is singular
(dead or constant units, which correlate with nothing), its SVD leaves ``U V^T``
undetermined on the null spaces, and an arbitrary rotation there mixes dead units into
firing ones. There ``U V^T`` is completed by the orthogonal map closest to the
permutation that maximizes the whitened cross-covariance, so that ``T`` is the
identity when ``B`` is ``A`` and the permutation when ``B`` is a permuted copy of ``A``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from workbench.alignment.api import map_model
from workbench.alignment.dead import TIE_BREAK
from workbench.alignment.group_statistics import GroupStatistics
from workbench.alignment.registry import register_method
from workbench.alignment.statistics import collect_statistics
from workbench.alignment.weight import assignment
from workbench.data import DataLike
from workbench.figures import PALETTE
from workbench.graph import PermutationSpec, resolve_spec
from workbench.graph.transforms import LinearMaps, general_groups
from workbench.validation import check_models, check_number, check_pass
from workbench.vocabulary import keyword_only

__all__ = [
    "DEFAULT_GAMMA",
    "GAMMA_GRID",
    "CCAAlignment",
    "canonical_correlation",
    "cca_align",
    "cca_maps",
]

# The ridge chosen on validation splits of the shipped pair (96.8% at 1.0 against 96.3% at
# 0.1) and of a ResNet-20 pair (58.4% against 51.8%), GAMMA_GRID searched.
DEFAULT_GAMMA = 1.0
# The ridges merge_many tries on a validation split (relative to the mean channel variance).
GAMMA_GRID = (0.01, 0.1, 0.3, 1.0, 3.0)


# Canonical correlations at most this are zero: a dead unit's are exactly 0, and so are
# those of directions the data never excites (more units than observations, units that
# move together), up to the float32 rounding of the statistics, which the whitening
# divides by the ridge: ``_FLOAT_NOISE / gamma`` (measured: 5 float32 epsilons / gamma).
# The SVD leaves their singular vectors arbitrary, up to sign.
_NULL_CORRELATION = 1e-9
_FLOAT_NOISE = 10 * torch.finfo(torch.float32).eps


def _null_correlation(gamma: float) -> float:
    """The canonical correlations at most this are zero at ridge ``gamma``."""
    return max(_NULL_CORRELATION, _FLOAT_NOISE / max(gamma, 1e-3))


def canonical_correlation(
    cov_aa: torch.Tensor,
    cov_bb: torch.Tensor,
    cov_ab: torch.Tensor,
    gamma: float,
    ties: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The map ``T`` taking B's channels into A's space, and the canonical correlations
    (descending), from the covariances of A's channels, B's channels and between them.

    ``gamma`` is the ridge, relative to each side's mean channel variance. On the
    directions whose canonical correlation is zero (dead units), where the SVD does not
    determine ``U V^T``, it is completed by the permutation that maximizes the whitened
    cross-covariance, its ties broken by ``ties`` (A's units x B's: default the identity;
    :func:`cca_maps` gives the similarity of dead units' weights,
    :mod:`workbench.alignment.dead`), so that ``T`` is the identity when A is B and the
    permutation when B is a permuted copy of A. Raises ``ValueError`` when a
    regularized covariance is still singular (``gamma=0`` with dead or constant
    channels): CCA cannot whiten them.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}.")
    size = cov_aa.shape[0]
    eye = torch.eye(size, dtype=torch.float64, device=cov_aa.device)
    roots = []
    for name, cov in (("A", cov_aa), ("B", cov_bb)):
        cov = cov.double()
        scale = cov.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
        values, vectors = torch.linalg.eigh(cov + gamma * scale * eye)
        if values[0] <= 1e-12 * scale:
            dead = int((cov.diagonal() <= 1e-12 * scale).sum())
            raise ValueError(
                f"The covariance of model {name}'s {size} channels is singular ({dead} of "
                "them never vary: dead or constant units), so CCA cannot whiten it. Use a "
                "ridge gamma > 0 (e.g. gamma=0.01)."
            )
        root = values.sqrt()
        roots.append(((vectors * root) @ vectors.T, (vectors / root) @ vectors.T))
    (root_a, inv_root_a), (_, inv_root_b) = roots
    whitened = inv_root_a @ cov_ab.double() @ inv_root_b
    u, rho, vh = torch.linalg.svd(whitened)
    # Each whitened channel pairs with one other by an assignment: on the positive
    # semidefinite ``whitened`` of A with itself the identity is optimal; ``ties``, weighed
    # just above the float noise, break the ties among dead units (all-zero rows).
    ties = eye if ties is None else ties.double().to(eye.device)
    null = _null_correlation(gamma)  # ties weigh above the float noise of `whitened`
    hint = eye[assignment(whitened + max(TIE_BREAK, 10 * null) * ties).to(eye.device)]
    return root_a @ _polar_factor(u, rho, vh, hint, null) @ inv_root_b, rho


def _polar_factor(
    u: torch.Tensor, rho: torch.Tensor, vh: torch.Tensor, hint: torch.Tensor, null: float
) -> torch.Tensor:
    """``U V^T`` from the SVD ``U diag(rho) V^T``, with its undetermined part (the null
    spaces, ``rho`` = 0) the orthogonal map between them closest to ``hint``."""
    rank = int((rho > null).sum())
    polar = u[:, :rank] @ vh[:rank]
    if rank < len(rho):
        left, right = u[:, rank:], vh[rank:].T
        p, _, qh = torch.linalg.svd(left.T @ hint @ right)
        polar = polar + left @ p @ qh @ right.T
    return polar


@dataclass
class CCAAlignment:
    """What CCA found for one model: the map of each group (B's channels -> A's space), the
    canonical correlations, and the groups that were permuted instead (with why)."""

    maps: dict[str, torch.Tensor]
    correlations: dict[str, torch.Tensor]
    gamma: float
    permuted: dict[str, str] = field(default_factory=dict)


def _check_samples(name: str, stats: GroupStatistics, gamma: float) -> None:
    if not stats.within:
        raise ValueError(
            f"The statistics of group {name!r} hold each model's variances only "
            "(collect_statistics(..., within=False)); CCA needs each model's covariance: "
            "collect them with within=True (the default)."
        )
    if stats.count > stats.size:
        return
    message = (
        f"Group {name!r} has {stats.size} channels but its statistics come from only "
        f"{stats.count} observations (images x positions); CCA needs more than {stats.size}, "
        f"and about {10 * stats.size} for a stable estimate: pass more data."
    )
    if gamma == 0:
        raise ValueError(message)
    warnings.warn(message + " The ridge keeps the result finite.", stacklevel=3)


def cca_maps(
    statistics: dict[str, GroupStatistics],
    gamma: float,
    spec: PermutationSpec,
    general: Sequence[str] | None = None,
) -> CCAAlignment:
    """CCA maps from the joint statistics of (A, B) at each group. Groups not in
    ``general`` (default: all) get the correlation-maximizing permutation matrix."""
    maps, correlations, permuted = {}, {}, {}
    for name, stats in statistics.items():
        _check_samples(name, stats, gamma)
        both_live = torch.diag((~stats.dead(0) & ~stats.dead(1)).double())
        ties = stats.dead_similarity(0, 1) + both_live  # dead units by their weights
        transform, rho = canonical_correlation(
            stats.block(0, 0), stats.block(1, 1), stats.block(0, 1), gamma, ties
        )
        correlations[name] = rho
        if general is None or name in general:
            maps[name] = transform
        else:
            perm = assignment(stats.correlation(0, 1), spec.groups[name].blocks)
            maps[name] = torch.eye(stats.size, dtype=torch.float64)[perm]
            permuted[name] = "holds per-channel parameters a general linear map cannot pass"
    for name, group in spec.groups.items():
        if name not in maps:  # never observed (no activation to correlate): left as it is
            maps[name] = torch.eye(group.size, dtype=torch.float64)
            permuted[name] = "not observed"
    return CCAAlignment(maps, correlations, gamma, permuted)


def _cca(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: PermutationSpec,
    data: DataLike,
    gamma: float,
    statistics: dict[str, GroupStatistics] | None,
    options: dict,
) -> CCAAlignment:
    gamma = check_number("gamma", gamma, low=0.0)
    if statistics is None:
        check_pass(data, options["batch_size"], options["max_batches"])
        statistics = collect_statistics([model_a, model_b], data=data, spec=spec, **options)
    return cca_maps(statistics, gamma, spec, general_groups(model_b, spec=spec))


@register_method(
    "cca",
    needs_data=True,
    preserves_function=False,
    kind="linear",
    search={"gamma": GAMMA_GRID},
    renamed={"gammas": "gamma"},
    defaults={"gamma": DEFAULT_GAMMA},
    uses_statistics=True,
    color=PALETTE["purple"],
    marker="D",
)
@keyword_only(("spec", "data"))
def cca_linear_maps(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    spec: PermutationSpec,
    data: DataLike,
    gamma: float = DEFAULT_GAMMA,
    statistics: dict[str, GroupStatistics] | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> LinearMaps:
    """The registered ``"cca"`` method: CCA's map of every group (see :func:`cca_align`,
    which also applies them, and :func:`cca_maps`, which also returns the canonical
    correlations)."""
    options = {"batch_size": batch_size, "max_batches": max_batches, "progress": progress}
    return _cca(model_a, model_b, spec, data, gamma, statistics, options).maps


@keyword_only(("data", "spec"))
def cca_align(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: DataLike,
    spec: PermutationSpec | None = None,
    gamma: float = DEFAULT_GAMMA,
    statistics: dict[str, GroupStatistics] | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """``model_b`` mapped into ``model_a``'s neuron space by CCA on ``data`` (the maps and
    canonical correlations themselves: :func:`cca_maps`).

    Unlike a permutation, the maps do not preserve ``model_b``'s function (a ReLU does not
    commute with a rotation): the result is B's best linear image in A's coordinates, made
    to be averaged with A. Its BatchNorm parameters are carried along with the maps and
    its statistics measured on ``data`` (:func:`~workbench.alignment.map_model`).
    ``statistics`` (joint, A first) saves the data pass when the caller has them.
    """
    check_models([model_a, model_b])
    check_pass(data, batch_size, max_batches)
    spec = resolve_spec(model_a, spec, data=data)
    options = {"batch_size": batch_size, "max_batches": max_batches, "progress": progress}
    maps = _cca(model_a, model_b, spec, data, gamma, statistics, options).maps
    return map_model(
        model_b,
        spec=spec,
        maps=maps,
        model_a=model_a,
        data=data,
        batch_size=batch_size,
        max_batches=max_batches,
    )
