"""The whole unit study of the shipped pair (every layer, every unit, one method) against
the rendering it needs: do the measures add little on top of the pictures?

In a fresh cache folder: (1) render every unit of every studied layer of model A once
(uncached: the unit of cost, "one render of all those units"); (2) run the study, which
renders B's matched units and the merged model before and after RESET and caches them;
(3) run it again with every render cached but not the study, timing the study itself
(alignment, merge, RESET, the streaming pass, the cross-activation) and its parts, 3 times,
each right after the plain forward passes over the data the study needs (RESET's pass over
the training images, the four models' over the test images): this machine's speed drifts
within minutes, so the ratio is taken per run and the median run is kept. The result is
(3) in units of (1) and of those passes. CPU, wall-clock and process CPU seconds (the
machine may be shared). (4) the study asked for once more, read back from the cache as a
whole.

    python benchmarks/unit_study.py [--method weight] [--steps 32] [--units 16]
    python benchmarks/unit_study.py --pairs   # writes results/unit_study_pairs.json

``--pairs``: the per-layer correlation measures (no renders) over three independently
trained pairs: the shipped seeds (0, 1) and (2, 3), and seeds 4 and 5 trained here with the
shipped recipe (width 2, 15 epochs, lr 0.2, shifts of 2 pixels), as mean and s.d. over
pairs, for the naive merge and weight and activation matching, with RESET.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.featviz import study as study_module
from workbench.featviz.render import channel_count, resolve_layer

STUDY_COLUMNS = [
    *("corr_A", "corr_B", "cross_parents", "cross_A", "cross_B", "overlap_A", "overlap_B"),
    *("quality_A", "quality_merged_RESET", "converged_merged_RESET", "frac_both", "frac_neither"),
]
PAIR_COLUMNS = ["corr_parents", "corr_A", "corr_B", "overlap_A", "std_ratio", "frac_both"]
RESULT = Path(__file__).resolve().parent / "results" / "unit_study.json"


def _timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    found = function(*args, **kwargs)
    return found, time.perf_counter() - wall, time.process_time() - cpu


def _plain_passes(model, train, test, batch_size: int = 500) -> float:
    """Wall seconds of the plain forward passes the study needs, all with one model of
    the pair's architecture: once over ``train`` (RESET's statistics) and four times over
    ``test`` (A, B, the merged model before and after RESET)."""

    def passes() -> None:
        for data, times in ((train, 1), (test, 4)):
            for _ in range(times):
                for start in range(0, len(data), batch_size):
                    model(data.images[start : start + batch_size])

    with torch.inference_mode():
        return _timed(passes)[1]


def _parts() -> dict[str, float]:
    """Time the study's stages from now on (wall clock, summed over calls): the names
    :mod:`workbench.featviz.study` calls them by are wrapped."""
    seconds: dict[str, float] = {}
    for name in ("align_parents", "merged_at", "observe_layers", "cross_activation"):
        original = getattr(study_module, name)

        @functools.wraps(original)
        def timed(*args, _original=original, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                seconds[_name] = seconds.get(_name, 0.0) + time.perf_counter() - started

        setattr(study_module, name, timed)
    return seconds


def pairs(train, test) -> None:
    shipped = wb.load_quickstart_models((0, 1, 2, 3))
    trained = wb.train_models(
        "cnn", [4, 5], train, 15, model_kwargs={"width": 2, "in_channels": 1}, lr=0.2,
        augment=wb.random_translate(2), progress=False,
    )  # fmt: skip
    pairs = [(shipped[0], shipped[1]), (shipped[2], shipped[3]), tuple(trained)]
    found = {}
    for method in ("none", "weight", "activation"):
        study = wb.featviz.pairs_study(
            pairs, data=train, eval_data=test, method=method, bn="reset", render=False,
            progress=False,
        )  # fmt: skip
        columns = [*PAIR_COLUMNS, *(f"{c}_sd" for c in PAIR_COLUMNS)]
        found[method] = study.summary().set_index("layer")[columns].round(4).to_dict("index")
    result = {
        "benchmark": "unit_study pairs",
        "pairs": "shipped seeds (0, 1), (2, 3); seeds (4, 5) trained with the shipped recipe",
        "data": "alignment and RESET on mnist-5k train (4000), measures on mnist-5k test (1000)",
        "point": "relu",
        "bn": "reset",
        "statistic": "mean and s.d. (ddof 1) over pairs of each pair's mean over units",
        "n_pairs": len(pairs),
        "summary": found,
    }
    print(json.dumps(result, indent=2))
    RESULT.with_name("unit_study_pairs.json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", default="weight")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--units", type=int, default=16, help="the first N units per layer")
    parser.add_argument("--pairs", action="store_true", help="the study over three pairs")
    args = parser.parse_args()
    os.environ["WORKBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="unit-study-bench-")
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    if args.pairs:
        pairs(train, test)
        return
    model_a, model_b = wb.load_quickstart_models((0, 1))
    settings = {"data": train, "eval_data": test, "method": args.method, "bn": "reset"}
    settings.update(point="relu", steps=args.steps, units=args.units, progress=False)
    correlations = {}  # the correlation measures (no renders, every unit) of three methods
    for method in ("none", "weight", "activation"):
        found = wb.featviz.layer_study(
            model_a, model_b, render=False, **{**settings, "method": method, "units": None}
        ).summary()
        columns = ["corr_parents", "corr_A", "corr_B", "corr_A_before_bn", "corr_B_before_bn"]
        columns += ["std_ratio", "std_ratio_before_bn", "frac_both", "frac_neither"]
        correlations[method] = found.set_index("layer")[columns].round(4).to_dict("index")
    layers = list(correlations["none"])
    counts = [min(args.units, channel_count(resolve_layer(model_a, layer=n))) for n in layers]
    units = sum(counts)
    render_wall = render_cpu = 0.0
    for layer, count in zip(layers, counts, strict=True):
        _, wall, cpu = _timed(
            wb.render_channels, model_a, layer=layer, channels=range(count), steps=args.steps,
            point="relu", progress=False,
        )  # fmt: skip
        render_wall, render_cpu = render_wall + wall, render_cpu + cpu
    _, first_wall, first_cpu = _timed(wb.featviz.layer_study, model_a, model_b, **settings)
    # the study with its renders cached, 3 runs, each right after the plain passes (this
    # machine's speed drifts within minutes: the ratio is taken per run, then its median)
    runs = []
    for _ in range(3):
        plain = _plain_passes(model_a, train, test)
        wb.default_cache().clear("unit-study")  # the renders stay cached, the study does not
        parts = _parts()
        found = _timed(wb.featviz.layer_study, model_a, model_b, **settings)
        runs.append((found[1] / plain, *found, parts, plain))
        for name in parts:  # unwrap the timed stages for the next run
            setattr(study_module, name, getattr(study_module, name).__wrapped__)
    ratio, study, wall, cpu, parts, plain = sorted(runs, key=lambda run: run[0])[1]
    _, read_wall, _ = _timed(wb.featviz.layer_study, model_a, model_b, **settings)
    summary = study.summary().set_index("layer")
    result = {
        "benchmark": "unit_study",
        "pair": "shipped quickstart cnn, seeds 0 and 1",
        "data": "alignment and RESET on mnist-5k train (4000), measures on mnist-5k test (1000)",
        "method": args.method,
        "bn": "reset",
        "point": "relu",
        "steps": args.steps,
        "layers": layers,
        "units": units,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "render_all_units_one_model_seconds": render_wall,
        "render_all_units_one_model_cpu_seconds": render_cpu,
        "study_uncached_seconds": first_wall,
        "study_uncached_cpu_seconds": first_cpu,
        "study_cached_renders_seconds": wall,
        "study_cached_renders_cpu_seconds": cpu,
        "study_read_from_cache_seconds": read_wall,
        "study_parts_seconds": parts,
        "ratio_study_to_one_render": wall / render_wall,
        "ratio_study_to_one_render_cpu": cpu / render_cpu,
        "plain_passes_seconds": plain,
        "ratio_study_to_plain_passes": ratio,
        "ratio_study_to_plain_passes_runs": [run[0] for run in runs],
        "study": summary[STUDY_COLUMNS].round(4).to_dict("index"),
        "correlations_by_method": correlations,
    }
    print(json.dumps(result, indent=2))
    RESULT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
