"""How the workbench's steps scale: with width, and on real models.

Steps: spec derivation (``permutation_spec``), weight matching, activation matching, CCA
(the ``"cca"`` method), an 11-point curve with RESET (``lmc_curve(..., bn="reset")`` on
the same images), and a 16-channel render (``render_channels``, a middle conv layer).
Two series, two randomly initialized models (seeds 0 and 1) each, random images:

* width: the zoo's ResNet-20 at widths 1, 2, 4, 8 and 16, 32 px, 256 images;
* model: torchvision resnet18, resnet50, vgg16_bn, densenet121 and mobilenet_v3_large,
  224 px, 64 images (few, so that the series runs in reasonable time on 2 cores).

Every step runs in a fresh subprocess: wall and CPU time (all threads), and peak memory as
the process's maximum resident set size above what it held once the models, data and spec
were built (``resource.getrusage``). Where a step passes over data, its time is also given
as a ratio to the plain forward passes it needs: both models once over the images for the
statistics passes (activation matching, CCA); one model 11 times over them for the curve.
The width series fits each step's cost exponent (time ~ width^k): the statistics grow with
channels squared, the assignment solver with channels cubed.

    python benchmarks/scaling.py [--quick] [--series width|model|both] [--again STEP... [--rows MODEL...]]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _subprocess import (
    add_child_arguments,
    cpu_seconds,
    parse_or_run_child,
    peak_bytes,
    run_child,
)
from torch.utils.data import TensorDataset

HERE = Path(__file__).parent
STEPS = ("spec", "weight", "activation", "cca", "curve_reset", "render")
DATA_STEPS = {"activation": 1.0, "cca": 1.0, "curve_reset": 11 / 2}  # x plain (2 models)
WIDTHS = (1, 2, 4, 8, 16)
MODELS = ("resnet18", "resnet50", "vgg16_bn", "densenet121", "mobilenet_v3_large")
BATCH = 32


def _models(name: str) -> tuple[list[torch.nn.Module], int]:
    """Two seeded models and their input size: ``resnet20x<w>`` or a torchvision name."""
    import torchvision

    import workbench as wb

    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        if name.startswith("resnet20x"):
            models.append(wb.create_model("resnet20", width=int(name[9:])).eval())
        else:
            models.append(getattr(torchvision.models, name)().eval())
    return models, 32 if name.startswith("resnet20x") else 224


def _middle_conv(model: torch.nn.Module) -> str:
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    wide = [n for n in convs if model.get_submodule(n).out_channels >= 16]
    return wide[len(wide) // 2]


def child(name: str, step: str, images: int, steps: int, spec_path: Path) -> dict:
    """One step on one model pair (run in its own process)."""
    import workbench as wb
    from workbench.batching import batches
    from workbench.graph import PermutationSpec

    models, size = _models(name)
    data = TensorDataset(
        torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0)),
        torch.zeros(images, dtype=torch.long),
    )
    spec = PermutationSpec.load(spec_path) if step != "spec" else None
    baseline = peak_bytes()
    cpu, started = cpu_seconds(), time.perf_counter()
    a, b = models
    if step == "spec":
        wb.permutation_spec(a, example_input=torch.zeros(2, 3, size, size)).save(spec_path)
    elif step == "plain":
        with torch.inference_mode():
            for inputs, _ in batches(data, BATCH):
                a(inputs), b(inputs)
    elif step == "weight":
        wb.weight_matching(a, b, spec=spec)
    elif step in ("activation", "cca"):
        wb.match(a, b, method=step, data=data, spec=spec, batch_size=BATCH, progress=False)
    elif step == "curve_reset":
        wb.lmc_curve(a, b, eval_data=data, data=data, alphas=11, bn="reset", spec=spec,
                     batch_size=BATCH, progress=False, cache=False)  # fmt: skip
    elif step == "render":
        wb.render_channels(a, layer=_middle_conv(a), channels=range(16), steps=steps, size=size,
                           cache=False, progress=False)  # fmt: skip
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu,
        "peak_bytes_above_baseline": peak_bytes() - baseline,
    }


def run_pair(name: str, images: int, steps: int, threads: int, again: dict | None = None) -> dict:
    """Every step on one model pair, each in its own subprocess; with ``again`` (a row of
    an earlier run), only the steps it lacks (the spec is derived anew)."""
    found: dict[str, dict] = dict(again["steps"]) if again else {}
    with tempfile.TemporaryDirectory() as folder:
        spec_path = Path(folder) / "spec.json"
        for step in ("spec", "plain", *STEPS[1:]):
            if step != "spec" and step in found:
                continue
            measured = run_child(__file__, "--child", name, step, "--images", str(images),
                                 "--steps", str(steps), "--threads", str(threads),
                                 "--spec", str(spec_path))  # fmt: skip
            if step not in found:
                found[step] = measured
    plain = found["plain"].get("seconds")
    for step, share in DATA_STEPS.items():
        if plain and "seconds" in found[step]:
            found[step]["ratio_to_plain_forward"] = found[step]["seconds"] / (plain * share)
    timed = {s: found[s]["seconds"] for s in STEPS if "seconds" in found[s]}
    return {"model": name, "images": images, "steps": found, "dominant": max(timed, key=timed.get)}


def exponents(rows: list[dict]) -> dict[str, float]:
    """Each step's fitted exponent k of time ~ width^k over the width series."""
    fitted = {}
    for step in STEPS:
        points = [
            (w, r["steps"][step]["seconds"])
            for w, r in zip(WIDTHS, rows, strict=False)
            if "seconds" in r["steps"][step]
        ]
        if len(points) >= 3:
            x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
            fitted[step] = float(np.polyfit(x, y, 1)[0])
    return fitted


def figure(result: dict, stem: Path) -> None:
    """Time per step against width (log-log) and per model, in the paper style."""
    from workbench import figures

    fig, (left, right) = figures.new_figure(columns=2, aspect=0.38, ncols=2)
    with figures.paper_style():
        for index, step in enumerate(STEPS):
            rows = result.get("width", [])
            points = [
                (w, r["steps"][step].get("seconds")) for w, r in zip(WIDTHS, rows, strict=False)
            ]
            points = [p for p in points if p[1] is not None]
            if points:
                k = result["width_exponents"].get(step)
                label = step if k is None else f"{step} (k={k:.1f})"
                left.loglog(*zip(*points, strict=True), marker="o", label=label,
                            color=list(figures.PALETTE.values())[index])  # fmt: skip
        left.set(xlabel="ResNet-20 width multiplier", ylabel="seconds (32 px)")
        left.set_xticks(WIDTHS, [str(w) for w in WIDTHS])
        left.minorticks_off()
        left.legend(fontsize="x-small")
        rows = result.get("model", [])
        for index, step in enumerate(STEPS):
            heights = [r["steps"][step].get("seconds", np.nan) for r in rows]
            offsets = np.arange(len(rows)) + (index - len(STEPS) / 2) / (len(STEPS) + 1)
            right.bar(offsets, heights, width=1 / (len(STEPS) + 1), label=step,
                      color=list(figures.PALETTE.values())[index])  # fmt: skip
        right.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=20)
        right.set(yscale="log", ylabel="seconds (224 px)")
    figures.save(fig, stem, formats=("png",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="widths 1-4, resnet18, few images")
    parser.add_argument("--series", choices=("width", "model", "both"), default="both")
    parser.add_argument("--images", type=int, default=0)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--again", nargs="+", choices=STEPS, help="re-measure these steps")
    parser.add_argument("--rows", nargs="+", help="with --again: only these models' rows")
    add_child_arguments(parser, "MODEL", "STEP")
    args = parse_or_run_child(parser, lambda a: child(*a.child, a.images, a.steps, a.spec))
    if args is None:
        return
    if args.again:  # measure these steps again in the committed result, every row
        result = json.loads((HERE / "results" / "scaling.json").read_text())
        steps = result["render_steps"]
        series = [
            (kind, row)
            for kind in ("width", "model")
            for row in result.get(kind, [])
            if not args.rows or row["model"] in args.rows
        ]
        for kind, row in series:
            kept = {s: v for s, v in row["steps"].items() if s not in args.again}
            index = result[kind].index(row)
            result[kind][index] = run_pair(
                row["model"], row["images"], steps, args.threads, {"steps": kept}
            )
            print(json.dumps(result[kind][index]), file=sys.stderr, flush=True)
        result["width_exponents"] = exponents(result.get("width", []))
        (HERE / "results" / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
        figure(result, HERE.parent / "docs" / "figures" / "scaling")
        return
    steps = 2 if args.quick else args.steps
    result: dict = {"benchmark": "scaling", "threads": args.threads, "render_steps": steps}
    result["memory"] = "max resident set size of a fresh subprocess, above its baseline"
    result["quick"] = args.quick  # a smoke run: few widths, images and steps
    series = []
    if args.series in ("width", "both"):
        widths = WIDTHS[:3] if args.quick else WIDTHS
        series += [("width", f"resnet20x{w}", 32 if args.quick else 256) for w in widths]
    if args.series in ("model", "both"):
        names = MODELS[:1] if args.quick else MODELS
        series += [("model", name, 8 if args.quick else 64) for name in names]
    for kind, name, images in series:  # saved after each pair: a long run cut short keeps it
        result.setdefault(kind, []).append(run_pair(name, images, steps, args.threads))
        if kind == "width":
            result["width_exponents"] = exponents(result["width"])
        print(json.dumps(result[kind][-1]), file=sys.stderr, flush=True)
        (HERE / "results" / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    figure(result, HERE.parent / "docs" / "figures" / "scaling")


if __name__ == "__main__":
    main()
