"""Rebuild the README's figure gallery (``docs/figures/*.png``) from the shipped models.

Every figure is made with the public API exactly as a user would call it; the numbers in
the figures are those of the checkpoints in ``data/models``. Takes a few minutes on a CPU.

    python docs/make_figures.py [--out docs/figures] [--formats png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import workbench as wb

HERE = Path(__file__).resolve().parent
# The methods of the gallery figure: the training-free ones (methods.json compares all).
CLASSIC = ("none", "weight", "activation", "cca")


def lmc_methods(train, test, model_a, model_b):
    """Interpolation curves for each alignment method, with and without RESET."""
    curves = []
    for method in ("none", "weight", "activation"):
        aligned = wb.align(model_a, model_b, method=method, data=train)
        for bn in (None, "reset"):
            curves.append(
                wb.lmc_curve(
                    model_a, aligned, eval_data=test, alphas=11, bn=bn, data=train, label=method
                )
            )
    fig, axes = wb.figures.new_figure(columns=2, aspect=0.38, ncols=2)
    wb.plot_curves(curves, "loss", ax=axes[0], legend=False)
    wb.plot_curves(curves, "accuracy", ax=axes[1], legend=False)
    wb.figures.shared_legend(fig, axes[0], ncols=3)
    return fig


def many_models(train, test, models):
    """Merged accuracy against the number of models, per method."""
    table = wb.compare_methods(models, data=train, eval_data=test, methods=CLASSIC, sizes=(2, 3, 4))
    return wb.plot_comparison(table)


def matched_unit(train, model_a, model_b):
    """The best-matched unit of the second conv layer in A, B, merged and merged + RESET."""
    comparison = wb.featviz.compare_layer(
        model_a, model_b, layer="features.conv2", data=train, method="activation"
    )
    unit = comparison.match.order()[0]
    images = wb.featviz.render_layer(comparison, [unit], steps=256)
    exemplars = wb.featviz.layer_exemplars(comparison, train, [unit], k=6)
    return wb.featviz.plot_unit_comparison(comparison, unit, images, exemplars)


def loss_plane(train, test, models):
    """The loss plane through three models, B and C weight-matched to A, with RESET."""
    plane = wb.loss_plane(
        models[:3], eval_data=test, resolution=9, bn="reset", method="weight", data=train
    )
    return wb.analysis.planes.plot_plane(plane, "loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "figures")
    parser.add_argument("--formats", nargs="+", default=["png"])
    args = parser.parse_args()
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    models = wb.load_quickstart_models(seeds=(0, 1, 2, 3))
    figures = {
        "lmc_methods": lambda: lmc_methods(train, test, *models[:2]),
        "many_models": lambda: many_models(train, test, models),
        "matched_unit": lambda: matched_unit(train, *models[:2]),
        "loss_plane": lambda: loss_plane(train, test, models),
    }
    for name, make in figures.items():
        for path in wb.figures.save(make(), args.out / name, formats=args.formats):
            print(path)


if __name__ == "__main__":
    main()
