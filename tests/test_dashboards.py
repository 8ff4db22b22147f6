"""LMCExplorer, MethodComparison and NeuronExplorer driven from Python: every control changes
what is shown, a result that no longer matches the controls leaves the screen, results on
disk come back without recomputing, and every number shown comes from the analysis modules."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.analysis import comparison
from workbench.analysis.lmc import compute as lmc_compute
from workbench.featviz import views
from workbench.widgets import LMCExplorer, MethodComparison, NeuronExplorer


def _values_seen(widget) -> list[str]:
    """Every value ``widget`` is given from now on (what the browser is sent, in order)."""
    seen: list[str] = []
    widget.observe(lambda change: seen.append(change["new"]), names="value")
    return seen


@pytest.fixture(scope="module")
def small_test(mnist_test):
    return mnist_test.subset(torch.arange(0, 1000, 4), "test")


@pytest.fixture(scope="module")
def small_train(mnist_train):
    return mnist_train.subset(torch.arange(0, 4000, 8), "train")


def test_lmc_explorer_controls(shipped_pair, small_test, small_train, tmp_path):
    explorer = LMCExplorer(
        list(shipped_pair),
        eval_data=small_test,
        data=small_train,
        alphas=5,
        export_dir=str(tmp_path),
    )
    assert explorer.pair.options == ("model 0 | model 1",)
    assert explorer.curve is None and "press Compute" in explorer.barrier.value
    assert explorer.export.path.value == f"{tmp_path}/lmc_model0-model1_weight_none"
    assert (
        explorer.export.button.click() is None
        and "Nothing to export" in explorer.export.status.value
    )

    statuses = _values_seen(explorer.barrier)
    explorer.compute.click()  # weight matching, no BN handling
    assert "wb-busy" in statuses[0], "while it computes, the dashboard says so"
    weight_curve, weight_figure = explorer.curve, explorer.figure
    expected = wb.lmc_curve(
        shipped_pair[0],
        wb.align(*shipped_pair, method="weight"),
        eval_data=small_test,
        alphas=5,
        progress=False,
    )
    assert weight_curve.loss == pytest.approx(expected.loss, rel=1e-5)
    assert f"{weight_curve.barrier:.3f}" in explorer.barrier.value
    assert "A (alpha = 0) is model 0, B (alpha = 1) is model 1" in explorer.barrier.value
    assert "measured on 250 test images, alignment on 500 train images" in explorer.barrier.value
    assert explorer.compute.disabled

    explorer.method.value = "none"  # not computed: the old figure and numbers go at once
    assert explorer.curve is None and not explorer.compute.disabled
    assert explorer.figure is None and explorer.view.layout.display == "none"
    assert explorer.readout.value == "" and "press Compute" in explorer.barrier.value
    explorer.compute.click()
    naive_text = explorer.barrier.value
    assert explorer.curve.barrier > weight_curve.barrier + 0.5

    explorer.bn.value = "reset"
    explorer.compute.click()
    assert explorer.curve.bn == "reset" and explorer.barrier.value != naive_text
    assert "alignment and RESET on 500 train images" in explorer.barrier.value

    midpoint = explorer.readout.value
    reset_curve, image = explorer.curve, bytes(explorer.view.value)
    explorer.alpha.value = 0.0
    assert explorer.readout.value != midpoint
    assert f"{100 * explorer.curve.accuracy[0]:.1f}%" in explorer.readout.value
    assert "(100% A + 0% B)" in explorer.readout.value and "on 250 test images" in midpoint
    assert bytes(explorer.view.value) != image, "the marker moved on screen"
    assert explorer.curve is reset_curve, "moving the slider must not recompute the curve"
    marker = explorer._marker.get_data()
    assert list(marker[0]) == [0.0]

    explorer.method.value = "weight"
    explorer.bn.value = "none"
    assert explorer.curve is weight_curve, "a computed curve is shown again without recomputing"
    assert explorer.figure is weight_figure, "and its figure without drawing it again"

    explorer.export.button.click()
    assert sorted(p.suffix for p in explorer.export.written) == [".pdf", ".png", ".svg"]
    assert {p.stem for p in explorer.export.written} == {"lmc_model0-model1_weight_none"}
    assert all(p.stat().st_size > 0 for p in explorer.export.written)
    assert "wrote" in explorer.export.status.value
    # the exported figure is the paper's: the curve, no alpha marker
    paper = explorer._paper_figure()
    assert [line.get_label() for line in paper.axes[0].lines] == ["weight"]
    assert len(explorer.figure.axes[0].lines) == 2  # the screen has the marker too
    assert explorer.figure.axes[0].get_ylim()[0] == 0
    explorer.bn.value = "reset"  # another selection: the status no longer describes it
    assert explorer.export.status.value == "" and explorer.export.written == []
    assert explorer.export.path.value.endswith("lmc_model0-model1_weight_reset")
    explorer.method.value = "none"  # naive + RESET, computed above
    explorer.export.button.click()  # a second export names its own files
    assert {p.stem for p in explorer.export.written} == {"lmc_model0-model1_none_reset"}
    assert (tmp_path / "lmc_model0-model1_weight_none.pdf").is_file()


def test_lmc_explorer_reads_a_computed_curve_back_without_aligning(
    shipped_pair, small_test, small_train, monkeypatch
):
    first = LMCExplorer(list(shipped_pair), eval_data=small_test, data=small_train, alphas=3)
    first.method.value = "activation"
    first.compute.click()

    def no_alignment(*_args, **_kwargs):
        raise AssertionError("the curve is on disk: nothing is aligned again")

    monkeypatch.setattr(lmc_compute, "align", no_alignment)
    again = LMCExplorer(list(shipped_pair), eval_data=small_test, data=small_train, alphas=3)
    again.method.value = "activation"
    again.compute.click()
    assert again.curve.loss.tolist() == first.curve.loss.tolist()


def test_lmc_explorer_marker_stays_inside_the_axes(shipped_pair, small_test, small_train):
    explorer = LMCExplorer(list(shipped_pair), eval_data=small_test, data=small_train, alphas=3)
    explorer.bn.value = "repair"
    explorer.compute.click()
    ax = explorer.figure.axes[0]
    highest = int(explorer.curve.loss.argmax())
    explorer.alpha.value = explorer.alpha.options[highest]
    renderer = explorer.figure.canvas.get_renderer()
    marker = explorer._marker.get_window_extent(renderer)
    assert ax.get_window_extent(renderer).contains(marker.x1 - 1, marker.y1 - 1)


def test_lmc_explorer_says_when_the_far_end_is_not_b(shipped_pair, small_test, small_train):
    explorer = LMCExplorer(list(shipped_pair), eval_data=small_test, data=small_train, alphas=3)
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
        LMCExplorer([shipped_pair[0]], eval_data=small_test)


def test_method_comparison_runs_and_exports(shipped_pair, small_test, small_train, tmp_path):
    dashboard = MethodComparison(
        list(shipped_pair), eval_data=small_test, data=small_train, export_dir=str(tmp_path)
    )
    assert next(iter(dashboard.methods.values())).description == "naive"
    for name, box in dashboard.methods.items():
        box.value = name in ("none", "weight")
    assert dashboard.children[0].layout.flex_flow == "row wrap"  # fits a narrow window
    statuses = _values_seen(dashboard.status)
    dashboard.run.click()
    assert "wb-busy" in statuses[0], "while it computes, the dashboard says so"
    table = dashboard.table
    references = ["endpoints", "ensemble (logits)", "ensemble (probabilities)"]
    assert set(table["method"]) == {"naive", "weight", *references}
    assert "2 methods</b> (naive, weight) with RESET" in dashboard.status.value
    assert "this run took" in dashboard.status.value and dashboard.run.disabled
    rows = table.set_index("method")
    assert rows.loc["weight", "accuracy"] > rows.loc["naive", "accuracy"]
    shown = dashboard.table_view.value
    assert "accuracy (%)" in shown and f"{100 * rows.loc['weight', 'accuracy']:.2f}" in shown
    assert dashboard.figure is not None
    ax = dashboard.figure.axes[0]
    drawn = [line.get_label() for line in ax.lines]
    assert {"endpoints (mean)", *references[1:]} <= set(drawn)  # the references, drawn
    low, high = ax.get_ylim()  # zoomed to the data, every value inside
    assert 100 * table["accuracy"].min() > low > 0 and 100 * table["accuracy"].max() < high
    dashboard.export.button.click()
    suffixes = sorted(p.suffix for p in dashboard.export.written)
    assert suffixes == [".csv", ".pdf", ".png", ".svg"]
    assert {p.stem for p in dashboard.export.written} == {"method_comparison_reset"}
    shown_table = dashboard.table

    dashboard.bn.value = "repair"  # the table and figure no longer match: they go
    assert dashboard.export.status.value == "" and dashboard.table is None
    assert dashboard.figure is None and dashboard.table_view.value == ""
    assert "press Run" in dashboard.status.value and not dashboard.run.disabled
    dashboard.methods["weight"].value = False
    dashboard.bn.value = "reset"
    assert dashboard.table is None, "naive alone with RESET was never run"
    dashboard.methods["weight"].value = True  # back to what was run: shown at once
    assert dashboard.table is shown_table and dashboard.figure is not None

    for box in dashboard.methods.values():
        box.value = False
    with pytest.raises(ValueError, match="at least one method"):
        dashboard.runner.press()
    assert "at least one method" in dashboard.status.value


def test_method_comparison_reads_everything_back_from_the_cache(
    shipped_pair, small_test, small_train, monkeypatch
):
    models = list(shipped_pair)
    first = MethodComparison(models, eval_data=small_test, data=small_train)
    first.methods["activation"].value = False
    first.run.click()

    def no_evaluation(*_args, **_kwargs):
        raise AssertionError("the merges and the models' own rows are on disk")

    monkeypatch.setattr(comparison, "evaluate", no_evaluation)
    again = MethodComparison(models, eval_data=small_test, data=small_train)
    again.methods["activation"].value = False
    again.run.click()
    assert again.table.equals(first.table)


def test_neuron_explorer_controls(shipped_pair, small_train, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    explorer = NeuronExplorer(*shipped_pair, data=small_train, steps=4, k=3)
    assert explorer.layer.options[:2] == ("features.conv1", "features.conv2")
    assert explorer.unit.disabled and "Render layer" in explorer.info.value
    statuses = _values_seen(explorer.info)
    explorer.render.click()
    assert "wb-busy" in statuses[0], "while it computes, the dashboard says so"
    comparison = explorer.comparison
    match = comparison.match
    last = shipped_pair[0].features.conv1.out_channels
    assert (explorer.unit.min, explorer.unit.max) == (1, last) and not explorer.unit.disabled
    best = match.order()[0]
    assert f"A's unit <b>{best}</b>" in explorer.info.value
    assert explorer.export.path.value == f"figures/neurons_features-conv1_weight_unit{best}"
    assert f"rank 1 of {last}" in explorer.info.value
    assert "<b>weight matching</b>, features.conv1" in explorer.info.value
    assert "on 500 train images" in explorer.info.value
    first_text, figure = explorer.info.value, explorer.figure
    image = bytes(explorer.view.value)
    explorer.unit.value = last
    assert explorer.figure is figure and bytes(explorer.view.value) != image, "redrawn in place"
    title = f"{explorer.comparison.match.layer}, weight matching: correlation of A's unit {match.order()[-1]}"
    assert figure.texts[0].get_text().startswith(title)
    worst = match.order()[-1]
    assert f"A's unit <b>{worst}</b>" in explorer.info.value and explorer.info.value != first_text
    assert f"{float(match.correlation[worst]):.2f}" in explorer.info.value
    assert f"rank {last} of {last}" in explorer.info.value
    assert explorer.comparison is comparison, "moving the slider must not recompute the layer"
    explorer.method.value = "activation"
    assert explorer.comparison is None and not explorer.render.disabled
    assert explorer.figure is None and explorer.unit.disabled
    explorer.render.click()
    assert explorer.comparison.match.method == "activation"
    explorer.export.path.value = str(tmp_path / "unit")
    explorer.export.button.click()
    assert len(explorer.export.written) == 3

    def no_pass(*_args, **_kwargs):
        raise AssertionError("the matching and RESET statistics are on disk")

    monkeypatch.setattr(views, "_match_layer", no_pass)
    monkeypatch.setattr(views, "reset_bn", no_pass)
    again = NeuronExplorer(*shipped_pair, data=small_train, steps=4, k=3)
    again.render.click()
    assert torch.equal(again.comparison.match.matched, match.matched)
    assert torch.equal(again.comparison.match.correlation, match.correlation)
    for name, model in comparison.models.items():
        rebuilt = again.comparison.models[name].state_dict()
        assert all(torch.equal(t, rebuilt[k]) for k, t in model.state_dict().items()), name


def test_neuron_explorer_sorts_by_the_study_and_shows_the_morph_strip(
    shipped_pair, mnist_train, tmp_path, monkeypatch
):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    data = mnist_train.subset(torch.arange(0, 4000, 50), "train")  # 80 images
    explorer = NeuronExplorer(*shipped_pair, data=data, steps=2, k=2, layer="features.conv1")
    assert explorer.morph.disabled, "no morph strip before the layer is rendered"
    explorer.render.click()
    study = explorer.study
    frame = study.to_frame().set_index("unit")
    assert study.point == "relu" and "(units observed after nonlinearity)" in explorer.info.value
    # the four columns are the study's renders: B's column is B's matched unit
    images = explorer.runner.current[1]
    assert torch.equal(images["B (matched)"], study.images["B"])
    assert torch.equal(images["merged + RESET"], study.images["merged + RESET"])
    unit = explorer._selected()
    assert f"label <b>{frame.loc[unit, 'label']}</b>" in explorer.info.value
    assert f"corr_A {frame.loc[unit, 'corr_A']:.2f}" in explorer.info.value
    image = bytes(explorer.view.value)

    explorer.unit.value = 5
    explorer.sort.value = "corr_A"  # back to rank 1, now the highest correlation with A
    assert explorer.unit.value == 1
    best = int(frame["corr_A"].idxmax())
    assert explorer._selected() == best and f"A's unit <b>{best}</b>" in explorer.info.value
    assert "by merged unit's correlation with A's" in explorer.info.value
    explorer.unit.value = explorer.unit.max
    worst = int(frame["corr_A"].idxmin())
    assert f"A's unit <b>{worst}</b>" in explorer.info.value and bytes(explorer.view.value) != image

    assert not explorer.morph.disabled and "press Morph strip" in explorer.morph_info.value
    explorer.morph.click()
    strip = explorer.morph_view.figure
    assert len(strip.axes) == 2 * 5 and f"unit {worst} along the path" in strip.texts[0].get_text()
    explorer.unit.value = 1  # another unit: its strip is not computed, the old one goes
    assert explorer.morph_view.figure is None and "press Morph strip" in explorer.morph_info.value
    explorer.unit.value = explorer.unit.max  # back: the kept strip, not recomputed
    assert explorer.morph_view.figure is strip and explorer.morph.disabled
    explorer.method.value = "activation"
    assert explorer.morph.disabled and explorer.morph_view.figure is None


def test_neuron_explorer_opens_on_the_requested_layer(shipped_pair, small_train):
    explorer = NeuronExplorer(*shipped_pair, data=small_train, steps=4, layer="features.conv2")
    assert explorer.layer.value == "features.conv2"
    with pytest.raises(ValueError, match="layer must be one of"):
        NeuronExplorer(*shipped_pair, data=small_train, layer="features.conv9")
    with pytest.raises(ValueError, match="observable at point='relu'"):
        NeuronExplorer(*shipped_pair, data=small_train, layer="classifier.fc2")
