"""NP Merge: learned per-parameter coefficients after alignment.

Its fixed points (nothing learned: exactly MergeMany + RESET; a model and a permuted copy
of itself: the model back), that learning helps on the data it learns on, the coefficients'
range, determinism, the report, merge_many's ``merge="learned"``, the figure, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import workbench as wb
from tests.conftest import assert_state_equal, state_copy, states_equal
from workbench.graph import permutation_spec

FAST = {"steps": 10, "eval_every": 5, "batch_size": 64, "lr": 0.05, "progress": False}
LAYERS = [
    "features.conv1",
    "features.bn1",
    "features.conv2",
    "features.bn2",
    "features.conv3",
    "features.bn3",
    "classifier.fc1",
    "classifier.fc2",
]


def _tiny(seed: int, data, width: float = 0.25, epochs: int = 1) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = wb.create_model("cnn", width=width, in_channels=1)
    return wb.train_model(model, data=data, epochs=epochs, seed=seed, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread for these tiny models: on a CPU shared with other jobs two threads made
    a step 15 times slower (spinning workers); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tiny_train):
    """Three quarter-width CNNs trained for one epoch on 256 images (seeds 0, 1, 2)."""
    return [_tiny(seed, tiny_train) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def fit(tiny_train):
    """The part of ``tiny_train`` that np_merge learns on (its default validation split
    held out)."""
    return wb.train_val_split(tiny_train, 0.1)[0]


@pytest.mark.parametrize("count", [2, 3])
def test_no_steps_is_merge_many_with_reset_exactly(trained, tiny_train, count) -> None:
    models = trained[:count]
    before = [state_copy(m) for m in models]
    found = wb.np_merge(models, data=tiny_train, steps=0, progress=False)
    expected = wb.merge_many(models, data=tiny_train, method="weight", bn="reset", progress=False)
    assert states_equal(found.model.state_dict(), expected.model.state_dict())
    for model, state in zip(models, before, strict=True):
        assert_state_equal(model, state)
    assert found.report.curves == {} and found.report.coefficients == {}


@pytest.mark.parametrize("combine", ["successive", "joint"])
def test_zero_learning_rate_is_the_aligned_average_with_reset(
    trained, tiny_train, fit, combine
) -> None:
    found = wb.np_merge(trained, data=tiny_train, scheme=combine, **{**FAST, "lr": 0.0})
    # the aligned average, RESET on the training part (the validation split held out)
    expected = wb.merge_many(trained, data=fit, method="weight", bn="reset", progress=False)
    assert states_equal(found.model.state_dict(), expected.model.state_dict())
    assert set(found.report.hyperparameters["best_steps"].values()) == {0}


def test_learning_lowers_the_training_loss(trained, tiny_train, fit) -> None:
    found = wb.np_merge(trained[:2], data=tiny_train, **{**FAST, "steps": 30})
    average = wb.merge_many(trained[:2], data=fit, method="weight", bn="reset", progress=False)
    assert (
        wb.evaluate(found.model, eval_data=fit).loss
        < wb.evaluate(average.model, eval_data=fit).loss - 0.01
    )
    curve = found.report.curves["0+1"]
    assert curve[0]["step"] == 0 and curve[-1]["loss"] < curve[0]["loss"]


def test_joint_coefficients_lower_the_training_loss(trained, tiny_train, fit) -> None:
    found = wb.np_merge(trained, data=tiny_train, scheme="joint", **{**FAST, "steps": 30})
    average = wb.merge_many(trained, data=fit, method="weight", bn="reset", progress=False)
    assert (
        wb.evaluate(found.model, eval_data=fit).loss
        < wb.evaluate(average.model, eval_data=fit).loss
    )
    assert list(found.report.coefficients) == ["model 0", "model 1", "model 2"]
    assert list(found.report.curves) == ["joint"]


def test_a_model_and_a_permuted_copy_give_the_model_back(trained, tiny_train, mnist_test) -> None:
    model = trained[0]
    spec = permutation_spec(model, example_input=tiny_train.images[:2])
    copy = wb.apply_permutation(model, spec=spec, perm=wb.random_permutation(spec, seed=3))
    found = wb.np_merge([model, copy], data=tiny_train, bn=None, **FAST)
    x = mnist_test.images[:200]
    with torch.no_grad():
        assert torch.allclose(found.model.eval()(x), model.eval()(x), atol=1e-5)
    # identical endpoints give the coefficients no gradient: they stay at 0.5
    for summary in found.report.coefficients["0+1"].values():
        assert summary["q00"] == summary["q100"] == 0.5
    # with RESET: the model with its statistics measured again
    reset = wb.np_merge([model, copy], data=tiny_train, **FAST).model
    expected = wb.reset_bn(model, data=wb.train_val_split(tiny_train, 0.1)[0])
    with torch.no_grad():
        assert torch.allclose(reset.eval()(x), expected.eval()(x), atol=1e-4)


@pytest.mark.parametrize("combine", ["successive", "joint"])
def test_coefficients_stay_between_the_endpoints(trained, tiny_train, combine) -> None:
    # without alignment the merged weights are mixes of the models' own weights
    models = trained[:2]
    found = wb.np_merge(
        models, data=tiny_train, align="none", scheme=combine, **{**FAST, "lr": 0.5}
    )
    for per_layer in found.report.coefficients.values():
        for summary in per_layer.values():
            assert 0.0 < summary["q00"] <= summary["q50"] <= summary["q100"] < 1.0
    merged = dict(found.model.named_parameters())
    for name, a in models[0].named_parameters():
        b = dict(models[1].named_parameters())[name]
        low, high = torch.minimum(a, b), torch.maximum(a, b)
        slack = 1e-6 * (1 + high.abs())
        assert ((merged[name] >= low - slack) & (merged[name] <= high + slack)).all(), name
    moved = max(s["mean_abs_shift"] for p in found.report.coefficients.values() for s in p.values())
    assert moved > 0.05  # a large learning rate moves them


def test_seeded_and_deterministic(trained, tiny_train) -> None:
    first = wb.np_merge(trained[:2], data=tiny_train, seed=4, **FAST)
    again = wb.np_merge(trained[:2], data=tiny_train, seed=4, **FAST)
    other = wb.np_merge(trained[:2], data=tiny_train, seed=5, **FAST)
    assert states_equal(first.model.state_dict(), again.model.state_dict())
    assert first.report.curves == again.report.curves
    assert first.report.coefficients == again.report.coefficients
    assert not states_equal(first.model.state_dict(), other.model.state_dict())


def test_the_report(trained, tiny_train) -> None:
    found = wb.np_merge(trained, data=tiny_train, patience=2, **{**FAST, "steps": 15})
    report = found.report
    assert isinstance(found, wb.MergeResult) and isinstance(report, wb.MergeReport)
    assert (report.method, report.num_models, report.bn, report.merge) == (
        "weight",
        3,
        "reset",
        "learned",
    )
    settings = report.hyperparameters
    assert {k: settings[k] for k in ("steps", "lr", "batch_size", "eval_every", "patience")} == {
        "steps": 15,
        "lr": 0.05,
        "batch_size": 64,
        "eval_every": 5,
        "patience": 2,
    }
    assert settings["scheme"] == "successive" and settings["data_fraction"] == 1.0
    assert list(report.curves) == list(report.coefficients) == ["0+1", "0..1+2"]
    for label, curve in report.curves.items():
        assert [p["step"] for p in curve][:2] == [0, 5]
        assert all(set(p) == {"step", "loss", "accuracy"} for p in curve)
        best = settings["best_steps"][label]
        assert min(p["loss"] for p in curve) == next(p["loss"] for p in curve if p["step"] == best)
        assert settings["steps_run"][label] == curve[-1]["step"] <= 15
    inits = {label: next(iter(per.values()))["init"] for label, per in report.coefficients.items()}
    assert inits == {"0+1": 0.5, "0..1+2": pytest.approx(2 / 3)}
    for per_layer in report.coefficients.values():
        assert list(per_layer) == LAYERS
        summary = per_layer["features.conv1"]
        assert {"mean", "std", "mean_abs_shift", "count", "q05", "q50", "q95"} <= set(summary)
        assert summary["count"] == trained[0].features.conv1.weight.numel()
    assert 0.0 <= report.validation["np_merge"] <= 1.0
    assert report.seconds > 0
    assert report.as_dict()["curves"] == report.curves


def test_merge_many_runs_it(trained, tiny_train) -> None:
    """One entry point: ``merge_many(..., "np_merge")`` with NP Merge's own options;
    ``wb.np_merge`` is a thin wrapper over it, and the former spellings (``merge="learned"``,
    ``learn_<name>=``) give the same merge with a FutureWarning."""
    options = {"steps": 10, "eval_every": 5, "lr": 0.1}
    direct = wb.np_merge(
        trained[:2],
        data=tiny_train,
        align="weight",
        batch_size=32,
        seed=2,
        progress=False,
        **options,
    )
    assert direct.report.merge == "learned" and direct.report.hyperparameters["batch_size"] == 32
    named = wb.merge_many(
        trained[:2], data=tiny_train, method="np_merge", align="weight", learn_batch_size=32, seed=2,
        progress=False, **options,
    )  # fmt: skip
    assert states_equal(named.model.state_dict(), direct.model.state_dict())
    assert named.report.method == "np_merge"
    # ... and its own report (curves, coefficients) is kept, not dropped
    assert named.report.details.curves == direct.report.curves
    assert named.report.details.coefficients == direct.report.coefficients
    learn = {f"learn_{name}": value for name, value in {**options, "batch_size": 32}.items()}
    with pytest.warns(FutureWarning, match="merge='learned'"):
        through = wb.merge_many(
            trained[:2],
            data=tiny_train,
            method="weight",
            merge="learned",
            seed=2,
            progress=False,
            **learn,
        )
    assert states_equal(through.model.state_dict(), direct.model.state_dict())
    with pytest.warns(FutureWarning, match="learn_steps= is now steps="):
        former = wb.merge_many(
            trained[:2], data=tiny_train, method="np_merge", seed=2, progress=False, **learn
        )
    assert states_equal(former.model.state_dict(), direct.model.state_dict())
    with pytest.raises(TypeError, match="learn_steps= is the former name of steps="):
        wb.merge_many(
            trained[:2], data=tiny_train, method="np_merge", steps=3, learn_steps=3, progress=False
        )
    assert wb.merge_many(trained[:2], data=tiny_train, progress=False).report.merge == "average"
    with pytest.raises(ValueError, match="merge must be one of"):
        wb.merge_many(trained[:2], data=tiny_train, merge="mean", progress=False)
    with pytest.raises(ValueError, match="merges them itself"):
        wb.merge_many(
            trained[:2], data=tiny_train, method="np_merge", merge="learned", progress=False
        )
    with pytest.raises(
        ValueError,
        match=r"bn='repair' corrects towards the endpoints' own statistics, and method='np_merge' merges the models into a space of its own: use one of \['none', 'reset'\]",
    ):
        wb.merge_many(trained[:2], data=tiny_train, method="np_merge", bn="repair", progress=False)
    with pytest.raises(ValueError, match="does not align one model to another"):
        wb.align(*trained[:2], method="np_merge", data=tiny_train)


def test_activation_alignment_and_less_data(trained, tiny_train) -> None:
    found = wb.np_merge(trained[:2], data=tiny_train, align="activation", data_fraction=0.5, **FAST)
    assert found.report.method == "activation"
    assert found.report.hyperparameters["data_fraction"] == 0.5


def test_models_without_batchnorm(tiny_train) -> None:
    with torch.random.fork_rng(devices=[]):
        models = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            models.append(wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False))
    found = wb.np_merge(models, data=tiny_train, bn=None, **FAST)
    assert "features.conv1" in found.report.coefficients["0+1"]
    with pytest.raises(
        ValueError, match=r"needs BatchNorm layers .* use one of \['none', 'repair'\]\."
    ):
        wb.np_merge(models, data=tiny_train, **FAST)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"steps": -1}, ValueError, "steps must be >= 0"),
        ({"steps": 2.0}, TypeError, "steps must be an integer"),
        ({"lr": math.nan}, ValueError, "lr must be a finite number"),
        ({"lr": -0.1}, ValueError, "lr must be in"),
        ({"lr": "fast"}, TypeError, "lr must be a number"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"eval_every": 0}, ValueError, "eval_every must be >= 1"),
        ({"patience": 0}, ValueError, "patience must be >= 1"),
        ({"data_fraction": 0.0}, ValueError, "data_fraction must be in"),
        ({"scheme": "chain"}, ValueError, "scheme must be one of"),
        (
            {"bn": "repair"},
            ValueError,
            r"merges the models into a space of its own: use one of \['none', 'reset'\]",
        ),
        ({"bn": "recompute"}, ValueError, "bn must be one of"),
        ({"align": "magic"}, ValueError, "magic"),
        ({"temperature": 2}, ValueError, r"Options \[.temperature.\] are taken by none"),
    ],
)
def test_bad_arguments(trained, tiny_train, arguments, error, message) -> None:
    with pytest.raises(error, match=message):
        wb.np_merge(trained[:2], data=tiny_train, **{"progress": False, **arguments})


def test_bad_models_and_data(trained, tiny_train) -> None:
    with pytest.raises(ValueError, match="at least 2 models"):
        wb.np_merge(trained[:1], data=tiny_train, progress=False)
    wider = wb.create_model("cnn", width=0.5, in_channels=1)
    with pytest.raises(ValueError, match="differ in width"):
        wb.np_merge([trained[0], wider], data=tiny_train, progress=False)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        wb.np_merge([trained[0], "model"], data=tiny_train, progress=False)
    with pytest.raises(TypeError, match="Dataset or DataLoader"):
        wb.np_merge(trained[:2], data=tiny_train.images, progress=False)
    loader = torch.utils.data.DataLoader(tiny_train, batch_size=64)
    with pytest.raises(ValueError, match="pass val_data="):
        wb.np_merge(trained[:2], data=loader, progress=False)


def test_plot_coefficients(trained, tiny_train) -> None:
    found = wb.np_merge(trained, data=tiny_train, **{**FAST, "steps": 5})
    fig = wb.plot_coefficients(found)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
    # one box per layer and learning problem, one dashed line at each starting value
    assert len(ax.patches) == len(LAYERS) * 2
    assert [round(line.get_ydata()[0], 3) for line in ax.lines if line.get_linestyle() == "--"] == [
        0.5,
        0.667,
    ]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0+1", "0..1+2"]
    assert wb.plot_coefficients(found.report).axes[0].get_xticklabels()[0].get_text() == LAYERS[0]
    with pytest.raises(ValueError, match="no learned coefficients"):
        wb.plot_coefficients(wb.merge_many(trained[:2], data=tiny_train, progress=False))
    with pytest.raises(TypeError, match="MergeResult"):
        wb.plot_coefficients({"0+1": {}})
