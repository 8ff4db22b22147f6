"""Does the barrier after alignment shrink with width? The quickstart `cnn` at several widths.

For each width, one model per seed is trained on mnist-5k with the shipped recipe (15
epochs, lr 0.2, shifts of up to 2 pixels), and every pair is interpolated naively, after
weight matching and after activation matching, with RESET (statistics and matching on the
training set, test set reported). Made with :func:`workbench.analysis.sweeps.sweep`, as a user would.
Prints JSON: one row per width, method and pair, and the means per width and method.

    python benchmarks/width_sweep.py [--widths 1 2 4 8] [--seeds 0 1] [--epochs 15]
        [--figure figures/width_sweep]
"""

from __future__ import annotations

import argparse
import json

import torch

import workbench as wb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--figure", default=None, help="also save the figure (PDF, PNG)")
    args = parser.parse_args()
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    result = wb.analysis.sweeps.sweep(
        "width",
        args.widths,
        data=train,
        eval_data=test,
        epochs=args.epochs,
        seeds=args.seeds,
        methods=("none", "weight", "activation"),
        bn="reset",
        alphas=[0.0, 0.5, 1.0],
        lr=0.2,
        augment=wb.random_translate(2),
    )
    table = result.table
    table["midpoint_gap_points"] = 100 * (table["endpoint_accuracy"] - table["midpoint_accuracy"])
    columns = ["barrier", "midpoint_accuracy", "endpoint_accuracy", "midpoint_gap_points"]
    means = table.groupby(["width", "method"], as_index=False)[columns].mean()
    if args.figure:
        fig, axes = wb.figures.new_figure(columns=2, aspect=0.4, ncols=2)
        result.plot("barrier", ax=axes[0])
        result.plot("midpoint_accuracy", ax=axes[1])
        wb.figures.save(fig, args.figure, formats=("pdf", "png"))
    output = {
        "benchmark": "width_sweep",
        "data": "mnist-5k: trained and matched on train, RESET on train, test set reported",
        "recipe": {"epochs": args.epochs, "lr": 0.2, "translate": 2, "seeds": args.seeds},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "mean": means.to_dict("records"),
        "pairs": table.to_dict("records"),
    }
    print(json.dumps(output, indent=2, default=str))


if __name__ == "__main__":
    main()
