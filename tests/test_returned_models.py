"""Every model the workbench returns is in eval mode, whatever mode its inputs were in.

A model straight out of a training loop is in train mode; a merged model returned in that
mode would normalize with batch statistics when called, off by whole logits from what its
report's accuracy describes. The calls below give every public function that returns a
model (found from the return annotations, so that a new one cannot be missed) and every
registered method inputs in train mode.
"""

from __future__ import annotations

import copy
import importlib
import inspect

import pytest
import torch
from torch import nn

import workbench as wb
from workbench import alignment, merging
from workbench.alignment import registry

PACKAGES = ("workbench", "workbench.merging", "workbench.alignment", "workbench.zoo")
RETURNS_MODEL = ("Module", "Merged", "MergeResult", "Ensemble", "TrainingRun")
# Returned models that are not results: a fresh, untrained model follows PyTorch's
# convention (train mode, as torchvision's builders); resolve_layer returns a submodule of
# the model given; get_method a registry entry.
NOT_RESULTS = {"create_model", "resolve_layer", "get_method"}


def _public_model_functions() -> set[str]:
    found = set()
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            function = getattr(module, name)
            if not inspect.isfunction(function) or name.endswith("_") or name in NOT_RESULTS:
                continue  # a trailing underscore: works in place, keeps the mode it was given
            annotation = str(inspect.signature(function).return_annotation)
            if any(kind in annotation for kind in RETURNS_MODEL):
                found.add(name)
    return found


def _models_in(value) -> list[nn.Module]:
    if isinstance(value, nn.Module):
        return [value]
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in _models_in(v)]
    return _models_in(getattr(value, "model", None)) if hasattr(value, "model") else []


@pytest.fixture(scope="module")
def training(shipped_pair, tiny_train):
    """The shipped pair and a third model, copied and put in train mode."""
    models = [copy.deepcopy(m).train() for m in wb.load_quickstart_models((0, 1, 2))]
    spec = wb.permutation_spec(models[0], example_input=tiny_train.images[:2])
    return models, spec, tiny_train


def _calls(models, spec, data, tmp_path):
    a, b = models[:2]
    perm = wb.weight_matching(a, b, spec=spec)
    maps = {group: torch.eye(len(order))[order] for group, order in perm.items()}
    result = wb.match(a, b, method="weight", spec=spec)
    path = tmp_path / "model.safetensors"
    wb.save_checkpoint(a, path)
    quick = {"progress": False}
    return {
        "align": lambda: wb.align(a, b, method="weight", spec=spec),
        "apply_alignment": lambda: alignment.apply_alignment(b, result=result, model_a=a),
        "apply_linear_maps": lambda: wb.apply_linear_maps(b, spec=spec, maps=maps),
        "apply_permutation": lambda: wb.apply_permutation(b, spec=spec, perm=perm),
        "cca_align": lambda: wb.cca_align(a, b, data=data, spec=spec, **quick),
        "cca_merge": lambda: wb.cca_merge([a, b], data=data, gamma=1.0, progress=False),
        "map_model": lambda: alignment.map_model(b, spec=spec, maps=maps, model_a=a, data=data),
        "ot_fusion": lambda: wb.ot_fusion(a, b, data=data, spec=spec, **quick),
        "fold_batchnorm": lambda: alignment.fold_batchnorm(a, spec=spec),
        "merge_many": lambda: wb.merge_many([a, b], data=data, method="weight", **quick),
        "np_merge": lambda: wb.np_merge([a, b], data=data, steps=2, eval_every=1, **quick),
        "np_merge_models": lambda: merging.np_merge_models(
            [a, b], spec=spec, data=data, steps=2, eval_every=1, **quick
        ),
        "zipit": lambda: wb.zipit([a, b], data=data, within_weight=0.5, within_budget=0.0, **quick),
        "zipit_merge": lambda: wb.zipit_merge([a, b], spec=spec, data=data, **quick),
        "repair": lambda: wb.repair(wb.average([a, b]), [a, b], alpha=0.5, data=data, spec=spec),
        "reset_bn": lambda: wb.reset_bn(a, data=data),
        "average": lambda: wb.average([a, b]),
        "interpolate": lambda: wb.interpolate(a, b, alpha=0.3),
        "ensemble": lambda: wb.ensemble([a, b]),
        "train_model": lambda: wb.train_model(a, data=data, epochs=1, seed=0, **quick),
        "training_run": lambda: wb.training_run(a, data=data, epochs=1, seed=0, progress=False),
        "train_models": lambda: wb.train_models(
            "cnn", [0], data, 1, model_kwargs={"width": 0.25, "in_channels": 1}, progress=False
        ),
        "training_runs": lambda: wb.training_runs(
            "cnn", [0], data, 1, model_kwargs={"width": 0.25, "in_channels": 1}, progress=False
        ),
        "load_checkpoint": lambda: wb.load_checkpoint(path),
        "load_quickstart_models": lambda: wb.load_quickstart_models((0,)),
    }


def test_the_calls_cover_every_public_function_that_returns_a_model(training, tmp_path):
    models, spec, data = training
    assert _public_model_functions() == set(_calls(models, spec, data, tmp_path))


def test_every_public_function_returns_models_in_eval_mode(training, tmp_path):
    models, spec, data = training
    in_train_mode = []
    for name, call in _calls(models, spec, data, tmp_path).items():
        returned = _models_in(call())
        assert returned, f"{name} returned no model"
        if any(m.training for model in returned for m in model.modules()):
            in_train_mode.append(name)
    assert in_train_mode == []
    assert all(m.training for model in models for m in model.modules()), "inputs' mode changed"


@pytest.mark.parametrize("method", registry.methods())
def test_every_registered_method_merges_into_eval_mode(training, method):
    models, _, data = training
    options = {
        "ste": {"steps": 2},
        "np_merge": {"steps": 2, "eval_every": 1},
        "zipit": {"within_weight": 0.5, "within_budget": 0.0},
        "cca": {"gamma": 1.0},
    }.get(method, {})
    result = wb.merge_many(models[:3], data=data, method=method, progress=False, **options)
    assert not any(m.training for m in result.model.modules())
    # called as returned, the merged model gives the accuracy its report states
    images, labels = data.images, data.targets
    with torch.no_grad():
        accuracy = (result.model(images).argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(wb.evaluate(result.model, eval_data=data).accuracy, abs=1e-6)
