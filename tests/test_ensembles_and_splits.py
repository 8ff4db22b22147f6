"""Output ensembles (the ceiling of a merge) and data splits (models trained on parts).

Issue 18, items 5 and 6: ``wb.ensemble`` and its rows in ``compare_methods`` and
``plot_comparison``; ``wb.partition`` (disjoint classes, Dirichlet shares), training on the
parts with the split recorded in checkpoint metadata, and per-part accuracy.
"""

from __future__ import annotations

import contextlib
import io
import math

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_state_equal, state_copy
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import workbench as wb
import workbench.cli.commands
from workbench import cli
from workbench.analysis import comparison
from workbench.cli import main
from workbench.evaluation import per_part_accuracy

TINY = {"width": 0.25, "in_channels": 1}
FAST = {"batch_size": 64, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def small_test(mnist_test) -> wb.TensorImageDataset:
    """250 test images (every 4th)."""
    return mnist_test.subset(torch.arange(0, 1000, 4), "test")


@pytest.fixture(scope="module")
def trained(tiny_train) -> list[nn.Module]:
    """Three quarter-width CNNs trained 1 epoch on 256 images (seeds 0, 1, 2)."""
    return wb.train_models("cnn", [0, 1, 2], tiny_train, 1, model_kwargs=TINY, **FAST)


def _logits(model: nn.Module, data: wb.TensorImageDataset) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(data.images)


# --- ensembles ---------------------------------------------------------------------------


def test_ensemble_of_one_model_is_the_model(trained, small_test):
    model = trained[0]
    assert torch.equal(_logits(wb.ensemble([model]), small_test), _logits(model, small_test))
    probabilities = wb.ensemble([model], combine="probabilities")
    assert torch.equal(
        _logits(probabilities, small_test).argmax(1), _logits(model, small_test).argmax(1)
    )
    alone, as_ensemble = (
        wb.evaluate(model, eval_data=small_test),
        wb.evaluate(probabilities, eval_data=small_test),
    )
    assert as_ensemble.accuracy == alone.accuracy
    assert as_ensemble.loss == pytest.approx(alone.loss, rel=1e-5)


def test_logit_ensemble_is_the_mean_of_the_logits(trained, small_test):
    a, b = trained[:2]
    expected = (_logits(a, small_test) + _logits(b, small_test)) / 2
    found = _logits(wb.ensemble([a, b], combine="logits"), small_test)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)


def test_probability_ensemble_loss_by_hand(trained, small_test):
    probabilities = torch.stack([F.softmax(_logits(m, small_test), 1) for m in trained]).mean(0)
    labels = small_test.targets
    loss = -probabilities[torch.arange(len(labels)), labels].log().mean().item()
    accuracy = (probabilities.argmax(1) == labels).float().mean().item()
    metrics = wb.evaluate(wb.ensemble(trained, combine="probabilities"), eval_data=small_test)
    assert metrics.loss == pytest.approx(loss, rel=1e-5)
    assert metrics.accuracy == pytest.approx(accuracy)
    # the log of probabilities: they sum to one
    out = _logits(wb.ensemble(trained, combine="probabilities"), small_test)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(len(out)))


def test_ensemble_holds_copies_and_leaves_the_models_as_they_were(trained, small_test):
    states = [state_copy(m) for m in trained]
    modes = [m.training for m in trained]
    ensemble = wb.ensemble(trained)
    assert isinstance(ensemble, wb.Ensemble) and ensemble.combine == "logits"
    assert not any(held is model for held, model in zip(ensemble.models, trained, strict=True))
    for held, model in zip(ensemble.models, trained, strict=True):
        assert wb.fingerprint(held) == wb.fingerprint(model)
    wb.evaluate(ensemble, eval_data=small_test)
    for model, state, mode in zip(trained, states, modes, strict=True):
        assert_state_equal(model, state)
        assert model.training == mode


def test_ensemble_refuses_bad_arguments(trained, small_test):
    with pytest.raises(ValueError, match=r"different numbers of classes \(\[10, 5\]\)"):
        wb.ensemble([trained[0], wb.create_model("cnn", num_classes=5, **TINY)])
    # models without a recorded architecture: refused by the forward pass
    mismatched = wb.ensemble([nn.Linear(4, 3), nn.Linear(4, 5)])
    with pytest.raises(ValueError, match=r"shape \(2, 5\) but model 0 returns \(2, 3\)"):
        mismatched(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="combine must be one of"):
        wb.ensemble(trained, combine="mean")
    with pytest.raises(ValueError, match="at least one model"):
        wb.ensemble([])
    with pytest.raises(TypeError, match="sequence of models"):
        wb.ensemble(trained[0])
    with pytest.raises(TypeError, match=r"model 1 must be a torch\.nn\.Module"):
        wb.ensemble([trained[0], "model.safetensors"])
    with pytest.raises(TypeError, match="float64"):
        wb.ensemble([nn.Linear(4, 3).double()])


def test_compare_methods_has_ensemble_rows(trained, tiny_train, small_test, tmp_path, monkeypatch):
    cache = wb.ResultCache(tmp_path)
    table = wb.compare_methods(
        trained,
        data=tiny_train,
        eval_data=small_test,
        methods=("none",),
        sizes=(2, 3),
        cache=cache,
        progress=False,
    )
    assert list(table.columns) == comparison.COLUMNS
    assert list(table["method"]) == ["naive"] * 2 + list(comparison.REFERENCES) * 2
    rows = table.set_index(["method", "n_models"])
    for n in (2, 3):
        for name, combine in comparison.ENSEMBLES.items():
            metrics = wb.evaluate(wb.ensemble(trained[:n], combine=combine), eval_data=small_test)
            assert rows.loc[(name, n), "accuracy"] == metrics.accuracy
            assert rows.loc[(name, n), "loss"] == pytest.approx(metrics.loss, rel=1e-6)
            assert rows.loc[(name, n), "bn"] == "-"
    # read back from the cache: no ensemble is evaluated again
    built = []
    monkeypatch.setattr(comparison, "ensemble", lambda *a, **k: built.append(1) or None)
    again = wb.compare_methods(
        trained,
        data=tiny_train,
        eval_data=small_test,
        methods=("none",),
        sizes=(2, 3),
        cache=cache,
        progress=False,
    )
    assert built == []
    pd.testing.assert_frame_equal(again, table)


def test_plot_comparison_draws_the_ensembles_as_references(trained, tiny_train, small_test):
    table = wb.compare_methods(
        trained[:2],
        data=tiny_train,
        eval_data=small_test,
        methods=("none",),
        cache=False,
        progress=False,
    )
    fig = wb.plot_comparison(table)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    assert list(lines) == [
        "naive + RESET",
        "endpoints (mean)",
        "ensemble (logits)",
        "ensemble (probabilities)",
    ]
    black = mcolors.to_hex(wb.figures.color_for("ensemble"))
    logits, probabilities = lines["ensemble (logits)"], lines["ensemble (probabilities)"]
    for line in (logits, probabilities):
        assert mcolors.to_hex(line.get_color()) == black
        assert line.get_marker() == "*"
        assert list(line.get_xdata()) == [2]  # never nudged sideways
    assert logits.get_linestyle() != probabilities.get_linestyle()
    assert logits.get_linestyle() != lines["naive + RESET"].get_linestyle()
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert "ensemble (logits)" in legend and "ensemble (probabilities)" in legend
    expected = 100 * table.set_index("method").loc["ensemble (logits)", "accuracy"]
    assert logits.get_ydata()[0] == pytest.approx(expected)


def test_compare_methods_per_part_accuracy(trained, tiny_train, small_test):
    parts = wb.partition(tiny_train, 2, "disjoint", seed=0)
    table = wb.compare_methods(
        trained[:2],
        data=tiny_train,
        eval_data=small_test,
        methods=("none",),
        parts=parts,
        cache=False,
        progress=False,
    )
    assert list(table.columns) == [*comparison.COLUMNS, "accuracy_part0", "accuracy_part1"]
    rows = table.set_index("method")
    for name, combine in comparison.ENSEMBLES.items():
        expected = per_part_accuracy(
            wb.ensemble(trained[:2], combine=combine), eval_data=small_test, parts=parts
        )
        assert list(rows.loc[name, ["accuracy_part0", "accuracy_part1"]]) == pytest.approx(expected)
    per_model = np.mean(
        [per_part_accuracy(m, eval_data=small_test, parts=parts) for m in trained[:2]], axis=0
    )
    found = rows.loc["endpoints", ["accuracy_part0", "accuracy_part1"]]
    assert list(found) == pytest.approx(per_model.tolist())


# --- per-part accuracy -------------------------------------------------------------------


def test_per_part_accuracy_on_classes_and_on_parts(trained, tiny_train, small_test):
    model = trained[0]
    labels = small_test.targets
    low = torch.isin(labels, torch.tensor([0, 1, 2, 3, 4]))
    on_low = wb.evaluate(
        model, eval_data=small_test.subset(low.nonzero().reshape(-1), "test")
    ).accuracy
    on_high = wb.evaluate(
        model, eval_data=small_test.subset((~low).nonzero().reshape(-1), "test")
    ).accuracy
    found = wb.per_part_accuracy(model, eval_data=small_test, parts=[range(5), [5, 6, 7, 8, 9]])
    assert found == pytest.approx([on_low, on_high])
    assert wb.per_part_accuracy(model, eval_data=small_test, parts=[range(10)]) == pytest.approx(
        [wb.evaluate(model, eval_data=small_test).accuracy]
    )
    # a part as a dataset weights each class by its count in the part
    parts = wb.partition(tiny_train, 2, "dirichlet", concentration=0.3, seed=1)
    with_counts = [dict(enumerate(p.partition["counts"])) for p in parts]
    assert wb.per_part_accuracy(model, eval_data=small_test, parts=parts) == pytest.approx(
        wb.per_part_accuracy(model, eval_data=small_test, parts=with_counts)
    )
    with pytest.raises(ValueError, match="shares no class"):
        wb.per_part_accuracy(
            model, eval_data=small_test.subset(torch.nonzero(low).reshape(-1), "t"), parts=[[7]]
        )
    with pytest.raises(TypeError, match="non-empty sequence"):
        wb.per_part_accuracy(model, eval_data=small_test, parts=[])
    with pytest.raises(ValueError, match="class must be >= 0"):
        wb.per_part_accuracy(model, eval_data=small_test, parts=[[-1]])


# --- partition ---------------------------------------------------------------------------


def _indexed(labels: torch.Tensor) -> wb.TensorImageDataset:
    """A dataset whose every image holds its own position, to follow examples into parts."""
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return wb.TensorImageDataset(images, labels, wb.dataset_info("mnist-5k"), "train")


def _positions(parts: list[wb.TensorImageDataset]) -> torch.Tensor:
    return torch.cat([p.images.reshape(-1) for p in parts]).long().sort().values


def test_disjoint_parts_hold_disjoint_classes_and_every_example_once(mnist_train):
    data = _indexed(mnist_train.targets[:1000])
    parts = wb.partition(data, 3, "disjoint", seed=0)
    classes = [set(p.targets.tolist()) for p in parts]
    assert all(not (a & b) for i, a in enumerate(classes) for b in classes[i + 1 :])
    assert set().union(*classes) == set(range(10))
    assert sorted(len(c) for c in classes) == [3, 3, 4]  # dealt round-robin
    assert torch.equal(_positions(parts), torch.arange(1000))
    for index, part in enumerate(parts):
        assert part.info == data.info and isinstance(part, wb.TensorImageDataset)
        record = part.partition
        assert record["split"] == "disjoint" and record["alpha"] is None
        assert (record["part"], record["parts"], record["seed"]) == (index, 3, 0)
        assert record["classes"] == sorted(classes[index])
        assert record["counts"] == torch.bincount(part.targets, minlength=10).tolist()
        assert torch.equal(data.targets[part.images.reshape(-1).long()], part.targets)
    other = wb.partition(data, 3, "disjoint", seed=1)
    assert [p.partition["classes"] for p in other] != [p.partition["classes"] for p in parts]


def _mean_class_entropy(parts: list[wb.TensorImageDataset]) -> float:
    """How evenly each class is shared among the parts: the mean over classes of the
    entropy (nats) of its distribution over parts (log(parts) when shared equally)."""
    counts = np.array([p.partition["counts"] for p in parts], dtype=float)  # parts x classes
    shares = counts / counts.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(shares > 0, shares * np.log(shares), 0.0), axis=0)
    return float(entropy.mean())


def test_dirichlet_parts_cover_every_example_once_and_are_seeded(mnist_train):
    data = _indexed(mnist_train.targets[:1000])
    parts = wb.partition(data, 4, "dirichlet", concentration=0.5, seed=3)
    assert torch.equal(_positions(parts), torch.arange(1000))
    assert sum(np.array(p.partition["counts"]) for p in parts).tolist() == (
        torch.bincount(data.targets, minlength=10).tolist()
    )
    assert all(p.partition["alpha"] == 0.5 and p.partition["split"] == "dirichlet" for p in parts)
    again = wb.partition(data, 4, "dirichlet", concentration=0.5, seed=3)
    assert all(torch.equal(a.images, b.images) for a, b in zip(parts, again, strict=True))
    other = wb.partition(data, 4, "dirichlet", concentration=0.5, seed=4)
    assert [p.partition["counts"] for p in other] != [p.partition["counts"] for p in parts]


def test_smaller_alpha_gives_more_skewed_parts(mnist_train):
    data = _indexed(mnist_train.targets)
    entropy = {
        alpha: np.mean(
            [_mean_class_entropy(wb.partition(data, 3, "dirichlet", alpha, s)) for s in range(3)]
        )
        for alpha in (0.05, 1.0, 100.0)
    }
    assert entropy[0.05] < entropy[1.0] < entropy[100.0]
    assert entropy[0.05] < 0.3 and entropy[100.0] > 0.95 * math.log(3)


def test_partition_of_a_generic_dataset_gives_subsets():
    data = TensorDataset(torch.randn(60, 1, 2, 2), torch.arange(60) % 3)
    parts = wb.partition(data, 3, "disjoint", seed=0)
    assert all(isinstance(p, Subset) for p in parts)
    assert sorted(i for p in parts for i in p.indices) == list(range(60))
    assert sorted(c for p in parts for c in p.partition["classes"]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"parts": 1}, ValueError, "parts must be >= 2"),
        ({"parts": 2.0}, TypeError, "parts must be an integer"),
        ({"parts": 11}, ValueError, "need at least 11 classes, but the dataset has 10"),
        ({"how": "iid"}, ValueError, "how must be one of"),
        (
            {"how": "dirichlet", "concentration": 0},
            ValueError,
            r"concentration must be in \(0, inf\]",
        ),
        (
            {"how": "dirichlet", "concentration": -1.0},
            ValueError,
            r"concentration must be in \(0, inf\]",
        ),
        (
            {"how": "dirichlet", "concentration": float("nan")},
            ValueError,
            "concentration must be a finite",
        ),
        (
            {"how": "dirichlet", "concentration": float("inf")},
            ValueError,
            "concentration must be a finite",
        ),
        ({"how": "dirichlet", "concentration": "0.5"}, TypeError, "concentration must be a number"),
        ({"seed": 0.5}, TypeError, "seed must be an integer"),
    ],
)
def test_partition_refuses_bad_arguments(tiny_train, kwargs, error, message):
    arguments = {"parts": 2, **kwargs}
    with pytest.raises(error, match=message):
        wb.partition(tiny_train, **arguments)


def test_partition_refuses_loaders_and_empty_parts(tiny_train):
    with pytest.raises(TypeError, match="needs a Dataset, got a DataLoader"):
        wb.partition(DataLoader(tiny_train), 2)
    with pytest.raises(ValueError, match="received no example"):
        wb.partition(
            tiny_train.subset(torch.arange(3), "train"), 3, "dirichlet", concentration=0.01
        )


# --- training on the parts ---------------------------------------------------------------


def test_train_models_on_disjoint_parts(mnist_train, small_test, tmp_path):
    data = mnist_train.subset(torch.arange(400), "train")
    runs = wb.training_runs(
        "cnn", [0, 1], data, 2, model_kwargs=TINY, partition="disjoint", partition_seed=0, **FAST
    )
    parts = wb.partition(data, 2, "disjoint", seed=0)
    labels = small_test.targets
    for index, (run, part) in enumerate(zip(runs, parts, strict=True)):
        classes = part.partition["classes"]
        assert run.metadata == {"split": part.partition}
        assert run.model.workbench_split == part.partition
        assert run.metrics["train_accuracy"] == wb.evaluate(run.model, eval_data=part).accuracy
        seen = torch.isin(labels, torch.tensor(classes))
        unseen = small_test.subset((~seen).nonzero().reshape(-1), "test")
        assert wb.evaluate(run.model, eval_data=unseen).accuracy < 0.05  # never trained on them
        path = wb.save_checkpoint(run.model, tmp_path / f"m{index}.safetensors", **run.metadata)
        split = wb.read_metadata(path)["split"]
        assert (split["split"], split["part"], split["parts"]) == ("disjoint", index, 2)
        assert split["classes"] == classes
    # train_models trains the same models on the same parts
    models = wb.train_models(
        "cnn", [0, 1], data, 2, model_kwargs=TINY, partition="disjoint", partition_seed=0, **FAST
    )
    for model, run in zip(models, runs, strict=True):
        assert_state_equal(model, run.model.state_dict())
        assert model.workbench_split == run.metadata["split"]


def test_train_models_refuses_bad_splits(tiny_train):
    with pytest.raises(ValueError, match="at least 2 seeds"):
        wb.train_models("cnn", [0], tiny_train, 1, model_kwargs=TINY, partition="disjoint", **FAST)
    with pytest.raises(ValueError, match="partition must be one of"):
        wb.train_models("cnn", [0, 1], tiny_train, 1, model_kwargs=TINY, partition="iid", **FAST)
    with pytest.raises(ValueError, match="concentration must be"):
        wb.training_runs(
            "cnn",
            [0, 1],
            tiny_train,
            1,
            model_kwargs=TINY,
            partition="dirichlet",
            concentration=0,
            **FAST,
        )
    unsplit = wb.training_runs("cnn", [0], tiny_train, 1, model_kwargs=TINY, **FAST)
    assert unsplit[0].metadata == {} and not hasattr(unsplit[0].model, "workbench_split")


def test_cli_train_with_a_split(mnist_train, small_test, tmp_path, monkeypatch):
    small = {"train": mnist_train.subset(torch.arange(300), "train"), "test": small_test}
    monkeypatch.setattr(cli.commands, "load_dataset", lambda name, split: small[split])  # quick
    argv = ["train", "cnn", "--seeds", "0", "1", "--epochs", "1", "--width", "0.25"]
    argv += ["--split", "dirichlet", "--alpha", "0.3", "--out", str(tmp_path)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(argv) == 0, err.getvalue()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "cnn_mnist-5k_seed0_dirichlet-part0.safetensors",
        "cnn_mnist-5k_seed1_dirichlet-part1.safetensors",
    ]
    splits = [wb.read_metadata(tmp_path / name)["split"] for name in names]
    assert [(s["split"], s["alpha"], s["part"], s["parts"]) for s in splits] == [
        ("dirichlet", 0.3, 0, 2),
        ("dirichlet", 0.3, 1, 2),
    ]
    expected = wb.partition(small["train"], 2, "dirichlet", 0.3)
    assert [s["counts"] for s in splits] == [p.partition["counts"] for p in expected]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main([*argv[:-2], "--alpha", "nan", "--out", str(tmp_path / "o")]) == 2
    assert "concentration must be a finite number" in err.getvalue()
