"""BatchNorm handling is a registry: a handling registered in this file alone works through
every entry point (lmc_curve, merge_many, compare_methods, a sweep, the LMC dashboard, the
interpolation slider, the command line), with its label and line style in the figures,
and its numbers equal a direct computation written here.

The handling registered here, ``"reset-head"``, is RESET measured on the first 64 images
of the data only: a correction the built-in ones do not give, so that every check below
tells the registered handling from the built-in RESET.
"""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.cli import main
from workbench.figures import bn_label, linestyle_for, series_label
from workbench.merging import reset_bn
from workbench.widgets import InterpolationSlider, LMCExplorer

HEAD = 64


def _head(data: wb.TensorImageDataset) -> wb.TensorImageDataset:
    return data.subset(torch.arange(HEAD), data.split)


@pytest.fixture
def reset_head():
    """Registers ``"reset-head"`` for one test and removes it afterwards."""
    before = wb.bn_modes()

    @wb.register_bn(
        "reset-head", label="RESET-64", linestyle="-.", needs_batchnorm=True, batch_statistics=True
    )
    def prepare(endpoints, data, *, spec, batch_size, max_batches):
        head = _head(data)
        return lambda work, weights: wb.merging.reset_bn_(work, data=head, batch_size=batch_size)

    yield "reset-head"
    wb.unregister_bn("reset-head")
    assert wb.bn_modes() == before


@pytest.fixture(scope="module")
def small(mnist_train, mnist_test):
    return _evenly(mnist_train, 300), _evenly(mnist_test, 300)


def _evenly(split, n):
    return split.subset(torch.linspace(0, len(split) - 1, n).long(), split.split)


def _midpoint_by_hand(a, b, fit, test):
    """The midpoint of A and B with RESET on the first 64 images of ``fit``, on ``test``."""
    merged = reset_bn(wb.interpolate(a, b, alpha=0.5), data=_head(fit))
    return wb.evaluate(merged, eval_data=test)


def test_registered_handling_is_listed_labelled_and_styled(reset_head, shipped_pair):
    assert wb.bn_modes() == ["none", "reset", "repair", "reset-head"]
    assert "reset-head" in wb.bn_modes(shipped_pair[0])
    plain = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    assert wb.bn_modes(plain) == ["none", "repair"]  # it needs BatchNorm layers
    assert bn_label("reset-head") == "RESET-64" and linestyle_for("reset-head") == "-."
    assert series_label("weight", "reset-head") == "weight + RESET-64"
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        wb.register_bn("reset-head", label="x")(lambda *a, **k: None)


def test_unknown_and_none_spellings():
    assert wb.get_bn(None).name == "none"
    with pytest.raises(ValueError, match=r"got 'rest'\. Did you mean 'reset'\?"):
        wb.get_bn("rest")
    with pytest.raises(ValueError, match="bn must be one of"):
        bn_label("reset-head")  # not registered outside the fixture


def test_lmc_curve_uses_the_registered_correction(reset_head, shipped_pair, small):
    fit, test = small
    a, b = shipped_pair
    curve = wb.lmc_curve(
        a, b, eval_data=test, alphas=[0.0, 0.5, 1.0], bn="reset-head", data=fit, progress=False
    )
    assert curve.bn == "reset-head"
    expected = _midpoint_by_hand(a, b, fit, test)
    assert curve.loss[1] == pytest.approx(expected.loss, rel=1e-5)
    assert curve.accuracy[1] == expected.accuracy
    full = wb.lmc_curve(a, b, eval_data=test, alphas=[0.5], bn="reset", data=fit, progress=False)
    assert full.loss[0] != pytest.approx(curve.loss[1], rel=1e-3)  # not the built-in RESET


def test_merge_many_and_compare_methods(reset_head, shipped_pair, small):
    fit, test = small
    pair = list(shipped_pair)
    merged = wb.merge_many(pair, data=fit, method="weight", bn="reset-head", progress=False)
    assert merged.report.bn == "reset-head"
    plain = wb.merge_many(pair, data=fit, method="weight", bn=None, progress=False)
    assert plain.report.bn == "none"
    by_hand = reset_bn(plain.model, data=_head(fit))
    x = test.images[:50]
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x), by_hand(x), rtol=1e-5, atol=1e-5)
    table = wb.compare_methods(
        pair,
        data=fit,
        eval_data=test,
        methods=["weight"],
        sizes=[2],
        bn="reset-head",
        progress=False,
        cache=False,
    )
    row = table[table["method"] == "weight"].iloc[0]
    assert row["bn"] == "reset-head"
    assert row["accuracy"] == wb.evaluate(merged.model, eval_data=test).accuracy


def test_a_sweep_with_the_registered_handling(reset_head, small):
    fit, test = small
    result = wb.sweep(
        "width", [0.25], data=fit, eval_data=test, epochs=1, methods=("none",), bn="reset-head", alphas=3,
        progress=False, cache=False,
    )  # fmt: skip
    assert {curve.bn for curve in result.curves} == {"reset-head"}
    assert result.settings["bn"] == "reset-head"
    fig = result.plot()
    assert fig.axes[0].get_ylabel().endswith("(RESET-64)")


def test_the_dashboards_offer_and_use_it(reset_head, shipped_pair, small):
    fit, test = small
    explorer = LMCExplorer(list(shipped_pair), eval_data=test, data=fit, alphas=3)
    assert ("RESET-64", "reset-head") in [tuple(o) for o in explorer.bn.options]
    explorer.method.value = "none"
    explorer.bn.value = "reset-head"
    explorer.compute.click()
    assert explorer.curve.bn == "reset-head"
    assert "RESET-64" in explorer.barrier.value
    expected = _midpoint_by_hand(*shipped_pair, fit, test)
    assert explorer.curve.loss[1] == pytest.approx(expected.loss, rel=1e-5)

    slider = InterpolationSlider(*shipped_pair, eval_data=test, bn="reset-head", data=fit, step=0.5)
    assert slider.metrics.accuracy == expected.accuracy  # the slider starts at alpha 0.5
    assert "after RESET-64" in slider.readout.value


def test_the_command_line_takes_it(reset_head, tmp_path):
    argv = ["lmc", "--methods", "none", "--alphas", "3", "--limit", "300", "--bn", "reset-head"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--out", str(tmp_path)])
    assert code == 0, err.getvalue()
    table = pd.read_csv(tmp_path / "lmc.csv")
    assert set(table["bn"]) == {"reset-head"}


def test_a_handling_registered_again_with_other_code_gets_a_new_cache_key(reset_head):
    key = wb.get_bn("reset-head").cache_key
    assert key.startswith("reset-head:")

    @wb.register_bn("reset-head", label="RESET-64", needs_batchnorm=True, replace=True)
    def other(endpoints, data, *, spec, batch_size, max_batches):
        return None

    assert wb.get_bn("reset-head").cache_key != key


def test_repair_refuses_weights_its_targets_do_not_cover(shipped_pair, small):
    fit, test = small
    with pytest.raises(ValueError, match=r"only for alphas in \[0, 1\], got \[-0.5, 0.0, 1.0\]"):
        wb.lmc_curve(
            *shipped_pair,
            eval_data=test,
            alphas=[-0.5, 0.0, 1.0],
            bn="repair",
            data=fit,
            progress=False,
        )
    extrapolated = wb.lmc_curve(
        *shipped_pair, eval_data=test, alphas=[-0.5, 0.0, 1.0], bn="reset", data=fit, progress=False
    )
    assert extrapolated.bn == "reset"
    with pytest.raises(ValueError, match=r"weights >= 0, got \[-0.5, 1.5\]"):
        wb.repair(wb.interpolate(*shipped_pair, alpha=1.5), shipped_pair, alpha=1.5, data=fit)
