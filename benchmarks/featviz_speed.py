"""Batched feature visualization against lucent's render_vis called once per channel.

On three models of different shapes, neither tuned on here (randomly initialized, seeded):
a one-channel 28 px CNN of the zoo at width 2 (the shipped architecture, randomly initialized),
the zoo's three-channel 32 px ResNet-20, and torchvision's ResNet-18 at 224 px. Both sides
render the same channels of the same layer for the same number of steps on the CPU, with
the same parameterization (lucent's ``param.image``: FFT, grayscale for one channel,
decorrelated color for three), Adam at the same learning rate, the same transforms
(``small_image_transforms``) and a bilinear resize back to the model's input size, no
preprocessing. lucent runs its own hooks and channel objective, one ``render_vis`` per
channel. Ours is also run twice, to check that it is reproducible (the same images). Both
sides first run one step, so that neither pays the process's one-time costs in its time.

Each row also counts the floating-point operations of one step per channel on both sides
(``torch.utils.flop_counter``, forward and backward): lucent runs the whole network
forward and takes the gradients of every parameter up to the layer; ours stops at the
layer and takes the image's gradient only. Their ratio is the speedup at equal throughput:
where it is below the measured speedup, ours also saves per-call overhead; where the
measured speedup reaches it, the remaining cost is the convolutions both sides must run.

    python benchmarks/featviz_speed.py [--steps 64] [--channels 16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision
from lucent.optvis import objectives, param, render
from torch.utils.flop_counter import FlopCounterMode

import workbench as wb
from workbench.featviz.render import small_image_transforms

# name -> (builder, layer, image size, input channels, channels rendered at most)
SHAPES = {
    "cnn x2, 1 channel, 28 px": (
        lambda: wb.create_model("cnn", width=2, in_channels=1),
        "features.conv3",
        28,
        1,
        16,
    ),
    "resnet20, 3 channels, 32 px": (
        lambda: wb.create_model("resnet20"),
        "layer2.1.conv2",
        32,
        3,
        16,
    ),
    "tv:resnet18, 3 channels, 224 px": (torchvision.models.resnet18, "layer2.1.conv2", 224, 3, 4),
}


def lucent_per_channel(
    model, layer: str, channels, steps: int, lr: float, size: int, gray: bool
) -> float:
    started = time.perf_counter()
    for channel in channels:
        render.render_vis(
            model,
            objectives.channel(layer.replace(".", "_"), channel),
            lambda: param.image(size, channels=1 if gray else None, fft=True, decorrelate=not gray),
            optimizer=lambda params: torch.optim.Adam(params, lr=lr),
            transforms=small_image_transforms(),
            thresholds=(steps,),
            preprocess=False,
            progress=False,
            show_image=False,
            fixed_image_size=size,
        )
    return time.perf_counter() - started


def flops_per_channel(model, layer: str, channels, lr: float, size: int, gray: bool) -> dict:
    """Operations of one step per channel: ours (all ``channels`` in one batch) and
    lucent's (one channel), each a two-step render's count less a one-step render's, so
    that what a render does once (our layout probe) is not counted as a step."""

    def count(run) -> int:
        with FlopCounterMode(display=False) as counter:
            run()
        return counter.get_total_flops()

    mine = [count(lambda k=k: ours(model, layer, channels, k, lr, size)) for k in (1, 2)]
    theirs = [
        count(lambda k=k: lucent_per_channel(model, layer, channels[:1], k, lr, size, gray))
        for k in (1, 2)
    ]
    return {"ours": (mine[1] - mine[0]) / len(channels), "lucent": theirs[1] - theirs[0]}


def ours(
    model, layer: str, channels, steps: int, lr: float, size: int
) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    images = wb.render_channels(
        model,
        layer=layer,
        channels=channels,
        steps=steps,
        lr=lr,
        size=size,
        cache=False,
        progress=False,
    )
    return time.perf_counter() - started, images


def measure(name: str, steps: int, channels: int, lr: float) -> dict:
    build, layer, size, in_channels, most = SHAPES[name]
    torch.manual_seed(3)
    model = build().eval()
    chosen = list(range(min(channels, most)))
    # one step on each side first: what a process pays once (kornia's compiled functions,
    # oneDNN's kernels for these shapes) is not part of either side's per-channel cost
    ours(model, layer, chosen, 1, lr, size)
    lucent_per_channel(model, layer, chosen[:1], 1, lr, size, in_channels == 1)
    batched, images = ours(model, layer, chosen, steps, lr, size)
    _, again = ours(model, layer, chosen, steps, lr, size)
    lucent = lucent_per_channel(model, layer, chosen, steps, lr, size, in_channels == 1)
    flops = flops_per_channel(model, layer, chosen, lr, size, in_channels == 1)
    return {
        "model": name,
        "layer": layer,
        "channels": len(chosen),
        "steps": steps,
        "ours_batched_seconds": batched,
        "lucent_render_vis_per_channel_seconds": lucent,
        "ours_ms_per_channel": 1000 * batched / len(chosen),
        "lucent_ms_per_channel": 1000 * lucent / len(chosen),
        "speedup_per_channel": lucent / batched,
        "flops_per_channel_step": flops,
        "flops_ratio": flops["lucent"] / flops["ours"],
        "reproducible": bool(torch.equal(images, again)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="4 steps, 2 channels (smoke run)")
    args = parser.parse_args()
    steps, channels = (4, 2) if args.quick else (args.steps, args.channels)
    rows = [measure(name, steps, channels, args.lr) for name in SHAPES]
    result = {
        "benchmark": "featviz_speed",
        "rows": rows,
        "min_speedup_per_channel": min(r["speedup_per_channel"] for r in rows),
        "target_speedup": 4.0,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        out = Path(__file__).parent / "results" / "featviz_speed.json"
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
