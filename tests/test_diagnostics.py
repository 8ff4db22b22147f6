"""Per-layer diagnostics: matched-unit correlations and the barrier with k groups aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.alignment import collect_statistics
from workbench.analysis import diagnostics


@pytest.fixture(scope="module")
def train_500(mnist_train):
    return mnist_train.subset(torch.arange(0, 4000, 8), "train")


@pytest.fixture(scope="module")
def small_test(mnist_test):
    return mnist_test.subset(torch.arange(0, 1000, 5), "test")


@pytest.fixture(scope="module")
def spec(shipped_pair):
    return wb.permutation_spec(shipped_pair[0], example_input=torch.zeros(2, 1, 28, 28))


@pytest.fixture(scope="module")
def correlations(shipped_pair, train_500):
    return diagnostics.matched_correlations(
        *shipped_pair, data=train_500, method="activation", cache=False
    )


GROUPS = ["features.conv1", "features.conv2", "features.conv3", "classifier.fc1"]


def test_graph_order(spec):
    assert diagnostics.graph_order(spec) == GROUPS


def test_after_is_the_diagonal_of_the_aligned_pair(shipped_pair, train_500, spec, correlations):
    a, b = shipped_pair
    assert correlations.groups == GROUPS
    perm = wb.activation_matching(a, b, data=train_500, spec=spec, progress=False)
    aligned = wb.apply_permutation(b, spec=spec, perm=perm)
    naive = collect_statistics([a, b], data=train_500, spec=spec, progress=False)
    matched = collect_statistics([a, aligned], data=train_500, spec=spec, progress=False)
    for group in GROUPS:
        expected_before = naive[group].correlation(0, 1).diagonal().numpy()
        expected_after = matched[group].correlation(0, 1).diagonal().numpy()
        np.testing.assert_allclose(correlations.before[group], expected_before, atol=1e-6)
        np.testing.assert_allclose(correlations.after[group], expected_after, atol=1e-5)
    summary = correlations.summary()
    units = [a.get_submodule(g).weight.shape[0] for g in GROUPS]
    assert list(summary["group"]) == GROUPS and list(summary["units"]) == units
    # Matching raises the mean correlation of every layer by a wide margin.
    assert (summary["mean_after"] > summary["mean_before"] + 0.2).all()
    table = correlations.table
    assert list(table.columns) == ["group", "unit", "stage", "correlation"]
    assert len(table) == 2 * sum(units)


def test_weight_matching_correlations_and_cache(shipped_pair, train_500, tmp_path):
    a, b = shipped_pair
    cache = wb.ResultCache(tmp_path)
    result = diagnostics.matched_correlations(a, b, data=train_500, method="weight", cache=cache)
    spec = wb.permutation_spec(a, example_input=torch.zeros(2, 1, 28, 28))
    perm = wb.weight_matching(a, b, spec=spec)
    stats = collect_statistics([a, b], data=train_500, spec=spec, progress=False)
    correlation = stats["features.conv2"].correlation(0, 1)
    expected = correlation[torch.arange(len(correlation)), perm["features.conv2"]].numpy()
    np.testing.assert_allclose(result.after["features.conv2"], expected, atol=1e-6)
    assert result.settings["models"] == [wb.fingerprint(m) for m in (a, b)]
    again = diagnostics.matched_correlations(a, b, data=train_500, method="weight", cache=cache)
    np.testing.assert_array_equal(again.after["classifier.fc1"], result.after["classifier.fc1"])
    assert len(list(tmp_path.glob("correlations/*.safetensors"))) == 1
    with pytest.raises(ValueError, match="method must be 'weight' or 'activation'"):
        diagnostics.matched_correlations(a, b, data=train_500, method="cca")


def test_correlation_plot(correlations, tmp_path):
    fig = correlations.plot()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == GROUPS
    means = [line for line in ax.lines if line.get_marker() == "."]
    np.testing.assert_allclose(means[1].get_ydata(), [correlations.after[g].mean() for g in GROUPS])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["identity", "activation matching"]
    assert correlations.write_csv(tmp_path / "c.csv").stat().st_size > 0


@pytest.fixture(scope="module")
def partial(shipped_pair, train_500, small_test):
    return diagnostics.partial_alignment(
        *shipped_pair,
        data=train_500,
        eval_data=small_test,
        method="weight",
        alphas=3,
        progress=False,
        cache=False,
    )


def test_partial_alignment_goes_from_naive_to_full(shipped_pair, train_500, small_test, partial):
    a, b = shipped_pair
    table = partial.table
    assert list(table["groups_aligned"]) == [0, 1, 2, 3, 4]
    assert list(table["last_group"]) == ["-", *GROUPS]
    kwargs = {"data": train_500, "progress": False, "cache": False}
    naive = wb.lmc_curve(a, b, eval_data=small_test, alphas=3, bn="reset", **kwargs)
    full = wb.lmc_curve(
        a, wb.align(a, b, method="weight"), eval_data=small_test, alphas=3, bn="reset", **kwargs
    )
    assert table["barrier"].iloc[0] == pytest.approx(naive.barrier, rel=1e-6)
    assert table["barrier"].iloc[-1] == pytest.approx(full.barrier, rel=1e-6)
    assert table["barrier"].iloc[-1] < table["barrier"].iloc[0]
    # B's function never changes: its endpoint is the same for every k.
    assert table["accuracy_b"].nunique() == 1


def test_partial_alignment_plot_and_cache(shipped_pair, train_500, small_test, partial, tmp_path):
    fig = partial.plot("barrier")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), partial.table["barrier"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", *GROUPS]
    assert ax.lines[0].get_color() == wb.figures.PALETTE["blue"]
    partial.plot("midpoint_accuracy")
    with pytest.raises(ValueError, match="metric must be one of"):
        partial.plot("loss")
    cache = wb.ResultCache(tmp_path)
    kwargs = {"alphas": 3, "bn": None, "progress": False, "cache": cache}
    first = diagnostics.partial_alignment(
        *shipped_pair, data=train_500, eval_data={"test": small_test}, **kwargs
    )
    again = diagnostics.partial_alignment(
        *shipped_pair, data=train_500, eval_data={"test": small_test}, **kwargs
    )
    assert again.table.equals(first.table)
    assert len(list(tmp_path.glob("partial-alignment/*.safetensors"))) == 1
