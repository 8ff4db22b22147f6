"""The ``workbench`` command: the same pipeline as the notebooks, headless."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from workbench import figures
from workbench.checkpoints import (
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    shipped_models_dir,
)
from workbench.data import DatasetUnavailableError, dataset_info, load_dataset
from workbench.lmc import barrier_table, lmc_curves, plot_curves, write_csv
from workbench.training import random_translate, train_models


def _train(args: argparse.Namespace) -> int:
    info = dataset_info(args.dataset)
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    out = Path(args.out)
    paths = [out / f"{args.arch}_{args.dataset}_seed{seed}.safetensors" for seed in args.seeds]
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
    trained = train_models(
        args.arch,
        args.seeds,
        train,
        args.epochs,
        model_kwargs=model_kwargs,
        test_data=test,
        lr=args.lr,
        batch_size=args.batch_size,
        augment=random_translate(args.translate) if args.translate else None,
        return_metrics=True,
    )
    for seed, path, (model, metrics) in zip(args.seeds, paths, trained, strict=True):
        save_checkpoint(
            model.cpu(),
            path,
            overwrite=args.overwrite,
            dataset=args.dataset,
            seed=seed,
            metrics=metrics,
            recipe=recipe,
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
    train.add_argument("--out", default=str(shipped_models_dir()))
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(run=_train)

    demo = sub.add_parser("demo", help="naive and BN-reset LMC curves of the shipped pair")
    demo.add_argument("--models", default=str(shipped_models_dir()))
    demo.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    demo.add_argument("--alphas", type=int, default=11)
    demo.add_argument("--out", default="figures")
    demo.set_defaults(run=_demo)

    info = sub.add_parser("info", help="print a checkpoint's metadata")
    info.add_argument("checkpoint")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, DatasetUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
