"""The ``workbench`` command: the same pipeline as the notebooks, headless."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure

from workbench import figures
from workbench.alignment import registry
from workbench.analysis.comparison import compare_methods, plot_comparison
from workbench.analysis.lmc import (
    barrier_table,
    curves_frame,
    lmc_curves,
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
from workbench.data import (
    DatasetUnavailableError,
    TensorImageDataset,
    dataset_info,
    load_dataset,
)
from workbench.files import check_writable_dir
from workbench.training import random_translate, training_runs


def _train(args: argparse.Namespace) -> int:
    info = dataset_info(args.dataset)
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    out = Path(args.out)
    parts = [f"_{args.split}-part{i}" if args.split else "" for i in range(len(args.seeds))]
    paths = [
        out / f"{args.arch}_{args.dataset}_seed{seed}{part}.safetensors"
        for seed, part in zip(args.seeds, parts, strict=True)
    ]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not args.overwrite:
        print(f"error: {', '.join(existing)} exist; pass --overwrite to replace.", file=sys.stderr)
        return 2
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
        test_data=test,
        lr=args.lr,
        batch_size=args.batch_size,
        augment=random_translate(args.translate) if args.translate else None,
        split=args.split,
        alpha=args.alpha,
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


def _demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    directory = Path(args.models)
    paths = [directory / f"cnn_mnist-5k_seed{seed}.safetensors" for seed in args.seeds]
    model_a, model_b = (load_checkpoint(p) for p in paths)
    data = {"train": load_dataset("mnist-5k", "train"), "test": load_dataset("mnist-5k", "test")}
    curves = []
    for bn in (None, "reset"):
        curves += lmc_curves(model_a, model_b, data, alphas=args.alphas, bn=bn).values()
    out = Path(args.out)
    fig, axes = figures.new_figure(columns=2, aspect=0.4, ncols=2)
    plot_curves(curves, "loss", ax=axes[0], legend=False)
    plot_curves(curves, "accuracy", ax=axes[1], legend=False)
    figures.shared_legend(fig, axes[0])
    written = figures.save(fig, out / "lmc_naive", formats=("pdf", "png"))
    written.append(write_csv(curves, out / "lmc_naive.csv"))
    table = barrier_table(curves)
    print(f"Naive interpolation between {paths[0].name} and {paths[1].name}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("Wrote " + ", ".join(map(str, written)))
    print(f"Done in {time.perf_counter() - started:.1f} s.")
    return 0


def _models(paths: Sequence[str] | None, count: int, at_least: bool = False) -> tuple[list, list]:
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


def _splits(dataset: str, limit: int | None) -> tuple[TensorImageDataset, TensorImageDataset]:
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


def _bn(value: str) -> str | None:
    return None if value == "none" else value


def _write(fig: Figure, tables: dict[str, pd.DataFrame], stem: Path) -> list[Path]:
    """The figure as PDF, SVG and PNG, and each table as ``<stem><suffix>.csv``."""
    written = figures.save(fig, stem, formats=("pdf", "svg", "png"))
    for suffix, table in tables.items():
        written.append(figures.save_table(table, stem.with_name(f"{stem.name}{suffix}.csv")))
    return written


def _report(table: pd.DataFrame, written: list[Path], started: float) -> None:
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("Wrote " + ", ".join(map(str, written)))
    print(f"Done in {time.perf_counter() - started:.1f} s.")


def _lmc(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    models, names = _models(args.models, 2, at_least=True)
    train, test = _splits(args.dataset, args.limit)
    curves = []
    for method in args.methods:
        curves += pairwise_curves(
            models,
            {"train": train, "test": test},
            args.alphas,
            _bn(args.bn),
            method,
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
    written = _write(fig, {"": table, "_curves": frame}, Path(args.out) / "lmc")
    print(f"LMC between {', '.join(names)} ({args.dataset}, bn={args.bn}):")
    _report(table, written, started)
    return 0


def _merge(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    models, names = _models(args.models, 2, at_least=True)
    train, test = _splits(args.dataset, args.limit)
    bn, cache = _bn(args.bn), not args.no_cache
    table = compare_methods(models, train, test, args.methods, bn=bn, cache=cache)
    written = _write(plot_comparison(table), {"": table}, Path(args.out) / "merge")
    print(f"Merging the first N of {', '.join(names)} ({args.dataset}, bn={args.bn}):")
    _report(table, written, started)
    return 0


def _plane(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    models, names = _models(args.models, 3)
    train, test = _splits(args.dataset, args.limit)
    plane = loss_plane(
        models,
        {"train": train, "test": test}[args.split],
        args.resolution,
        _bn(args.bn),
        method=args.method,
        margin=args.margin,
        bn_data=train,
        labels=names,
        cache=not args.no_cache,
    )
    fig, axes = figures.new_figure(columns=2, aspect=0.42, ncols=2)
    plot_plane(plane, "loss", ax=axes[0])
    plot_plane(plane, "accuracy", ax=axes[1])
    written = _write(fig, {"": plane.to_frame()}, Path(args.out) / f"plane_{args.method}")
    print(f"Loss plane through {', '.join(names)} ({args.method}, bn={args.bn}, {args.split}):")
    _report(pd.DataFrame([plane.summary()]), written, started)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    train, test = _splits(args.dataset, args.limit)
    result = sweep(
        args.parameter,
        args.values,
        train,
        test,
        epochs=args.epochs,
        architecture=args.arch,
        model_kwargs={} if args.parameter == "width" else {"width": args.width},
        seeds=args.seeds,
        methods=args.methods,
        bn=_bn(args.bn),
        alphas=args.alphas,
        splits=args.splits,
        cache=not args.no_cache,
    )
    fig, axes = figures.new_figure(columns=2, aspect=0.4, ncols=2)
    result.plot("barrier", ax=axes[0])
    result.plot("midpoint_accuracy", ax=axes[1])
    tables = {"": result.table, "_curves": result.curves_frame()}
    written = _write(fig, tables, Path(args.out) / f"sweep_{args.parameter}")
    _report(result.table, written, started)
    return 0


def _info(args: argparse.Namespace) -> int:
    print(json.dumps(read_metadata(args.checkpoint), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``workbench`` command."""
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train models that differ only by seed and save them")
    train.add_argument("arch", help="architecture, e.g. cnn, vgg11_bn, resnet20, tv:resnet18")
    train.add_argument("--dataset", default="mnist-5k")
    train.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    train.add_argument("--width", type=float, default=1)
    train.add_argument("--epochs", type=int, default=15)
    train.add_argument("--lr", type=float, default=0.2)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument(
        "--translate",
        type=int,
        default=2,
        help="random shift augmentation in pixels (0 to turn off)",
    )
    train.add_argument(
        "--split",
        choices=["disjoint", "dirichlet"],
        help="train model i on part i of the training set: disjoint classes, or each "
        "class shared in Dirichlet(alpha) proportions (files get a _<split>-part<i> suffix)",
    )
    train.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration (--split dirichlet)"
    )
    train.add_argument("--out", default=str(shipped_models_dir()))
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(run=_train)

    demo = sub.add_parser("demo", help="naive and BN-reset LMC curves of the shipped pair")
    demo.add_argument("--models", default=str(shipped_models_dir()))
    demo.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    demo.add_argument("--alphas", type=int, default=11)
    demo.add_argument("--out", default=figures.EXPORT_DIR)
    demo.set_defaults(run=_demo)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", default="mnist-5k")
    common.add_argument(
        "--out", default=figures.EXPORT_DIR, help="folder for figures and CSV tables"
    )
    common.add_argument(
        "--limit", type=int, help="use N evenly spaced images of each split (quick runs)"
    )
    common.add_argument(
        "--no-cache", action="store_true", help="recompute instead of reading cached results"
    )
    # read when the parser is built; "naive" = "none"; merges of N models have no pair views
    methods = [*registry.pairwise_methods(), "naive"]

    lmc = sub.add_parser(
        "lmc", parents=[common], help="LMC curves and barriers of a pair, or of all pairs of N"
    )
    lmc.add_argument(
        "--models", nargs="+", help="2 or more checkpoints (default: shipped seeds 0 and 1)"
    )
    lmc.add_argument(
        "--methods", nargs="+", default=["none", "weight", "activation"], choices=methods
    )
    lmc.add_argument("--bn", choices=["none", "reset", "repair"], default="reset")
    lmc.add_argument("--alphas", type=int, default=11, help="points on each path")
    lmc.add_argument(
        "--band", choices=["std", "range"], default="std", help="spread over pairs (N > 2)"
    )
    lmc.set_defaults(run=_lmc)

    merge = sub.add_parser(
        "merge", parents=[common], help="accuracy of N merged models per method, N = 2.."
    )
    merge.add_argument("--models", nargs="+", help="2 or more checkpoints (default: seeds 0, 1)")
    every = [*registry.methods(), "naive"]  # merges of N models included
    merge.add_argument("--methods", nargs="+", default=["none", "weight"], choices=every)
    merge.add_argument("--bn", choices=["none", "reset", "repair"], default="reset")
    merge.set_defaults(run=_merge)

    plane = sub.add_parser("plane", parents=[common], help="loss plane through three models")
    plane.add_argument("--models", nargs="+", help="3 checkpoints (default: shipped seeds 0-2)")
    plane.add_argument("--method", default="weight", choices=methods)
    plane.add_argument("--bn", choices=["none", "reset"], default="reset")
    plane.add_argument("--resolution", type=int, default=21, help="grid points per axis")
    plane.add_argument("--margin", type=float, default=0.2, help="border around the models")
    plane.add_argument("--split", choices=["train", "test"], default="test")
    plane.set_defaults(run=_plane)

    sweeper = sub.add_parser("sweep", parents=[common], help="barrier against width or epochs")
    sweeper.add_argument("parameter", choices=["width", "epochs"])
    sweeper.add_argument("values", type=float, nargs="+", help="widths or epoch counts")
    sweeper.add_argument("--arch", default="cnn")
    sweeper.add_argument("--epochs", type=int, default=4, help="epochs per model (width sweep)")
    sweeper.add_argument("--width", type=float, default=1, help="width (epoch sweep)")
    sweeper.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    sweeper.add_argument("--methods", nargs="+", default=["none", "weight"], choices=methods)
    sweeper.add_argument("--bn", choices=["none", "reset", "repair"], default="reset")
    sweeper.add_argument("--alphas", type=int, default=5)
    sweeper.add_argument("--splits", nargs="+", default=["test"], choices=["train", "test"])
    sweeper.set_defaults(run=_sweep)

    info = sub.add_parser("info", help="print a checkpoint's metadata")
    info.add_argument("checkpoint")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "out", None) is not None:  # before any training or computing
            check_writable_dir(args.out, "--out folder", "pass --out <a folder you can write to>")
        return args.run(args)
    except (ValueError, OSError, DatasetUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
