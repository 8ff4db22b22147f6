"""Width and epoch sweeps (tiny settings), and the per-layer diagnostics."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench import diagnostics, sweeps


@pytest.fixture(scope="module")
def small(mnist_train, mnist_test):
    return (
        mnist_train.subset(torch.arange(0, 4000, 8), "train"),
        mnist_test.subset(torch.arange(0, 1000, 5), "test"),
    )


def test_width_sweep_table_and_figure(small, tmp_path):
    train, test = small
    sweep = sweeps.sweep(
        "width",
        [0.25, 0.5],
        train,
        test,
        epochs=1,
        model_kwargs={"in_channels": 1},
        alphas=3,
        progress=False,
    )
    table = sweep.to_frame()
    assert list(table["width"]) == [0.25, 0.25, 0.5, 0.5]
    assert list(table["method"]) == ["none", "weight"] * 2
    assert table["barrier"].notna().all() and (table["midpoint_accuracy"] <= 1).all()
    fig = sweep.plot("barrier")
    assert [line.get_label() for line in fig.axes[0].lines] == ["none", "weight"]
    assert list(fig.axes[0].lines[1].get_ydata()) == list(
        table[table.method == "weight"]["barrier"]
    )
    paths = wb.figures.save(fig, tmp_path / "sweep", formats=("pdf",))
    assert paths[0].stat().st_size > 0
    with pytest.raises(ValueError, match="metric must be one of"):
        sweep.plot("loss")
    with pytest.raises(ValueError, match="parameter must be"):
        sweeps.sweep("depth", [1], train, test)


def test_epoch_sweep(small):
    train, test = small
    sweep = sweeps.sweep(
        "epochs",
        [1, 2],
        train,
        test,
        model_kwargs={"in_channels": 1, "width": 0.25},
        methods=("weight",),
        alphas=3,
        progress=False,
    )
    assert list(sweep.table["epochs"]) == [1, 2]
    assert sweep.parameter == "epochs" and sweep.settings["bn"] == "reset"


def test_matched_correlations_improve_after_matching(shipped_pair, small):
    train, _ = small
    table = diagnostics.matched_correlations(*shipped_pair, train, "activation")
    assert set(table["stage"]) == {"before", "after"}
    means = table.groupby(["group", "stage"])["correlation"].mean().unstack()
    assert (means["after"] > means["before"] + 0.1).all()
    assert len(table[table.group == "features.conv1"]) == 2 * 16
    fig = diagnostics.plot_matched_correlations(table)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == list(dict.fromkeys(table["group"]))


def test_partial_alignment_ends_at_full_alignment(shipped_pair, small):
    train, test = small
    table = diagnostics.partial_alignment(
        *shipped_pair, train, test, "weight", alphas=3, progress=False
    )
    assert list(table["groups_aligned"]) == [0, 1, 2, 3, 4]
    full = wb.lmc_curve(
        shipped_pair[0],
        wb.align(*shipped_pair, "weight"),
        test,
        3,
        "reset",
        bn_data=train,
        progress=False,
    )
    assert table["barrier"].iloc[-1] == pytest.approx(full.barrier, rel=1e-4)
    assert table["barrier"].iloc[-1] < table["barrier"].iloc[0]
    fig = diagnostics.plot_partial_alignment(table)
    assert len(fig.axes[0].lines[0].get_xdata()) == 5
