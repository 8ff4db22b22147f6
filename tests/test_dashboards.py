"""LMCExplorer and MethodComparison driven from Python: every control changes what is shown,
and every number shown comes from the analysis modules."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.widgets import LMCExplorer, MethodComparison, NeuronExplorer


@pytest.fixture(scope="module")
def small_test(mnist_test):
    return mnist_test.subset(torch.arange(0, 1000, 4), "test")


@pytest.fixture(scope="module")
def small_train(mnist_train):
    return mnist_train.subset(torch.arange(0, 4000, 8), "train")


def test_lmc_explorer_controls(shipped_pair, small_test, small_train, tmp_path):
    explorer = LMCExplorer(
        list(shipped_pair), small_test, small_train, alphas=5, export_stem=str(tmp_path / "lmc")
    )
    assert explorer.pair.options == ("model 0 | model 1",)
    assert explorer.curve is None and "press Compute" in explorer.barrier.value
    assert (
        explorer.export.button.click() is None
        and "Nothing to export" in explorer.export.status.value
    )

    explorer.compute.click()  # weight matching, no BN handling
    weight_curve = explorer.curve
    expected = wb.lmc_curve(
        shipped_pair[0],
        wb.align(*shipped_pair, "weight"),
        eval_data=small_test,
        alphas=5,
        progress=False,
    )
    assert weight_curve.loss == pytest.approx(expected.loss, rel=1e-5)
    assert f"{weight_curve.barrier:.3f}" in explorer.barrier.value
    assert explorer.compute.disabled

    explorer.method.value = "none"
    assert explorer.curve is None and not explorer.compute.disabled
    explorer.compute.click()
    naive_text = explorer.barrier.value
    assert explorer.curve.barrier > weight_curve.barrier + 0.5

    explorer.bn.value = "reset"
    explorer.compute.click()
    assert explorer.curve.bn == "reset" and explorer.barrier.value != naive_text

    midpoint = explorer.readout.value
    reset_curve = explorer.curve
    explorer.alpha.value = 0.0
    assert explorer.readout.value != midpoint
    assert f"{100 * explorer.curve.accuracy[0]:.1f}%" in explorer.readout.value
    assert explorer.curve is reset_curve, "moving the slider must not recompute the curve"
    marker = explorer._marker.get_data()
    assert list(marker[0]) == [0.0]

    explorer.method.value = "weight"
    explorer.bn.value = "none"
    assert explorer.curve is weight_curve, "a computed curve is shown again without recomputing"

    explorer.export.button.click()
    assert sorted(p.suffix for p in explorer.export.written) == [".pdf", ".png", ".svg"]
    assert all(p.stat().st_size > 0 for p in explorer.export.written)
    assert "wrote" in explorer.export.status.value
    # the exported figure is the paper's: the curve, no alpha marker
    paper = explorer._paper_figure()
    assert [line.get_label() for line in paper.axes[0].lines] == ["weight"]
    assert len(explorer.figure.axes[0].lines) == 2  # the screen has the marker too
    assert explorer.figure.axes[0].get_ylim()[0] == 0
    explorer.bn.value = "reset"  # another selection: the status no longer describes it
    assert explorer.export.status.value == "" and explorer.export.written == []


def test_lmc_explorer_says_when_the_far_end_is_not_b(shipped_pair, small_test, small_train):
    explorer = LMCExplorer(list(shipped_pair), small_test, small_train, alphas=3)
    explorer.method.value = "cca"
    explorer.compute.click()
    curve = explorer.curve
    assert not curve.far_end_is_b
    b_alone = wb.evaluate(shipped_pair[1], eval_data=small_test)
    assert curve.accuracy_b == pytest.approx(b_alone.accuracy)
    assert curve.loss_b == pytest.approx(b_alone.loss, rel=1e-5)
    assert curve.loss[-1] > curve.loss_b + 0.1  # CCA's image of B is not B
    assert "not model 1" in explorer.barrier.value
    assert f"{curve.loss_b:.3f}" in explorer.barrier.value
    assert f"{curve.barrier:.3f}" in explorer.barrier.value
    explorer.method.value = "weight"
    explorer.compute.click()
    assert explorer.curve.far_end_is_b and "not model 1" not in explorer.barrier.value


def test_lmc_explorer_needs_two_models(shipped_pair, small_test):
    with pytest.raises(ValueError, match="at least 2 models"):
        LMCExplorer([shipped_pair[0]], small_test)


def test_method_comparison_runs_and_exports(shipped_pair, small_test, small_train, tmp_path):
    dashboard = MethodComparison(
        list(shipped_pair), small_test, small_train, export_stem=str(tmp_path / "cmp")
    )
    assert next(iter(dashboard.methods.values())).description == "naive"
    for name, box in dashboard.methods.items():
        box.value = name in ("none", "weight")
    dashboard.run.click()
    table = dashboard.table
    references = ["endpoints", "ensemble (logits)", "ensemble (probabilities)"]
    assert set(table["method"]) == {"naive", "weight", *references}
    assert "done" in dashboard.status.value and not dashboard.run.disabled
    rows = table.set_index("method")
    assert rows.loc["weight", "accuracy"] > rows.loc["naive", "accuracy"]
    assert dashboard.figure is not None
    drawn = [line.get_label() for line in dashboard.figure.axes[0].lines]
    assert set(references[1:]) <= set(drawn)  # the ensembles, as reference lines
    dashboard.export.button.click()
    suffixes = sorted(p.suffix for p in dashboard.export.written)
    assert suffixes == [".csv", ".pdf", ".png", ".svg"]
    dashboard.bn.value = "repair"
    assert dashboard.export.status.value == ""

    for box in dashboard.methods.values():
        box.value = False
    dashboard.run.click()
    assert "at least one method" in dashboard.status.value


def test_neuron_explorer_controls(shipped_pair, small_train, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    explorer = NeuronExplorer(*shipped_pair, small_train, steps=4, k=3)
    assert explorer.layer.options[:2] == ("features.conv1", "features.conv2")
    assert explorer.unit.disabled and "Render layer" in explorer.info.value
    explorer.render.click()
    comparison = explorer.comparison
    match = comparison.match
    last = shipped_pair[0].features.conv1.out_channels
    assert (explorer.unit.min, explorer.unit.max) == (1, last) and not explorer.unit.disabled
    best = match.order()[0]
    assert f"A's unit <b>{best}</b>" in explorer.info.value
    assert f"rank 1 of {last}" in explorer.info.value
    first_text = explorer.info.value
    explorer.unit.value = last
    worst = match.order()[-1]
    assert f"A's unit <b>{worst}</b>" in explorer.info.value and explorer.info.value != first_text
    assert f"{float(match.correlation[worst]):.2f}" in explorer.info.value
    assert f"rank {last} of {last}" in explorer.info.value
    assert explorer.comparison is comparison, "moving the slider must not recompute the layer"
    explorer.method.value = "activation"
    assert explorer.comparison is None and not explorer.render.disabled
    explorer.render.click()
    assert explorer.comparison.match.method == "activation"
    explorer.export.path.value = str(tmp_path / "unit")
    explorer.export.button.click()
    assert len(explorer.export.written) == 3


def test_neuron_explorer_opens_on_the_requested_layer(shipped_pair, small_train):
    explorer = NeuronExplorer(*shipped_pair, small_train, steps=4, layer="features.conv2")
    assert explorer.layer.value == "features.conv2"
    with pytest.raises(ValueError, match="layer must be one of"):
        NeuronExplorer(*shipped_pair, small_train, layer="features.conv9")
