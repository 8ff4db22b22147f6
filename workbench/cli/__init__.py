"""The ``workbench`` command: the same pipeline as the notebooks, headless."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from workbench import figures
from workbench.alignment import registry
from workbench.checkpoints import shipped_models_dir
from workbench.cli.commands import (
    run_demo,
    run_info,
    run_lmc,
    run_merge,
    run_plane,
    run_sweep,
    run_train,
)
from workbench.cli.executors import add_executor_arguments
from workbench.cli.outputs import check_outputs
from workbench.data import DatasetUnavailableError, datasets
from workbench.files import check_writable_dir
from workbench.merging import bn_modes

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``workbench`` command."""
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dataset_help = (
        f"a registered dataset: {', '.join(datasets())}, or one registered with "
        "workbench.register_dataset in the process that runs the command"
    )

    train = sub.add_parser("train", help="train models that differ only by seed and save them")
    train.add_argument("arch", help="architecture, e.g. cnn, vgg11_bn, resnet20, tv:resnet18")
    train.add_argument("--dataset", default="mnist-5k", help=dataset_help)
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
        "--partition",
        "--split",
        dest="split",
        choices=["disjoint", "dirichlet"],
        help="train model i on part i of the training set: disjoint classes, or each "
        "class shared in Dirichlet proportions (files get a _<partition>-part<i> suffix; "
        "--split is its former name)",
    )
    train.add_argument(
        "--concentration",
        "--alpha",
        dest="alpha",
        type=float,
        default=0.5,
        help="Dirichlet concentration (--partition dirichlet; --alpha is its former name)",
    )
    train.add_argument("--out", default=str(shipped_models_dir()))
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(run=run_train)

    demo = sub.add_parser(
        "demo",
        help="the loss barrier between two models, naive and after each alignment + RESET",
        description="The straight-line loss and accuracy between two models (default: the "
        "shipped pair) for plain averaging and for each alignment method with BatchNorm "
        "RESET, on the test split: the barrier naive averaging has, and how much of it "
        "each method removes.",
    )
    demo.add_argument("--models", nargs=2, help="2 checkpoints (default: shipped seeds 0, 1)")
    pairwise = registry.pairwise_methods()
    demo.add_argument(
        "--methods",
        nargs="+",
        default=[m for m in ("none", "weight", "activation", "cca") if m in pairwise],
        choices=pairwise,
        help="alignments to show (naive averaging without BatchNorm handling is always shown)",
    )
    demo.add_argument("--bn", choices=bn_modes(), default="reset")
    demo.add_argument("--alphas", type=int, default=11, help="points on each path")
    demo.add_argument("--out", default=figures.EXPORT_DIR)
    demo.add_argument("--overwrite", action="store_true", help="replace files already there")
    demo.add_argument(
        "--no-cache", action="store_true", help="recompute instead of reading cached results"
    )
    demo.set_defaults(run=run_demo)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", default="mnist-5k", help=dataset_help)
    common.add_argument(
        "--out", default=figures.EXPORT_DIR, help="folder for figures and CSV tables"
    )
    common.add_argument(
        "--limit", type=int, help="use N evenly spaced images of each split (quick runs)"
    )
    common.add_argument(
        "--no-cache", action="store_true", help="recompute instead of reading cached results"
    )
    common.add_argument("--overwrite", action="store_true", help="replace files already there")
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
    lmc.add_argument("--bn", choices=bn_modes(), default="reset")
    lmc.add_argument("--alphas", type=int, default=11, help="points on each path")
    lmc.add_argument(
        "--band", choices=["std", "range"], default="std", help="spread over pairs (N > 2)"
    )
    lmc.set_defaults(run=run_lmc)

    merge = sub.add_parser(
        "merge", parents=[common], help="accuracy of N merged models per method, N = 2.."
    )
    merge.add_argument("--models", nargs="+", help="2 or more checkpoints (default: seeds 0, 1)")
    every = [*registry.methods(), "naive"]  # merges of N models included
    merge.add_argument("--methods", nargs="+", default=["none", "weight"], choices=every)
    merge.add_argument("--bn", choices=bn_modes(), default="reset")
    merge.add_argument(
        "--quick",
        action="store_true",
        help="a quick look: no validation search (hyperparameters at their defaults), "
        "fewer learning steps (NP Merge, STE)",
    )
    merge.add_argument(
        "--option",
        action="append",
        metavar="NAME=VALUE",
        help="an option of the methods: NAME=VALUE for every method that takes it, or "
        "METHOD.NAME=VALUE for one, e.g. gamma=0.3, np_merge.steps=50, ste.steps=20 "
        "(repeatable; an option no method given takes is an error)",
    )
    merge.set_defaults(run=run_merge)

    plane = sub.add_parser("plane", parents=[common], help="loss plane through three models")
    plane.add_argument("--models", nargs="+", help="3 checkpoints (default: shipped seeds 0-2)")
    plane.add_argument("--method", default="weight", choices=methods)
    plane.add_argument("--bn", choices=bn_modes(), default="reset")
    plane.add_argument("--resolution", type=int, default=21, help="grid points per axis")
    plane.add_argument("--margin", type=float, default=0.2, help="border around the models")
    plane.add_argument("--split", choices=["train", "test"], default="test")
    plane.set_defaults(run=run_plane)

    sweeper = sub.add_parser("sweep", parents=[common], help="barrier against width or epochs")
    sweeper.add_argument("parameter", choices=["width", "epochs"])
    sweeper.add_argument("values", type=float, nargs="+", help="widths or epoch counts")
    sweeper.add_argument("--arch", default="cnn")
    sweeper.add_argument("--epochs", type=int, default=4, help="epochs per model (width sweep)")
    sweeper.add_argument("--width", type=float, default=1, help="width (epoch sweep)")
    sweeper.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    sweeper.add_argument("--methods", nargs="+", default=["none", "weight"], choices=methods)
    sweeper.add_argument("--bn", choices=bn_modes(), default="reset")
    sweeper.add_argument("--alphas", type=int, default=5)
    sweeper.add_argument("--splits", nargs="+", default=["test"], choices=["train", "test"])
    add_executor_arguments(sweeper)
    sweeper.set_defaults(run=run_sweep)

    info = sub.add_parser("info", help="print a checkpoint's metadata")
    info.add_argument("checkpoint")
    info.set_defaults(run=run_info)
    return parser


INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` command; returns the exit status.

    Ctrl-C (SIGINT) stops the work at once, also in a job that a non-interactive shell
    started in the background, where SIGINT is ignored unless the program asks for it:
    cached results are written whole or not at all, so the same command run again
    computes only what is missing."""
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if getattr(args, "out", None) is not None:  # before any training or computing
            check_writable_dir(args.out, "--out folder", "pass --out <a folder you can write to>")
        check_outputs(args)
        return args.run(args)
    except (ValueError, OSError, DatasetUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: no partial file or cache entry was left; run the same command "
            "again to compute only what is missing.",
            file=sys.stderr,
        )
        return INTERRUPTED
