"""Weight matching where a group permutes two axes of one tensor: the paper's step vs ours.

A convolution from a residual stream back into it (RepVGG, MobileOne, the stems of
EfficientNetV2 and MobileNetV3, VoVNet) makes weight matching's objective, ``sum <A,
permuted B>`` over all parameters, quadratic in that group's permutation. Selective
kernels, split attention, GhostNet and DLA read two slices of one axis that one group
permutes, which keeps it linear (``groups_with_loops`` 0): they are measured as controls.
Algorithm 1 of Git Re-Basin (Ainsworth et al., 2023) takes the assignment that is best
for the similarity linearized at the current permutation and accepts it when the
linearized objective improves; written out here, on the same cached similarities as
:func:`workbench.weight_matching`. Ours (the module docstring of
``workbench.alignment.weight``) tries that step with the loop terms damped and takes the
one that most improves the exact objective.

For two random initializations of each timm CNN (spec at its smallest input size): the
exact objective (identity, the paper's with ``max_iter`` 100 and 101, ours), the paper's
passes, and wall seconds, on the CPU. Writes
``benchmarks/results/weight_matching_loops.json``.

    python benchmarks/weight_matching_loops.py [--models repvgg_a2 skresnet18]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from workbench.alignment import weight_matching
from workbench.alignment.weight import assignment
from workbench.alignment.weight_similarity import Similarities, _permuted
from workbench.graph import PermutationSpec, permutation_spec
from workbench.graph.transforms import Permutation, identity_permutation

RESULTS = Path(__file__).resolve().parent / "results" / "weight_matching_loops.json"
MODELS = [
    "repvgg_a2",
    "mobileone_s0",
    "skresnet18",
    "resnest14d",
    "dla34",
    "ghostnet_100",
    "ese_vovnet19b_dw",
    "efficientnetv2_rw_t",
]


def objective(spec: PermutationSpec, state_a: dict, state_b: dict, perm: Permutation) -> float:
    """``sum <A, B permuted by perm>`` in float64 over every parameter a group permutes."""
    axes = Similarities(spec, state_a, state_b).axes_of_key
    return sum(
        torch.dot(
            state_a[k].double().flatten(), _permuted(state_b[k], v, perm).double().flatten()
        ).item()
        for k, v in axes.items()
    )


def paper(spec: PermutationSpec, state_a: dict, state_b: dict, max_iter: int) -> list[Permutation]:
    """Algorithm 1 as ``weight_matching`` ran it before: each group's assignment for its
    whole linearized similarity, accepted when that similarity's sum improves, a group
    solved again only when a permutation it depends on changed; the permutation after
    each pass."""
    perm = identity_permutation(spec)
    names = list(spec.groups)
    similarities = Similarities(spec, state_a, state_b)
    changed_at: dict[str, int] = {}
    solved_at: dict[str, int] = {}
    generator = torch.Generator().manual_seed(0)
    visit, history = 0, []
    for _ in range(max_iter):
        improved = False
        for i in torch.randperm(len(names), generator=generator).tolist():
            name, visit = names[i], visit + 1
            last = solved_at.get(name)
            depends = similarities.depends(name)
            if last is not None and all(changed_at.get(d, 0) < last for d in depends):
                continue
            solved_at[name] = visit
            parts = similarities.of(name, perm, changed_at, visit)
            similarity = parts.linear if parts.loops is None else parts.linear + parts.loops
            best, rows = (
                assignment(similarity, spec.groups[name].blocks),
                torch.arange(len(perm[name])),
            )
            old, new = (
                similarity[rows, perm[name]].sum().item(),
                similarity[rows, best].sum().item(),
            )
            if new > old + 1e-12 * max(1.0, abs(old)):
                perm[name], changed_at[name], improved = best, visit, True
        history.append(dict(perm))
        if not improved:
            break
    return history


def row(name: str) -> dict:
    from spec_coverage_timm import input_sizes
    from weight_matching_speed import timm_pair

    models = timm_pair(name)
    size = input_sizes(models[0])[0]
    spec = permutation_spec(models[0], example_input=torch.randn(2, 3, size, size))
    state_a, state_b = ({k: v.detach() for k, v in m.named_parameters()} for m in models)
    loops = Similarities(spec, state_a, state_b).loop_tensors
    result = {
        "model": name,
        "groups": len(spec.groups),
        "groups_with_loops": sum(bool(v) for v in loops.values()),
        "objective_identity": objective(spec, state_a, state_b, identity_permutation(spec)),
    }
    started = time.perf_counter()
    history = paper(spec, state_a, state_b, max_iter=101)
    result["paper"] = {
        "passes": len(history),
        "converged": len(history) < 101,
        "seconds_101_passes": time.perf_counter() - started,
        "objective_100": objective(spec, state_a, state_b, history[min(len(history), 100) - 1]),
        "objective_101": objective(spec, state_a, state_b, history[-1]),
    }
    started = time.perf_counter()
    perm = weight_matching(models[0], models[1], spec=spec)
    result["ours"] = {
        "objective": objective(spec, state_a, state_b, perm),
        "seconds": time.perf_counter() - started,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    rows = []
    for name in args.models:
        rows.append(row(name))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        result = {
            "benchmark": "weight_matching_loops",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "rows": rows,
        }
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
