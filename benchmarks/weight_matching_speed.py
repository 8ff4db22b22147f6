"""Weight matching speed on ResNet20 at several widths: ours vs the `rebasin` package.

Both align model B (seed 1) to model A (seed 0), random initializations, on the CPU, in
one run. For each we report the wall time (spec derivation and matching), and whether
the permuted model B still computes the same function (max |logits difference|): a
permutation that changes the function is a broken alignment, whatever its speed. Each side runs
once, untimed, before the first row, so that no row pays the process's one-time costs.

    pip install rebasin   # optional peer; without it only our numbers are printed
    python benchmarks/weight_matching_speed.py [--widths 1 4 16]

With ``--timm``: weight matching between two random initializations of timm CNNs with
large graphs (hundreds of groups, concatenations, grouped convolutions; 64 px input for
the spec), wall and CPU seconds of the spec and of the matching, the number of groups,
and the wall seconds issue 30 measured before the matching solved each group again only
when a permutation it depends on had changed (idle 2-core machine); and the matching
again with every similarity term computed whole rather than updated by the channels that
moved: its seconds, whether it finds the same permutations, and both objectives. Writes
``benchmarks/results/weight_matching_speed_timm.json``.

With ``--timm-all``: the matching's wall seconds on every timm CNN of
``spec_coverage_timm.py`` up to its 60M parameters (spec at the model's smallest input
size there), and the slowest. Writes ``weight_matching_speed_timm_all.json``;
``--again MODEL ...`` measures those models again and replaces their rows; ``--repeats K``
takes the median of K matchings of each pair (wall times here vary by a third from run
to run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import workbench as wb
from workbench.alignment import apply_permutation, weight_matching, weight_similarity
from workbench.graph import permutation_spec

RESULTS = Path(__file__).resolve().parent / "results" / "weight_matching_speed.json"


def resnet20(width: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return wb.create_model("resnet20", width=width).eval()


def max_diff(model_x: torch.nn.Module, model_y: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (model_x(x) - model_y(x)).abs().max().item()


def ours(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> dict:
    started = time.perf_counter()
    spec = permutation_spec(a, example_input=x)
    traced = time.perf_counter()
    perm = weight_matching(a, b, spec=spec)
    done = time.perf_counter()
    aligned = apply_permutation(b, spec=spec, perm=perm)
    return {
        "seconds": done - started,
        "spec_seconds": traced - started,
        "match_seconds": done - traced,
        "function_preserved_max_abs_diff": max_diff(b, aligned, x),
    }


def rebasin_peer(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> dict:
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        return {"error": "rebasin is not installed (pip install rebasin)"}
    b_copy = copy.deepcopy(b)
    started = time.perf_counter()
    try:
        pcd = PermutationCoordinateDescent(a, b_copy, x)
        pcd.rebasin()
    except Exception as exc:  # the peer may fail on a model; that is a result too
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "function_preserved_max_abs_diff": max_diff(b, b_copy, x)}


# Wall seconds of weight matching before the change (issue 30, idle 2-core machine).
TIMM_BEFORE = {
    "mobilenetv4_conv_small": 47.0,
    "hrnet_w18_small_v2": 243.0,
    "seresnext26d_32x4d": 82.0,
    "resnet50": 8.0,
    "dpn48b": 23.0,
    "res2net50_26w_4s": 300.0,  # "over 300 s"
}
TIMM_RESULTS = RESULTS.parent / "weight_matching_speed_timm.json"
TIMM_ALL_RESULTS = RESULTS.parent / "weight_matching_speed_timm_all.json"


def timm_pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    import timm

    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(timm.create_model(name, pretrained=False, num_classes=10).eval())
    return models[0], models[1]


@contextlib.contextmanager
def whole_terms() -> Iterator[None]:
    """Weight matching with every similarity term computed whole, never updated by the
    channels that moved (the code before that update, for comparison)."""
    saved = weight_similarity.UPDATE_SHARE
    weight_similarity.UPDATE_SHARE = -1.0
    try:
        yield
    finally:
        weight_similarity.UPDATE_SHARE = saved


def timm_rows() -> dict:
    """Each model's row, the results file written again after each (a long run cut short
    keeps what it measured)."""
    from weight_matching_loops import objective

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    rows: list[dict] = []
    for name, before in TIMM_BEFORE.items():
        a, b = timm_pair(name)
        wall, cpu = time.perf_counter(), time.process_time()
        spec = permutation_spec(a, example_input=x)
        spec_wall, spec_cpu = time.perf_counter() - wall, time.process_time() - cpu
        wall, cpu = time.perf_counter(), time.process_time()
        perm = weight_matching(a, b, spec=spec)
        match_wall, match_cpu = time.perf_counter() - wall, time.process_time() - cpu
        with whole_terms():
            wall = time.perf_counter()
            whole = weight_matching(a, b, spec=spec)
            whole_wall = time.perf_counter() - wall
        state_a, state_b = ({k: v.detach() for k, v in m.named_parameters()} for m in (a, b))
        row = {
            "model": name,
            "parameters": sum(p.numel() for p in a.parameters()),
            "groups": len(spec.groups),
            "coverage": spec.coverage(),
            "spec_seconds": spec_wall,
            "spec_cpu_seconds": spec_cpu,
            "match_seconds": match_wall,
            "match_cpu_seconds": match_cpu,
            "before_match_seconds_idle": before,
            "whole_terms_match_seconds": whole_wall,
            "same_permutations_as_whole_terms": all(torch.equal(perm[g], whole[g]) for g in perm),
            "objective": objective(spec, state_a, state_b, perm),
            "whole_terms_objective": objective(spec, state_a, state_b, whole),
        }
        row["load_average"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        result = {
            "benchmark": "weight_matching_speed timm",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "rows": rows,
        }
        TIMM_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def timm_all_rows(again: list[str] | None = None, repeats: int = 1) -> dict:
    """Every model of the coverage benchmark's list, the results file written after each;
    with ``again``, only those models, measured again in place of their rows; the median
    of ``repeats`` matchings of the same pair."""
    from spec_coverage_timm import FAMILY, MAX_PARAMETERS, input_sizes

    rows: list[dict] = json.loads(TIMM_ALL_RESULTS.read_text())["rows"] if again else []
    for name in again or FAMILY:
        a, b = timm_pair(name)
        parameters = sum(p.numel() for p in a.parameters())
        if parameters > MAX_PARAMETERS:
            continue
        size = input_sizes(a)[0]
        spec = permutation_spec(a, example_input=torch.randn(2, 3, size, size))
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            weight_matching(a, b, spec=spec)
            runs.append(time.perf_counter() - started)
        row = {"model": name, "parameters": parameters, "groups": len(spec.groups)}
        row["match_seconds"] = statistics.median(runs)
        if repeats > 1:
            row["match_seconds_runs"] = runs
        row["load_average"] = os.getloadavg()[0]
        place = next((i for i, r in enumerate(rows) if r["model"] == name), len(rows))
        rows[place : place + 1] = [row]
        print(json.dumps(row), file=sys.stderr, flush=True)
        slowest = max(rows, key=lambda r: r["match_seconds"])
        result = {
            "benchmark": "weight_matching_speed timm_all",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "models": len(rows),
            "slowest": {"model": slowest["model"], "match_seconds": slowest["match_seconds"]},
            "rows": rows,
        }
        TIMM_ALL_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=float, nargs="+", default=[1, 4, 16])
    parser.add_argument("--timm", action="store_true", help="the timm section (see above)")
    parser.add_argument("--timm-all", action="store_true", help="every timm CNN (see above)")
    parser.add_argument("--again", nargs="+", help="with --timm-all: measure these models again")
    parser.add_argument("--repeats", type=int, default=1, help="with --timm-all: the median of")
    args = parser.parse_args()
    if args.timm or args.timm_all:
        print(
            json.dumps(
                timm_all_rows(args.again, args.repeats) if args.timm_all else timm_rows(), indent=2
            )
        )
        return
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    # one untimed run on each side first: the process's one-time costs (imports, tracing
    # and kernel set-up) are not a matching's
    ours(resnet20(1, 0), resnet20(1, 1), x), rebasin_peer(resnet20(1, 0), resnet20(1, 1), x)
    rows = []
    for width in args.widths:
        a, b = resnet20(width, 0), resnet20(width, 1)
        row = {"width": width, "parameters": sum(p.numel() for p in a.parameters())}
        row["ours"] = ours(a, b, x)
        row["rebasin"] = rebasin_peer(a, b, x)
        if "seconds" in row["rebasin"]:
            row["speedup_ours_vs_rebasin"] = row["rebasin"]["seconds"] / row["ours"]["seconds"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "weight_matching_speed",
                "model": "resnet20",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
