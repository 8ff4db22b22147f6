"""Optimal-transport fusion ("ot") against weight and activation matching, and between
models of different widths, on mnist-5k.

1. **equal widths** (the shipped quickstart pair, seeds 0 and 1, width 2): ``merge_many``
   with ``bn="reset"`` for "weight", "activation" and "ot" (its ``epsilon`` chosen by
   merge_many on a validation split it carves from the training data); test accuracy and
   loss of the merged model, and the test barrier (11 points, RESET on the training split)
   of the path from A to B aligned by each method.
2. **different widths**: a half-width model (width 1) trained here on the training split
   (the quickstart recipe, ``--epochs`` epochs, seed 10), fused by OT into the full-width
   shipped model (seed 0, the reference), and the other way round. Epsilon and the
   consumer-side matrix (the paper's ``n_A T^T``, kept, or ``n_B T^T``) are chosen on
   the validation split; the test accuracy of both endpoints, of B transported alone
   (RESET) and of the merged model (average + RESET) are reported.

    python benchmarks/ot_fusion.py [--epochs 5] [--threads 1]

prints the JSON document and writes it to ``benchmarks/results/ot_fusion.json``. The test set is
read only for the final numbers.

    python benchmarks/ot_fusion.py --plans [--threads 1]

(a minute) times the transport plans alone, the library calls ``workbench.alignment.ot``
makes (POT's log-domain Sinkhorn, POT's ``emd``, scipy's ``linear_sum_assignment``)
against the hand-written code they replaced (the log-domain Sinkhorn in torch and the
transportation LP by ``scipy.optimize.linprog``, copied below) and against the other
library call for equal widths (``ot.emd``), on the ground costs of the shipped pair
(every group; on 1,000 training images) and on those of A against every second channel
of B (the half-width case), plus random costs up to 1024 channels; best of a few runs,
the largest difference between the plans (times ``n_A``, the scale of the maps) and
their row-marginal errors. Writes ``benchmarks/results/ot_fusion_plans.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import ot as pot
import torch
from scipy import sparse
from scipy.optimize import linprog

import workbench as wb
from workbench.alignment import ot
from workbench.graph import permutation_spec
from workbench.graph.transforms import GroupMap

ALPHAS = 11
RESULT = Path(__file__).resolve().parent / "results" / "ot_fusion.json"
PLANS = RESULT.with_name("ot_fusion_plans.json")
PASS = {"progress": False}


def _split_consumer(plan: torch.Tensor) -> GroupMap:
    """The alternative consumer side: ``into = n_B T^T`` (rows summing to 1)."""
    plan = torch.as_tensor(plan, dtype=torch.float64)
    out = plan / plan.sum(1, keepdim=True)
    return GroupMap(out, (plan / plan.sum(0, keepdim=True)).T.contiguous())


def _merged(model_a, aligned, data):
    return wb.reset_bn(wb.average([model_a, aligned]), data=data)


def equal_widths(a, b, spec, train, test) -> dict:
    rows = []
    for method in ("weight", "activation", "ot"):
        started = time.perf_counter()
        result = wb.merge_many([a, b], data=train, method=method, bn="reset", **PASS)
        seconds = time.perf_counter() - started
        point = result.report.hyperparameters
        aligned = wb.align(a, b, method=method, data=train, spec=spec, **point, **PASS)
        curve = wb.lmc_curve(
            a,
            aligned,
            eval_data=test,
            alphas=ALPHAS,
            bn="reset",
            data=train,
            spec=spec,
            cache=False,
            **PASS,
        )
        metrics = wb.evaluate(result.model, eval_data=test)
        rows.append(
            {
                "method": method,
                "merged_test_accuracy": metrics.accuracy,
                "merged_test_loss": metrics.loss,
                "test_barrier": curve.barrier,
                "chosen": point,
                "validation": result.report.validation,
                "merge_many_seconds": seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True, file=sys.stderr)
    return {"rows": rows}


def _fuse(model_a, model_b, train, test, fit, val) -> dict:
    """OT of B into A: the choice on validation, then the test numbers."""
    spec = permutation_spec(model_a, example_input=train.images[:2])
    spec_b = permutation_spec(model_b, example_input=train.images[:2])
    stats = wb.alignment.collect_statistics(
        [model_a, model_b], data=fit, spec=spec, specs=[spec, spec_b], **PASS
    )
    scores, default_map = {}, ot.plan_map
    for consumer, plan_map in (
        ("n_A T^T (paper, kept)", default_map),
        ("n_B T^T", _split_consumer),
    ):
        ot.plan_map = plan_map
        try:
            for eps in ot.EPSILON_GRID:
                result = wb.match(
                    model_a,
                    model_b,
                    method="ot",
                    data=fit,
                    spec=spec,
                    epsilon=eps,
                    statistics=stats,
                )
                aligned = wb.alignment.apply_alignment(
                    model_b, result=result, data=fit, model_a=model_a
                )
                merged = _merged(model_a, aligned, fit)
                scores[f"{consumer}, epsilon={eps:g}"] = wb.evaluate(merged, eval_data=val).accuracy
        finally:
            ot.plan_map = default_map
    epsilons = {eps: scores[f"n_A T^T (paper, kept), epsilon={eps:g}"] for eps in ot.EPSILON_GRID}
    chosen = max(epsilons, key=epsilons.get)  # the first of equals: the smallest epsilon
    started = time.perf_counter()
    aligned = wb.align(model_a, model_b, method="ot", data=train, spec=spec, epsilon=chosen, **PASS)
    seconds = time.perf_counter() - started
    merged = _merged(model_a, aligned, train)
    return {
        "widths": {
            "reference_a": spec.groups["features.conv1"].size,
            "b": spec_b.groups["features.conv1"].size,
        },
        "validation": scores,
        "chosen_epsilon": chosen,
        "test_accuracy": {
            "a": wb.evaluate(model_a, eval_data=test).accuracy,
            "b": wb.evaluate(model_b, eval_data=test).accuracy,
            "b_transported_alone_reset": wb.evaluate(
                wb.reset_bn(aligned, data=train), eval_data=test
            ).accuracy,
            "merged": wb.evaluate(merged, eval_data=test).accuracy,
        },
        "merged_test_loss": wb.evaluate(merged, eval_data=test).loss,
        "ot_seconds": seconds,
    }


def different_widths(a, train, test, fit, val, epochs: int) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10)
        init = wb.create_model("cnn", width=1, in_channels=1)
    started = time.perf_counter()
    half = wb.train_model(
        init,
        data=train,
        epochs=epochs,
        seed=10,
        lr=0.2,
        augment=wb.random_translate(2),
        device="cpu",
        **PASS,
    )
    train_seconds = time.perf_counter() - started
    return {
        "half_width_model": {"width": 1, "epochs": epochs, "seed": 10, "lr": 0.2, "translate": 2,
                             "train_seconds": train_seconds},
        "half_into_full": _fuse(a, half, train, test, fit, val),
        "full_into_half": _fuse(half, a, train, test, fit, val),
    }  # fmt: skip


# --- the plans alone: the library calls against the code they replaced -------------------


def _handwritten_sinkhorn(cost: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The log-domain Sinkhorn workbench had before POT (same schedule and tolerances)."""
    n, m = cost.shape
    scale = float((cost - cost.min()).mean())
    log_a = torch.full((n,), -math.log(n), dtype=torch.float64)
    log_b = torch.full((m,), -math.log(m), dtype=torch.float64)
    f, g = torch.zeros(n, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    target = epsilon * scale
    stages = max(0, math.ceil(math.log2(max(scale / target, 1.0))))
    for stage in range(stages + 1):
        reg = max(target, scale / 2**stage)
        last = reg == target
        iterations = ot._ITERATIONS if last else ot._STAGE_ITERATIONS
        for iteration in range(iterations):
            f = reg * (log_a - torch.logsumexp((g[None, :] - cost) / reg, 1))
            g = reg * (log_b - torch.logsumexp((f[:, None] - cost) / reg, 0))
            if iteration % 10 == 9 or iteration == iterations - 1:
                rows = torch.exp((f[:, None] + g[None, :] - cost) / reg).sum(1)
                error = float((rows - 1.0 / n).abs().sum())
                if error < (ot._TOLERANCE if last else ot._STAGE_TOLERANCE):
                    break
    return torch.exp((f[:, None] + g[None, :] - cost) / reg)


def _linprog_plan(cost: torch.Tensor) -> torch.Tensor:
    """The transportation LP workbench solved before POT (HiGHS, integer marginals)."""
    n, m = cost.shape
    rows = sparse.kron(sparse.eye(n), np.ones((1, m)))
    columns = sparse.kron(np.ones((1, n)), sparse.eye(m))
    constraints = sparse.vstack([rows, columns]).tocsr()
    bounds = np.concatenate([np.full(n, float(m)), np.full(m, float(n))])
    result = linprog(
        cost.numpy().reshape(-1), A_eq=constraints, b_eq=bounds, bounds=(0, None), method="highs"
    )
    return torch.from_numpy(result.x.reshape(n, m)).clamp_min(0.0) / (n * m)


def _emd_plan(cost: torch.Tensor) -> torch.Tensor:
    n, m = cost.shape
    rows = torch.full((n,), float(m), dtype=torch.float64)
    columns = torch.full((m,), float(n), dtype=torch.float64)
    return pot.emd(rows, columns, cost, numItermax=ot._EMD_ITERATIONS) / (n * m)


def _best(function, repeats: int) -> tuple[float, torch.Tensor]:
    seconds = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the row errors are reported
            plan = function()
        seconds = min(seconds, time.perf_counter() - started)
    return seconds, plan


def _compare(cost: torch.Tensor, candidates: dict, repeats: int) -> dict:
    n = cost.shape[0]
    row: dict = {"shape": list(cost.shape)}
    plans = {}
    for label, function in candidates.items():
        seconds, plans[label] = _best(function, repeats)
        row[f"{label}_seconds"] = seconds
        row[f"{label}_row_error"] = float((plans[label].sum(1) - 1.0 / n).abs().sum())
        row[f"{label}_cost"] = float((plans[label] * cost).sum())
    first, *others = plans
    for label in others:
        row[f"max_difference_n_T_{first}_{label}"] = float(
            (plans[first] - plans[label]).abs().max() * n
        )
    return row


def plans() -> dict:
    torch.manual_seed(0)
    train = wb.load_dataset("mnist-5k", "train")
    a, b = wb.load_quickstart_models((0, 1))
    spec = permutation_spec(a, example_input=train.images[:2])
    stats = wb.alignment.collect_statistics(
        [a, b], data=train.subset(torch.arange(1000), "train"), spec=spec, **PASS
    )
    costs = {name: ot.ground_cost(s) for name, s in stats.items()}
    costs.update({f"{name} x half of B": c[:, ::2].contiguous() for name, c in list(costs.items())})
    generator = torch.Generator().manual_seed(0)
    for n, m in ((512, 512), (1024, 1024), (512, 1024)):
        costs[f"random {n} x {m}"] = torch.rand(n, m, generator=generator, dtype=torch.float64)
    ot.sinkhorn(costs[next(iter(costs))], 0.03)  # POT imported and warm
    exact, entropic = [], []
    for name, cost in costs.items():
        if cost.shape[0] == cost.shape[1]:
            candidates = {
                "linear_sum_assignment (kept)": lambda c=cost: ot.exact_plan(c),
                "pot_emd": lambda c=cost: _emd_plan(c),
            }
        else:
            candidates = {
                "pot_emd (new)": lambda c=cost: ot.exact_plan(c),
                "linprog (old)": lambda c=cost: _linprog_plan(c),
            }
        exact.append({"cost": name, **_compare(cost, candidates, 5)})
        print(json.dumps(exact[-1]), flush=True, file=sys.stderr)
        if name.startswith("random"):
            continue
        for eps in ot.EPSILON_GRID[1:]:
            candidates = {
                "pot_sinkhorn_log (new)": lambda c=cost, e=eps: ot.sinkhorn(c, e),
                "handwritten (old)": lambda c=cost, e=eps: _handwritten_sinkhorn(c, e),
            }
            entropic.append({"cost": name, "epsilon": eps, **_compare(cost, candidates, 3)})
            print(json.dumps(entropic[-1]), flush=True, file=sys.stderr)
    total = {
        key: sum(r[f"{key}_seconds"] for r in entropic)
        for key in ("pot_sinkhorn_log (new)", "handwritten (old)")
    }
    return {
        "benchmark": "ot_fusion plans",
        "costs": "1 - correlation of the shipped pair's activations on 1,000 mnist-5k training "
        "images (every group; 'x half of B': against every second channel of B), and "
        "uniform random costs",
        "threads": torch.get_num_threads(),
        "exact": exact,
        "entropic": entropic,
        "entropic_total_seconds": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--plans", action="store_true", help="time the transport plans only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.plans:
        text = json.dumps(plans(), indent=2)
        PLANS.write_text(text + "\n")
        print(text)
        return
    torch.manual_seed(0)
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    fit, val = wb.train_val_split(train, 0.1, seed=0)
    a, b = wb.load_quickstart_models((0, 1))
    spec = permutation_spec(a, example_input=train.images[:2])
    result = {
        "benchmark": "ot_fusion",
        "models": "quickstart cnn (width 2), mnist-5k seeds 0 and 1; a width-1 cnn trained here",
        "alphas": ALPHAS,
        "threads": torch.get_num_threads(),
        "epsilon_grid": list(ot.EPSILON_GRID),
        "validation": "10% of mnist-5k train (train_val_split seed 0); the rest for statistics",
    }
    result["equal_widths"] = equal_widths(a, b, spec, train, test)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    result["different_widths"] = different_widths(a, train, test, fit, val, args.epochs)
    text = json.dumps(result, indent=2)
    RESULT.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
