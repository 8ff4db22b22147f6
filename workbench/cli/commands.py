"""The ``workbench`` sub-commands: each reads its parsed arguments, runs the same
pipeline as the notebooks and writes its figures and tables (:mod:`workbench.cli.outputs`)."""

from __future__ import annotations

import argparse
import ast
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from workbench import figures
from workbench.alignment import registry
from workbench.alignment.options import check_options, quick_options
from workbench.analysis.comparison import compare_methods, plot_comparison
from workbench.analysis.lmc import (
    barrier_table,
    curves_frame,
    pairwise_curves,
    plot_bands,
    plot_curves,
    write_csv,
)
from workbench.analysis.planes import loss_plane, plot_plane
from workbench.analysis.sweeps import sweep
from workbench.checkpoints import (
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    shipped_models_dir,
)
from workbench.cli.executors import executor_from_args
from workbench.cli.outputs import DEMO_FORMATS, STEMS, checkpoints, report, write
from workbench.data import (
    TensorImageDataset,
    dataset_info,
    load_dataset,
)
from workbench.figures import series_label
from workbench.training import random_translate, training_runs


def run_train(args: argparse.Namespace) -> int:
    info = dataset_info(args.dataset)
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    paths = checkpoints(args)
    model_kwargs = {
        "width": args.width,
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
    }
    recipe = {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "translate": args.translate,
    }
    runs = training_runs(
        args.arch,
        args.seeds,
        train,
        args.epochs,
        model_kwargs=model_kwargs,
        eval_data=test,
        lr=args.lr,
        batch_size=args.batch_size,
        augment=random_translate(args.translate) if args.translate else None,
        partition=args.split,
        concentration=args.alpha,
    )
    for seed, path, run in zip(args.seeds, paths, runs, strict=True):
        metrics = run.metrics
        save_checkpoint(
            run.model.cpu(),
            path,
            overwrite=args.overwrite,
            dataset=args.dataset,
            seed=seed,
            metrics=metrics,
            recipe=recipe,
            **run.metadata,  # the data split, when trained on one part of it
        )
        print(
            f"{path}: test accuracy {100 * metrics['test_accuracy']:.2f}%, "
            f"{metrics['train_seconds']:.1f} s"
        )
    return 0


# The demo's data: the test split for the curves; for matching and RESET, 1000 evenly
# spaced training images (RESET runs at every point: the whole split would double the time
# for the same curves to within 0.01 of loss).
DEMO_RESET_IMAGES = 1000


def demo_table(curves: Sequence) -> pd.DataFrame:
    """One row per series of the demo: test barrier, midpoint accuracy, and the share of
    the naive barrier (plain averaging, no BatchNorm handling) that it removes."""
    rows = [curve.summary() for curve in curves]
    naive = next(r["barrier"] for r in rows if r["label"] == "naive" and r["bn"] == "none")
    return pd.DataFrame(
        {
            "method": [series_label(r["label"], r["bn"]) for r in rows],
            "test_barrier": [r["barrier"] for r in rows],
            "midpoint_accuracy": [r["midpoint_accuracy"] for r in rows],
            "naive_barrier_removed": [1.0 - r["barrier"] / naive for r in rows],
        }
    )


def run_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    (model_a, model_b), names = read_models(args.models, 2)
    train, test = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")
    count = min(DEMO_RESET_IMAGES, len(train))
    reset_data = train.subset(torch.linspace(0, len(train) - 1, count).long(), "train")
    bn = args.bn
    series = [("none", "none")] + [(m, bn) for m in args.methods if (m, bn) != ("none", "none")]
    curves = []
    for method, handling in series:
        curves += pairwise_curves(
            [model_a, model_b], eval_data={"test": test}, data=reset_data, alphas=args.alphas,
            bn=handling, method=method, progress=True, cache=not args.no_cache,
        )  # fmt: skip
    fig, axes = figures.new_figure(columns=2, aspect=0.4, ncols=2)
    plot_curves(curves, "loss", ax=axes[0], legend=False)
    plot_curves(curves, "accuracy", ax=axes[1], legend=False)
    figures.shared_legend(fig, axes[0], ncols=3)
    stem = STEMS["demo"](args)
    written = figures.save(fig, stem, formats=DEMO_FORMATS)
    table = demo_table(curves)
    written.append(figures.save_table(table, stem.with_name(f"{stem.name}.csv")))
    written.append(write_csv(curves, stem.with_name(f"{stem.name}_curves.csv")))
    print(
        f"Between {names[0]} and {names[1]}, on the {len(test)} test images (matching and "
        f"RESET on {count} training images):"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("Wrote " + ", ".join(map(str, written)))
    print(f"Done in {time.perf_counter() - started:.1f} s.")
    return 0


def read_models(
    paths: Sequence[str] | None, count: int, at_least: bool = False
) -> tuple[list, list]:
    """The checkpoints at ``paths``, else the first ``count`` shipped quickstart models."""
    if not paths:
        paths = [
            shipped_models_dir() / f"cnn_mnist-5k_seed{seed}.safetensors" for seed in range(count)
        ]
    paths = [Path(p) for p in paths]
    if len(paths) < count or (len(paths) != count and not at_least):
        wanted = f"at least {count}" if at_least else str(count)
        raise ValueError(
            f"Expected {wanted} checkpoints after --models, got {len(paths)}: "
            f"{[str(p) for p in paths]}."
        )
    return [load_checkpoint(p) for p in paths], [p.stem for p in paths]


def read_splits(dataset: str, limit: int | None) -> tuple[TensorImageDataset, TensorImageDataset]:
    """The dataset's train and test splits; with ``limit``, ``limit`` evenly spaced images
    of each (every class keeps its share)."""
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    if limit is None:
        return train, test
    if limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {limit}.")
    return tuple(
        split.subset(torch.linspace(0, len(split) - 1, min(limit, len(split))).long(), name)
        for split, name in ((train, "train"), (test, "test"))
    )


def run_lmc(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    models, names = read_models(args.models, 2, at_least=True)
    train, test = read_splits(args.dataset, args.limit)
    curves = []
    for method in args.methods:
        curves += pairwise_curves(
            models,
            eval_data={"train": train, "test": test},
            alphas=args.alphas,
            bn=args.bn,
            method=method,
            cache=not args.no_cache,
        )
    fig, axes = figures.new_figure(columns=2, aspect=0.4, ncols=2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        if len(models) == 2:
            plot_curves(curves, metric, ax=ax, legend=False)
        else:
            plot_bands(curves, metric, band=args.band, ax=ax, legend=False)
    figures.shared_legend(fig, axes[0], ncols=3)
    table = barrier_table(curves, settings=("pair",))
    frame = curves_frame(curves, settings=("pair",))
    written = write(fig, {"": table, "_curves": frame}, STEMS["lmc"](args))
    print(f"LMC between {', '.join(names)} ({args.dataset}, bn={args.bn}):")
    report(table, written, started)
    return 0


def merge_options(
    methods: Sequence[str], quick: bool, given: Sequence[str] | None
) -> dict[str, dict[str, Any]]:
    """Each method's own options (method name -> options, as ``compare_methods`` takes
    them): with ``quick``, its quick preset (searched hyperparameters at their defaults,
    fewer learning steps); then every ``--option``: ``METHOD.NAME=VALUE`` for one method,
    or ``NAME=VALUE`` for every method given that takes it (an option none takes is an
    error). Values are read as Python literals (``0.1``, ``(0.1, 1.0)``, ``None``), else
    as text."""
    found = {m: registry.get_method(m) for m in map(registry.canonical_method, methods)}
    groups = {m: dict(quick_options(found[m])) if quick else {} for m in found}
    for item in given or ():
        target, sep, text = item.partition("=")
        scope, _, name = target.rpartition(".")
        if not sep or not name.isidentifier():
            raise ValueError(
                f"--option takes NAME=VALUE or METHOD.NAME=VALUE (e.g. gamma=0.1, "
                f"np_merge.steps=50), got {item!r}."
            )
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if scope:
            scope = registry.canonical_method(scope)
            if scope not in groups:
                raise ValueError(
                    f"--option {item!r} names the method {scope!r}, which is not among "
                    f"--methods {list(groups)}."
                )
            groups[scope][name] = value
            continue
        takers = [m for m in groups if found[m].accepts(name) or name in found[m].renamed]
        if not takers:
            check_options(list(groups), {name: value})  # raises, naming who takes it
        for method in takers:
            groups[method][name] = value
    return {method: group for method, group in groups.items() if group}


def run_merge(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    models, names = read_models(args.models, 2, at_least=True)
    train, test = read_splits(args.dataset, args.limit)
    bn, cache = args.bn, not args.no_cache
    options = merge_options(args.methods, args.quick, args.option)
    table = compare_methods(
        models,
        data=train,
        eval_data=test,
        methods=args.methods,
        bn=bn,
        cache=cache,
        options=options,
    )
    written = write(plot_comparison(table), {"": table}, STEMS["merge"](args))
    print(f"Merging the first N of {', '.join(names)} ({args.dataset}, bn={args.bn}):")
    report(table, written, started)
    return 0


def run_plane(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    models, names = read_models(args.models, 3)
    train, test = read_splits(args.dataset, args.limit)
    plane = loss_plane(
        models,
        eval_data={"train": train, "test": test}[args.split],
        data=train,
        resolution=args.resolution,
        bn=args.bn,
        method=args.method,
        margin=args.margin,
        labels=names,
        cache=not args.no_cache,
    )
    fig, axes = figures.new_figure(columns=2, aspect=0.42, ncols=2)
    plot_plane(plane, "loss", ax=axes[0])
    plot_plane(plane, "accuracy", ax=axes[1])
    written = write(fig, {"": plane.to_frame()}, STEMS["plane"](args))
    print(f"Loss plane through {', '.join(names)} ({args.method}, bn={args.bn}, {args.split}):")
    report(pd.DataFrame([plane.summary()]), written, started)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    train, test = read_splits(args.dataset, args.limit)
    executor = executor_from_args(args)
    result = sweep(
        args.parameter,
        args.values,
        data=train,
        eval_data=test,
        epochs=args.epochs,
        architecture=args.arch,
        model_kwargs={} if args.parameter == "width" else {"width": args.width},
        seeds=args.seeds,
        methods=args.methods,
        bn=args.bn,
        alphas=args.alphas,
        splits=args.splits,
        cache=not args.no_cache,
        executor=executor,
    )
    fig, axes = figures.new_figure(columns=2, aspect=0.4, ncols=2)
    result.plot("barrier", ax=axes[0])
    result.plot("midpoint_accuracy", ax=axes[1])
    tables = {"": result.table, "_curves": result.curves_frame()}
    written = write(fig, tables, STEMS["sweep"](args))
    report(result.table, written, started)
    return 0


def run_info(args: argparse.Namespace) -> int:
    print(json.dumps(read_metadata(args.checkpoint), indent=2))
    return 0
