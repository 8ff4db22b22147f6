"""Training time and accuracy of the quickstart architecture on mnist-5k, on this machine.

Prints JSON: seconds per model, test accuracy per seed, and the time of our training loop
relative to a plain PyTorch loop (DataLoader, same model, optimizer, schedule and number of
steps, no augmentation, no progress bar) measured in the same run.

    python benchmarks/train_time.py [--seeds 0 1] [--width 2] [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import workbench as wb


def plain_loop_seconds(
    train: wb.TensorImageDataset, width: float, epochs: int, lr: float, seed: int
) -> float:
    """The same number of SGD steps in the most direct PyTorch form."""
    torch.manual_seed(seed)
    model = wb.create_model("cnn", width=width, in_channels=1)
    loader = DataLoader(TensorDataset(train.images, train.targets), batch_size=128, shuffle=True)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * len(loader))
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for inputs, labels in loader:
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--width", type=float, default=2.0, help="2 = the shipped checkpoints")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args()

    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    runs = wb.training_runs(
        "cnn",
        args.seeds,
        train,
        args.epochs,
        model_kwargs={"width": args.width, "in_channels": 1},
        eval_data=test,
        lr=args.lr,
        augment=wb.random_translate(2),
        progress=False,
    )
    ours_no_aug = wb.training_run(
        wb.create_model("cnn", width=args.width, in_channels=1),
        data=train,
        epochs=args.epochs,
        seed=args.seeds[0],
        lr=args.lr,
        progress=False,
    ).metrics["train_seconds"]
    plain = plain_loop_seconds(train, args.width, args.epochs, args.lr, args.seeds[0])
    seconds = [run.metrics["train_seconds"] for run in runs]
    result = {
        "benchmark": "train_time",
        "architecture": "cnn, BatchNorm",
        "width": args.width,
        "dataset": "mnist-5k (4000 train / 1000 test)",
        "device": str(wb.default_device()),
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "epochs": args.epochs,
        "seconds_per_model": sum(seconds) / len(seconds),
        "seconds": dict(zip(map(str, args.seeds), seconds, strict=True)),
        "test_accuracy": {
            str(s): run.metrics["test_accuracy"] for s, run in zip(args.seeds, runs, strict=True)
        },
        "min_test_accuracy": min(run.metrics["test_accuracy"] for run in runs),
        "ours_without_augmentation_seconds": ours_no_aug,
        "plain_pytorch_loop_seconds": plain,
        "ratio_ours_to_plain_loop": ours_no_aug / plain,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
