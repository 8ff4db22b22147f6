"""One vocabulary over the public signatures (``docs/vocabulary.md``): the models first,
every argument after them keyword-only; ``data`` what a function fits on and ``eval_data``
what it measures on; ``alpha``, ``points``, ``split``, ``combine`` and ``kind`` one meaning
each. The former spellings keep working for one release, with a FutureWarning."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

import workbench as wb

MODULES = (
    "workbench",
    "workbench.alignment",
    "workbench.merging",
    "workbench.analysis.diagnostics",
    "workbench.analysis.lmc",
    "workbench.analysis.planes",
    "workbench.analysis.sweeps",
    "workbench.analysis.comparison",
    "workbench.training",
    "workbench.evaluation",
    "workbench.splits",
    "workbench.featviz",
)
MODEL_NAMES = {"model", "models", "model_a", "model_b", "merged", "endpoints", "target", "pairs"}
# names that say nothing about their meaning, or say it in an older word
FORMER = {"bn_data", "train", "test", "test_data", "train_data", "gammas", "split_seed"}
# the only functions in which these words appear, each with the one meaning of the word
ONE_MEANING = {
    "alpha": {"interpolate", "repair", "load_interpolation_", "layer_study"},  # interpolation
    "points": {"plane_weights", "evaluate_points"},  # positions in weight space / its plane
    "split": {"load_dataset", "as_image_dataset"},  # the name of a data split
    "combine": {"ensemble"},  # how an ensemble combines its members' outputs
    "kind": {"methods", "register_method"},  # the kind of a registered method
}
# functions whose leading non-model arguments stay positional, and why
POSITIONAL = {
    "save_checkpoint": "the path, as in torch.save(obj, path)",
    "load_checkpoint": "the path comes first",
    "load_interpolation_": "two state dicts, then the coefficient, like torch.lerp",
}


def _public_functions() -> dict[str, object]:
    found = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attribute in getattr(module, "__all__", []):
            obj = getattr(module, attribute, None)
            if inspect.isfunction(obj) and obj.__module__.startswith("workbench"):
                found.setdefault(attribute, obj)
    return found


FUNCTIONS = _public_functions()


def test_the_inventory_is_the_public_api() -> None:
    assert {"lmc_curve", "merge_many", "evaluate", "compare_methods", "zipit"} <= set(FUNCTIONS)
    assert len(FUNCTIONS) > 60


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_arguments_after_the_models_are_keyword_only(name: str) -> None:
    parameters = list(inspect.signature(FUNCTIONS[name]).parameters.values())
    models = [i for i, p in enumerate(parameters) if p.name in MODEL_NAMES]
    if not models or name in POSITIONAL:
        return
    after = parameters[max(models) + 1 :]
    loose = [p.name for p in after if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert loose == [], f"{name}: {loose} come after the models and are not keyword-only"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_word_has_one_meaning(name: str) -> None:
    names = set(inspect.signature(FUNCTIONS[name]).parameters)
    assert names & FORMER == set(), f"{name} takes former names {names & FORMER}"
    assert not [n for n in names if n.startswith("learn_") and n != "learn_batch_size"]
    for word, allowed in ONE_MEANING.items():
        if word in names:
            assert name in allowed, f"{name} takes {word!r}, which means something else here"


def test_measured_data_is_eval_data() -> None:
    """Every function that reports loss or accuracy names what it measures on eval_data."""
    for name in ("evaluate", "per_part_accuracy", "lmc_curve", "lmc_curves", "pairwise_curves",
                 "loss_plane", "compare_methods", "sweep", "partial_alignment"):  # fmt: skip
        assert "eval_data" in inspect.signature(FUNCTIONS[name]).parameters, name


@pytest.fixture(scope="module")
def pair(tiny_train) -> list[torch.nn.Module]:
    with torch.random.fork_rng(devices=[]):
        models = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            models.append(wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False))
    return models


def test_former_calls_work_with_a_future_warning(pair, tiny_train) -> None:
    a, b = pair
    new = wb.evaluate(a, eval_data=tiny_train)
    with pytest.warns(FutureWarning, match=r"evaluate\(\): pass eval_data= by keyword"):
        assert wb.evaluate(a, tiny_train) == new
    with pytest.warns(FutureWarning, match=r"data= \(what it measures on\) is now eval_data="):
        assert wb.evaluate(a, data=tiny_train) == new
    curve = wb.lmc_curve(a, b, eval_data=tiny_train, alphas=3, cache=False, progress=False)
    with pytest.warns(FutureWarning, match="pass eval_data=, alphas= by keyword"):
        former = wb.lmc_curve(a, b, tiny_train, 3, cache=False, progress=False)
    assert former.loss.tolist() == curve.loss.tolist()
    with pytest.warns(FutureWarning, match="bn_data= is now data="):
        wb.lmc_curve(a, b, eval_data=tiny_train, alphas=3, bn_data=tiny_train, cache=False,
                     progress=False)  # fmt: skip
    with pytest.warns(FutureWarning, match="alpha= is now concentration="):
        parts = wb.partition(tiny_train, 2, "dirichlet", alpha=1.0)
    assert [len(p) for p in parts] == [
        len(p) for p in wb.partition(tiny_train, 2, "dirichlet", 1.0)
    ]
    with pytest.warns(FutureWarning, match="pass alpha= by keyword"):
        mid = wb.interpolate(a, b, 0.5)
    assert torch.equal(mid.state_dict()["features.conv1.weight"],
                       wb.interpolate(a, b, alpha=0.5).state_dict()["features.conv1.weight"])  # fmt: skip


def test_both_spellings_at_once_are_an_error(pair, tiny_train) -> None:
    a, b = pair
    with pytest.raises(TypeError, match=r"got bn_data= .the former name of data=. and data= too"):
        wb.lmc_curve(a, b, eval_data=tiny_train, data=tiny_train, bn_data=tiny_train)
    with pytest.raises(TypeError, match="got eval_data= by position and eval_data= too"):
        wb.evaluate(a, tiny_train, eval_data=tiny_train)
    with pytest.raises(TypeError, match="takes 1 positional arguments"):
        wb.evaluate(a, tiny_train, 10, None, "extra")


def test_the_warning_points_at_the_users_line_and_the_package_never_warns_itself(
    pair, tiny_train
) -> None:
    a, _ = pair
    with pytest.warns(FutureWarning) as caught:
        wb.evaluate(a, tiny_train)
    assert caught[0].filename == __file__  # not a line inside workbench
    inside = {"__name__": "workbench.somewhere", "wb": wb, "a": a, "data": tiny_train}
    with pytest.raises(TypeError, match=r"workbench.somewhere calls evaluate\(\) in a former"):
        exec("wb.evaluate(a, data)", inside)
