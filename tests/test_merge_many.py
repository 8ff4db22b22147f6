"""Merging N models: every method recovers a model from permuted copies of it; the
validation-based choices; the comparison table and figure; bad input."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import workbench as wb
from tests.conftest import assert_state_equal, state_copy
from workbench.graph import permutation_spec


@pytest.fixture(scope="module")
def permuted_copies(shipped_pair, mnist_train):
    """Model A and two randomly permuted copies of it: same function, scrambled neurons."""
    model = shipped_pair[0]
    spec = permutation_spec(model, example_input=mnist_train.images[:2])
    copies = [
        wb.apply_permutation(model, spec=spec, perm=wb.random_permutation(spec, s)) for s in (1, 2)
    ]
    return [model, *copies]


@pytest.mark.parametrize("method", ["weight", "activation", "cca"])
def test_merging_permuted_copies_gives_the_model_back(
    method, permuted_copies, mnist_train, mnist_test
) -> None:
    before = [state_copy(m) for m in permuted_copies]
    options = {"gamma": 1e-4} if method == "cca" else {}
    merged = wb.merge_many(
        permuted_copies, data=mnist_train, method=method, bn=None, progress=False, **options
    )
    for model, state in zip(permuted_copies, before, strict=True):
        assert_state_equal(model, state)
    x = mnist_test.images[:300]
    with torch.no_grad():
        got, expected = merged.model.eval()(x), permuted_copies[0].eval()(x)
    # CCA may mix units that never fire on the matching images (measured: 0.017); the
    # permutation methods are exact
    tolerance = {"weight": 1e-4, "activation": 1e-4, "cca": 0.05}[method]
    assert (got - expected).abs().max() < tolerance
    assert merged.report.method == method
    assert merged.report.num_models == 3


def test_plain_averaging_of_permuted_copies_breaks_the_model(permuted_copies, mnist_test) -> None:
    merged = wb.merge_many(permuted_copies, method="none", bn=None, progress=False)
    assert wb.evaluate(merged.model, eval_data=mnist_test).accuracy < 0.5


def test_cca_chooses_gamma_on_a_validation_split(shipped_pair, mnist_train) -> None:
    gammas = (0.1, 1.0)
    merged = wb.cca_merge(
        list(shipped_pair), data=mnist_train, gamma=gammas, val_fraction=0.2, progress=False
    )
    with pytest.warns(FutureWarning, match="gammas= is now gamma="):
        former = wb.cca_merge(
            list(shipped_pair), data=mnist_train, gammas=gammas, val_fraction=0.2, progress=False
        )
    assert former.report.validation == merged.report.validation
    report = merged.report
    assert set(report.validation) == {"0.1", "1.0"}
    assert report.gamma == max(gammas, key=lambda g: report.validation[str(g)])
    assert all(0.0 <= v <= 1.0 for v in report.validation.values())
    assert report.bn == "reset" and report.reference == 0
    assert all(
        torch.isfinite(t).all() for t in merged.model.state_dict().values() if t.is_floating_point()
    )


def test_reference_best_picks_the_most_accurate_on_validation(shipped_pair, mnist_train) -> None:
    val = mnist_train.subset(torch.arange(0, 4000, 8), "val")
    scores = [wb.evaluate(m, eval_data=val).accuracy for m in shipped_pair]
    merged = wb.merge_many(
        list(shipped_pair),
        data=mnist_train,
        method="activation",
        reference="best",
        val_data=val,
        progress=False,
    )
    assert merged.report.reference == scores.index(max(scores))


def test_bad_input_is_refused_before_work(shipped_pair, tiny_model, tiny_train) -> None:
    pair = list(shipped_pair)
    with pytest.raises(ValueError, match="method must be one of"):
        wb.merge_many(pair, data=tiny_train, method="zipper")
    with pytest.raises(ValueError, match="at least 2 models"):
        wb.merge_many(pair[:1], data=tiny_train)
    with pytest.raises(ValueError, match="needs data"):
        wb.merge_many(pair, data=None, method="activation")
    with pytest.raises(ValueError):
        wb.merge_many([pair[0], tiny_model], data=tiny_train)
    with pytest.raises(ValueError, match="reference must be"):
        wb.merge_many(pair, data=tiny_train, method="activation", reference=5)
    with pytest.raises(ValueError, match="cannot be split: pass val_data="):
        wb.merge_many(pair, data=torch.utils.data.DataLoader(tiny_train), method="cca")
    no_bn = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    with pytest.raises(ValueError, match=r"use one of \['none', 'repair'\]"):
        wb.merge_many([no_bn, no_bn], data=tiny_train, method="weight", bn="reset")


def test_repair_corrects_the_merged_statistics(shipped_pair, tiny_train) -> None:
    pair = list(shipped_pair)
    plain = wb.merge_many(pair, data=tiny_train, method="activation", bn=None, progress=False)
    repaired = wb.merge_many(
        pair, data=tiny_train, method="activation", bn="repair", progress=False
    )
    assert (
        wb.evaluate(repaired.model, eval_data=tiny_train).loss
        < wb.evaluate(plain.model, eval_data=tiny_train).loss - 0.05
    )


def test_compare_methods_table_csv_and_figure(shipped_pair, tiny_train, mnist_test, tmp_path):
    table = wb.compare_methods(
        list(shipped_pair),
        data=tiny_train,
        eval_data=mnist_test,
        methods=("none", "weight"),
        csv=tmp_path / "table.csv",
        progress=False,
    )
    assert list(table.columns) == wb.analysis.comparison.COLUMNS
    references = ["endpoints", "ensemble (logits)", "ensemble (probabilities)"]
    assert set(table["method"]) == {"naive", "weight", *references}  # display names
    assert set(table["n_models"]) == {2}
    rows = table.set_index("method")
    assert rows.loc["weight", "accuracy"] > rows.loc["naive", "accuracy"] + 0.2
    assert rows.loc["endpoints", "accuracy"] == pytest.approx(
        sum(wb.evaluate(m, eval_data=mnist_test).accuracy for m in shipped_pair) / 2
    )
    columns = ["method", "n_models", "bn", "accuracy", "loss"]
    written = pd.read_csv(tmp_path / "table.csv")
    pd.testing.assert_frame_equal(written[columns], table[columns], check_dtype=False)
    fig = wb.plot_comparison(table)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["naive + RESET", "weight + RESET", "endpoints (mean)", *references[1:]]
    with pytest.raises(ValueError, match=r"sizes must lie in 2\.\.2"):
        wb.compare_methods(list(shipped_pair), data=tiny_train, eval_data=mnist_test, sizes=(3,))
    with pytest.raises(ValueError, match="Unknown methods"):
        wb.compare_methods(
            list(shipped_pair), data=tiny_train, eval_data=mnist_test, methods=("zipper",)
        )


def test_compare_methods_reads_merges_back_from_the_cache(
    shipped_pair, tiny_train, mnist_test, tmp_path, monkeypatch
):
    """A dashboard's Run after a cell computed the same table merges nothing again."""
    from workbench.analysis import comparison

    cache = wb.ResultCache(tmp_path)
    first = wb.compare_methods(
        list(shipped_pair),
        data=tiny_train,
        eval_data=mnist_test,
        methods=("naive",),
        cache=cache,
        progress=False,
    )
    merges = []
    original = comparison.merge_many
    monkeypatch.setattr(
        comparison, "merge_many", lambda *a, **k: merges.append(1) or original(*a, **k)
    )
    again = wb.compare_methods(
        list(shipped_pair),
        data=tiny_train,
        eval_data=mnist_test,
        methods=("none", "weight"),
        cache=cache,
        progress=False,
    )
    assert merges == [1], "only the weight merge is new"
    pd.testing.assert_frame_equal(again.iloc[[0]], first.iloc[[0]])
    wb.compare_methods(
        list(shipped_pair),
        data=tiny_train,
        eval_data=mnist_test,
        methods=("none",),
        bn=None,
        cache=cache,
        progress=False,
    )
    assert merges == [1, 1], "another BN handling is another result"
