"""Batched feature visualization against lucent's render_vis called once per channel.

Both render 16 channels of a quickstart model's layer for the same number of steps on the
CPU, with the same parameterization (FFT, grayscale), learning rate and transforms; the
lucent run uses its own hooks and objective per channel. Measured in one run.

    python benchmarks/featviz_speed.py [--steps 64] [--channels 16]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from lucent.optvis import objectives, param, render

import workbench as wb
from workbench.featviz.render import small_image_transforms


def lucent_per_channel(model, layer: str, channels, steps: int, lr: float) -> float:
    started = time.perf_counter()
    for channel in channels:
        render.render_vis(
            model,
            objectives.channel(layer.replace(".", "_"), channel),
            lambda: param.image(28, channels=1, fft=True),
            optimizer=lambda params: torch.optim.Adam(params, lr=lr),
            transforms=small_image_transforms(),
            thresholds=(steps,),
            preprocess=False,
            progress=False,
            show_image=False,
            fixed_image_size=28,
        )
    return time.perf_counter() - started


def ours(model, layer: str, channels, steps: int, lr: float) -> float:
    started = time.perf_counter()
    wb.render_channels(
        model, layer=layer, channels=channels, steps=steps, lr=lr, cache=False, progress=False
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layer", default="features.conv3")
    args = parser.parse_args()
    model = wb.load_quickstart_models((0,))[0].eval()
    channels = list(range(args.channels))
    batched = ours(model, args.layer, channels, args.steps, 0.05)
    lucent = lucent_per_channel(model, args.layer, channels, args.steps, 0.05)
    result = {
        "benchmark": "featviz_speed",
        "model": "quickstart cnn (seed 0)",
        "layer": args.layer,
        "channels": args.channels,
        "steps": args.steps,
        "ours_batched_seconds": batched,
        "lucent_render_vis_per_channel_seconds": lucent,
        "ours_ms_per_channel": 1000 * batched / args.channels,
        "lucent_ms_per_channel": 1000 * lucent / args.channels,
        "speedup_per_channel": lucent / batched,
        "target_speedup": 4.0,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
