"""Width and epoch sweeps with tiny settings: tables, curves, fingerprints, cache, figures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.analysis import sweeps


@pytest.fixture(scope="module")
def small_test(mnist_test):
    return mnist_test.subset(torch.arange(0, 1000, 5), "test")


@pytest.fixture(scope="module")
def width_sweep(tiny_train, small_test, tmp_path_factory):
    cache = wb.ResultCache(tmp_path_factory.mktemp("sweep-cache"))
    result = sweeps.sweep(
        "width",
        [0.25, 0.5],
        data=tiny_train,
        eval_data=small_test,
        epochs=1,
        alphas=3,
        splits=("train", "test"),
        progress=False,
        cache=cache,
    )
    return result, cache


def test_width_sweep_table(width_sweep, tiny_train, small_test):
    result, _ = width_sweep
    table = result.table
    assert result.parameter == "width" and result.settings["bn"] == "reset"
    assert list(table["width"]) == [0.25] * 4 + [0.5] * 4
    assert list(table["method"]) == ["naive", "naive", "weight", "weight"] * 2
    assert list(table["split"]) == ["train", "test"] * 4
    assert set(table["pair"]) == {"0-1"}
    assert table["barrier"].notna().all() and table["midpoint_accuracy"].between(0, 1).all()
    np.testing.assert_allclose(
        table["endpoint_accuracy"], (table["accuracy_a"] + table["accuracy_b"]) / 2
    )
    # The models are those train_models gives for the recipe (deterministic on the CPU).
    models = wb.train_models(
        "cnn", [0, 1], tiny_train, 1, model_kwargs={"width": 0.25, "in_channels": 1}, progress=False
    )
    first = result.curves[0]
    assert first.settings["trained"] == [wb.fingerprint(m) for m in models]
    assert first.settings["width"] == 0.25 and first.bn == "reset"
    test_row = table[(table.width == 0.25) & (table.method == "naive") & (table.split == "test")]
    reset = wb.reset_bn(models[0], data=tiny_train)  # with RESET the endpoints are reset too
    assert test_row["accuracy_a"].item() == pytest.approx(
        wb.evaluate(reset, eval_data=small_test).accuracy, abs=1e-9
    )
    frame = result.curves_frame()
    assert len(frame) == 8 * 3 and {"width", "pair", "alpha"} <= set(frame.columns)


def test_width_sweep_is_cached(width_sweep, tiny_train, small_test, monkeypatch):
    result, cache = width_sweep
    trained = []
    original = sweeps.train_models
    monkeypatch.setattr(
        sweeps, "train_models", lambda *a, **k: trained.append(a[3]) or original(*a, **k)
    )
    kwargs = {"alphas": 3, "splits": ("train", "test"), "progress": False, "cache": cache}
    again = sweeps.sweep(
        "width", [0.25, 0.5], data=tiny_train, eval_data=small_test, epochs=1, **kwargs
    )
    assert trained == []
    assert again.table.equals(result.table)
    sweeps.sweep("width", [0.25], data=tiny_train, eval_data=small_test, epochs=2, **kwargs)
    assert trained == [2], "another recipe trains again"


def test_width_sweep_figure(width_sweep, tmp_path):
    result, _ = width_sweep
    fig = result.plot("barrier")
    ax = fig.axes[0]
    lines = [line for line in ax.lines if line.get_label()[0] != "_"]
    assert [line.get_label() for line in lines] == [
        "naive (train)",
        "naive (test)",
        "weight (train)",
        "weight (test)",
    ]
    table = result.table
    weight_test = table[(table.method == "weight") & (table.split == "test")]
    np.testing.assert_allclose(lines[3].get_ydata(), weight_test["barrier"])
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "Loss barrier (RESET)"
    assert lines[0].get_color() == wb.figures.PALETTE["vermillion"]
    assert lines[2].get_color() == wb.figures.PALETTE["blue"]
    accuracy = result.plot("midpoint_accuracy")
    np.testing.assert_allclose(
        [line for line in accuracy.axes[0].lines][1].get_ydata(),
        100 * table[(table.method == "naive") & (table.split == "test")]["midpoint_accuracy"],
    )
    paths = wb.figures.save(fig, tmp_path / "sweep", formats=("pdf", "svg", "png"))
    assert all(p.stat().st_size > 0 for p in paths)
    assert result.write_csv(tmp_path / "t.csv").read_text().startswith("width,pair,method")
    with pytest.raises(ValueError, match="metric must be one of"):
        result.plot("loss")


def test_epoch_sweep_with_three_seeds_has_bands(tiny_train, small_test):
    result = sweeps.sweep(
        "epochs",
        [1, 2],
        data=tiny_train,
        eval_data=small_test,
        model_kwargs={"width": 0.25},
        seeds=(0, 1, 2),
        methods=("weight",),
        bn=None,
        alphas=3,
        progress=False,
        cache=False,
    )
    table = result.table
    assert list(table["epochs"]) == [1, 1, 1, 2, 2, 2]
    assert list(table["pair"]) == ["0-1", "0-2", "1-2"] * 2
    fig = result.plot("barrier")
    ax = fig.axes[0]
    np.testing.assert_allclose(
        ax.lines[0].get_ydata(), table.groupby("epochs")["barrier"].mean().to_numpy()
    )
    assert len(ax.collections) == 1  # the min-max band over the three pairs
    assert ax.get_xscale() == "linear"


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("depth", [1]), {}, "parameter must be 'width' or 'epochs', got 'depth'"),
        (("width", []), {}, "at least one width value"),
        (("width", [0.5, -1]), {}, "Every width must be a positive number, got -1"),
        (("epochs", [1.5]), {}, "Epochs must be whole numbers, got 1.5"),
        (("width", [1]), {"seeds": (3, 3)}, "at least 2 different seeds"),
        (("width", [1]), {"splits": ("val",)}, "splits must be 'train' and/or 'test'"),
        (("width", [1]), {"methods": ()}, "at least one method"),
    ],
)
def test_bad_arguments(tiny_train, small_test, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sweeps.sweep(*args, data=tiny_train, eval_data=small_test, **kwargs)


def test_a_value_whose_models_did_not_learn_says_so(shuffled_tiny_train, small_test, tmp_path):
    """In the caller, whether the value ran here, in a job or comes from the cache."""
    shuffled = shuffled_tiny_train
    kwargs = {"eval_data": small_test, "epochs": 2, "alphas": 2, "methods": ("none",)}
    cache = wb.ResultCache(tmp_path)
    with ThreadPoolExecutor(2) as pool:  # in a job, then from the cache, then here uncached
        for executor, store in ((pool, cache), (None, cache), (None, False)):
            with pytest.warns(wb.DidNotLearnWarning) as caught:
                found = sweeps.sweep(
                    "width", [0.25], data=shuffled, executor=executor, cache=store,
                    progress=False, **kwargs,
                )  # fmt: skip
            messages = [str(w.message) for w in caught if w.category is wb.DidNotLearnWarning]
            assert [m[:32] for m in messages] == ["train_model(seed=0) did not lear",
                                                  "train_model(seed=1) did not lear"]  # fmt: skip
            assert found.curves[0].settings["did_not_learn"] == messages
