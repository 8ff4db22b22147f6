"""Purity: no public function of the workbench modifies its inputs in place.

The design promises that every public function returns new models and results and leaves
what it was given as it was (only the functions whose names end in ``_`` work in place,
and say so). Notebooks and dashboards rely on it: they pass the same models to one analysis
after another, and a curve computed on a model that an earlier call left in eval mode,
with a hook still attached or with BatchNorm statistics recomputed, would be silently
wrong. The session-scoped fixtures of ``conftest.py`` rely on it too.

Each case below calls one public function in its smallest configuration that still does
the real work (a few hundred images, three interpolation points, a 3x3 plane, four
optimization steps), on inputs built to expose a careless function: models whose modules
alternate between train and eval mode, with a gradient on every parameter and a frozen
one. Afterwards every input must be exactly as it was: every state-dict tensor
bit-identical (dtype and device too) and still the same tensor object, every module's mode
and plain attributes, every parameter's ``requires_grad`` and gradient, no hook left on any
module; every dataset's images and targets bit-identical; every permutation spec equal.

A guard test lists the public callables of the package and fails for any that is neither
checked here nor excluded below with a reason, so a new public function cannot skip the
check.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import workbench as wb
import workbench.analysis.comparison as comparison_module
import workbench.analysis.diagnostics as diagnostics
import workbench.analysis.lmc as lmc
import workbench.analysis.planes as planes
import workbench.analysis.sweeps as sweeps_module
from tests.conftest import state_copy
from workbench import alignment, featviz, graph, merging
from workbench.featviz import study_plots

# ---------------------------------------------------------------------------------------
# Snapshots of inputs

# The hook registries the promise names explicitly: they must be empty after any call.
_REQUIRED_EMPTY = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
# What nn.Module keeps in its own slots; checked through the state dict and hooks instead.
_MODULE_SLOTS = ("_parameters", "_buffers", "_modules")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, device, shape and bytes (so -0.0 differs from 0.0 and NaN equals NaN)."""
    if a.dtype != b.dtype or a.device != b.device or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _describe(tensor: torch.Tensor | None) -> str:
    if tensor is None:
        return "None"
    return f"{tensor.dtype} {tuple(tensor.shape)} on {tensor.device}"


@dataclass(frozen=True)
class ModelSnapshot:
    """Everything of a model that a function could change in place."""

    state: dict[str, torch.Tensor]  # copies of the state dict
    tensors: dict[str, torch.Tensor]  # the parameter and buffer objects themselves
    training: dict[str, bool]
    requires_grad: dict[str, bool]
    grads: dict[str, torch.Tensor | None]
    attributes: dict[str, dict[str, Any]]  # plain module attributes (eps, momentum, ...)
    hooks: dict[str, dict[str, list]]  # hook registry -> hook ids, per module


@dataclass(frozen=True)
class DatasetSnapshot:
    images: torch.Tensor
    targets: torch.Tensor
    image_object: torch.Tensor
    target_object: torch.Tensor
    attributes: dict[str, Any]


@dataclass(frozen=True)
class SpecSnapshot:
    data: dict[str, Any]


Snapshot = ModelSnapshot | DatasetSnapshot | SpecSnapshot
Checked = nn.Module | wb.TensorImageDataset | wb.PermutationSpec


def _hook_registries(module: nn.Module) -> dict[str, list]:
    return {k: list(v) for k, v in vars(module).items() if "hooks" in k and isinstance(v, dict)}


def _plain_attributes(module: nn.Module) -> dict[str, Any]:
    """The module's own attributes (``eps``, ``momentum``, ``padding``, metadata, ...)."""
    return {
        k: v
        for k, v in vars(module).items()
        if k not in _MODULE_SLOTS and k != "training" and "hook" not in k
    }


def snapshot(obj: Checked) -> Snapshot:
    """A copy of everything of ``obj`` (a model, a TensorImageDataset or a permutation
    spec) that :func:`assert_unchanged` compares."""
    if isinstance(obj, nn.Module):
        parameters = dict(obj.named_parameters())
        return ModelSnapshot(
            state=state_copy(obj),
            tensors={**parameters, **dict(obj.named_buffers())},
            training={name: m.training for name, m in obj.named_modules()},
            requires_grad={name: p.requires_grad for name, p in parameters.items()},
            grads={
                name: None if p.grad is None else p.grad.detach().clone()
                for name, p in parameters.items()
            },
            attributes={
                name: copy.deepcopy(_plain_attributes(m)) for name, m in obj.named_modules()
            },
            hooks={name: _hook_registries(m) for name, m in obj.named_modules()},
        )
    if isinstance(obj, wb.TensorImageDataset):
        return DatasetSnapshot(
            obj.images.clone(),
            obj.targets.clone(),
            obj.images,
            obj.targets,
            copy.deepcopy({k: v for k, v in vars(obj).items() if k not in ("images", "targets")}),
        )
    if isinstance(obj, wb.PermutationSpec):
        return SpecSnapshot(copy.deepcopy(obj.to_dict()))
    raise TypeError(f"Cannot snapshot a {type(obj).__name__}.")


def _model_changes(before: ModelSnapshot, model: nn.Module) -> list[str]:
    changes = []
    state = model.state_dict()
    if list(state) != list(before.state):
        changes.append(f"state-dict keys {list(before.state)} -> {list(state)}")
    for key, old in before.state.items():
        new = state.get(key)
        if new is not None and not _same_bits(old, new):
            changes.append(f"{key}: values or type changed ({_describe(old)} -> {_describe(new)})")
    current = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    changes += [
        f"{name}: replaced by another tensor object"
        for name, tensor in before.tensors.items()
        if current.get(name) is not tensor
    ]
    modules = dict(model.named_modules())
    if list(modules) != list(before.training):
        changes.append(f"submodules {list(before.training)} -> {list(modules)}")
    for name, module in modules.items():
        label = name or "<root>"
        if before.training.get(name, module.training) != module.training:
            changes.append(f"{label}.training: {before.training[name]} -> {module.training}")
        changes += _differences(before.attributes.get(name, {}), _plain_attributes(module), label)
        hooks = _hook_registries(module)
        left = {k: v for k, v in hooks.items() if k in _REQUIRED_EMPTY and v}
        if left:
            changes.append(f"{label}: hooks left behind {left}")
        elif hooks != before.hooks.get(name, hooks):
            changes.append(f"{label}: hooks {before.hooks[name]} -> {hooks}")
    for name, parameter in model.named_parameters():
        if before.requires_grad.get(name, parameter.requires_grad) != parameter.requires_grad:
            changes.append(
                f"{name}.requires_grad: {before.requires_grad[name]} -> {parameter.requires_grad}"
            )
        old = before.grads.get(name)
        new = parameter.grad
        if (old is None) != (new is None) or (old is not None and not _same_bits(old, new)):
            changes.append(f"{name}.grad changed ({_describe(old)} -> {_describe(new)})")
    return changes


def _dataset_changes(before: DatasetSnapshot, data: wb.TensorImageDataset) -> list[str]:
    changes = []
    for name, old, obj in (
        ("images", before.images, before.image_object),
        ("targets", before.targets, before.target_object),
    ):
        new = getattr(data, name)
        if new is not obj:
            changes.append(f"{name}: replaced by another tensor object")
        if not _same_bits(old, new):
            changes.append(f"{name}: values or type changed ({_describe(old)} -> {_describe(new)})")
    attributes = {k: v for k, v in vars(data).items() if k not in ("images", "targets")}
    return changes + _differences(before.attributes, attributes, "attributes")


def assert_unchanged(before: Snapshot, obj: Checked, name: str = "input") -> None:
    """Fail, listing every difference, unless ``obj`` is exactly as :func:`snapshot` saw it."""
    if isinstance(before, ModelSnapshot):
        changes = _model_changes(before, obj)
    elif isinstance(before, DatasetSnapshot):
        changes = _dataset_changes(before, obj)
    else:
        changes = [] if obj.to_dict() == before.data else ["the spec's content changed"]
    assert not changes, f"{name} was modified in place:\n  " + "\n  ".join(changes)


def _freeze(obj: object) -> object:
    """The value of an argument that is not a model or dataset (a permutation, maps, an
    alignment result, a list of weights): tensors and arrays cloned, containers and
    dataclasses copied level by level, anything else (models, datasets) kept as is."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, Mapping):
        return {key: _freeze(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_freeze(value) for value in obj]
    if isinstance(obj, set | frozenset):
        return set(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _freeze(getattr(obj, f.name)) for f in fields(obj)}
    return obj


def _differences(old: object, new: object, where: str) -> list[str]:
    """Where ``new`` differs from ``old`` (a value from :func:`_freeze`)."""
    if isinstance(new, torch.Tensor):
        same = isinstance(old, torch.Tensor) and _same_bits(old, new)
        return [] if same else [f"{where}: {_describe(old)} -> {_describe(new)}, or its values"]
    if isinstance(new, np.ndarray):
        same = isinstance(old, np.ndarray) and old.dtype == new.dtype
        return [] if same and np.array_equal(old, new, equal_nan=True) else [f"{where} changed"]
    if dataclasses.is_dataclass(new) and not isinstance(new, type):
        new = {f.name: getattr(new, f.name) for f in fields(new)}
        if dataclasses.is_dataclass(old) and not isinstance(old, type):
            old = {f.name: getattr(old, f.name) for f in fields(old)}
    if isinstance(new, Mapping):
        if not isinstance(old, dict):
            return [f"{where}: {old!r} -> {dict(new)!r}"]
        if list(old) != list(new):
            return [f"{where}: keys {list(old)} -> {list(new)}"]
        return [d for key in new for d in _differences(old[key], new[key], f"{where}[{key!r}]")]
    if isinstance(new, list | tuple):
        if not isinstance(old, list | tuple) or len(old) != len(new):
            return [f"{where}: {old!r} -> {new!r}"]
        return [
            d for i, item in enumerate(new) for d in _differences(old[i], item, f"{where}[{i}]")
        ]
    return [] if old is new or old == new else [f"{where}: {old!r} -> {new!r}"]


@contextlib.contextmanager
def kept(**arguments: object) -> Iterator[None]:
    """Fail unless the named ``arguments`` (permutations, maps, results, lists, dicts) hold
    the same values after the block as before it, bit for bit."""
    frozen = {name: _freeze(obj) for name, obj in arguments.items()}
    yield
    changes = [d for name, obj in arguments.items() for d in _differences(frozen[name], obj, name)]
    assert not changes, "arguments modified in place:\n  " + "\n  ".join(changes)


# ---------------------------------------------------------------------------------------
# Inputs


def _prepare(model: nn.Module, seed: int) -> nn.Module:
    """Give ``model`` state that a careless function disturbs: a gradient on every
    parameter (as a backward pass leaves them), a frozen parameter, and leaf modules
    alternating between train and eval mode (the root in train mode), so that a function
    that calls ``model.eval()`` or ``model.train()`` and restores only the root's flag, or
    none, is caught."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.grad = torch.randn(parameter.shape, generator=generator)
    next(iter(model.parameters())).requires_grad_(False)
    model.train()
    leaves = [m for m in model.modules() if not any(m.children())]
    for index, module in enumerate(leaves):
        module.train(index % 2 == 0)
    return model


def _tiny(seed: int, batch_norm: bool = True) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=batch_norm)
    return _prepare(model, seed)


@dataclass
class Inputs:
    """What the cases pass to the functions they check, built afresh for every case.

    ``a``, ``b``, ``c``: quarter-width CNNs with BatchNorm (different seeds); ``plain_a``,
    ``plain_b``: without BatchNorm; ``trained_a``, ``trained_b``: copies of the shipped
    quickstart models (with their checkpoint metadata); ``train`` (200 images) and
    ``test`` (100); the permutation specs of both architectures.
    """

    a: nn.Module
    b: nn.Module
    c: nn.Module
    plain_a: nn.Module
    plain_b: nn.Module
    trained_a: nn.Module
    trained_b: nn.Module
    train: wb.TensorImageDataset
    test: wb.TensorImageDataset
    spec: wb.PermutationSpec
    plain_spec: wb.PermutationSpec
    tmp_path: Path

    def checked(self) -> dict[str, Checked]:
        """Every input whose state is compared before and after a case."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tmp_path"}


@pytest.fixture(scope="module")
def specs(mnist_train: wb.TensorImageDataset) -> dict[str, wb.PermutationSpec]:
    example = mnist_train.images[:2]
    return {
        "bn": wb.permutation_spec(_tiny(0), example_input=example),
        "plain": wb.permutation_spec(_tiny(0, batch_norm=False), example_input=example),
    }


@pytest.fixture
def inputs(
    tiny_model: nn.Module,
    shipped_pair: tuple[nn.Module, nn.Module],
    mnist_train: wb.TensorImageDataset,
    mnist_test: wb.TensorImageDataset,
    specs: dict[str, wb.PermutationSpec],
    tmp_path: Path,
) -> Inputs:
    return Inputs(
        a=_prepare(tiny_model, 0),
        b=_tiny(1),
        c=_tiny(2),
        plain_a=_tiny(3, batch_norm=False),
        plain_b=_tiny(4, batch_norm=False),
        trained_a=_prepare(copy.deepcopy(shipped_pair[0]), 5),
        trained_b=_prepare(copy.deepcopy(shipped_pair[1]), 6),
        train=mnist_train.subset(torch.arange(200), "train"),
        test=mnist_test.subset(torch.arange(100), "test"),
        spec=copy.deepcopy(specs["bn"]),
        plain_spec=copy.deepcopy(specs["plain"]),
        tmp_path=tmp_path,
    )


# ---------------------------------------------------------------------------------------
# Cases: one call of a public function (or a short chain) each

Run = Callable[[Inputs], object]


@dataclass(frozen=True)
class Case:
    name: str
    functions: tuple[str, ...]  # the public functions it calls (by their exported name)
    run: Run


CASES: dict[str, Case] = {}


def case(*functions: str, name: str | None = None) -> Callable[[Run], Run]:
    """Register the decorated function as a case that calls the public ``functions``."""

    def register(run: Run) -> Run:
        key = name or run.__name__
        if key in CASES:
            raise ValueError(f"Two cases are named {key!r}.")
        CASES[key] = Case(key, functions, run)
        return run

    return register


def _quiet(method: str) -> dict[str, bool]:
    """``progress=False`` where the method takes it."""
    return {"progress": False} if alignment.get_method(method).accepts("progress") else {}


# -- alignment


@case("permutation_spec", "example_input_for", "resolve_spec")
def graph_spec(inp: Inputs) -> None:
    graph.permutation_spec(
        inp.a, example_input=inp.train.images[:2]
    )  # a view of the dataset's images
    graph.example_input_for(inp.b, inp.train)
    graph.resolve_spec(inp.c, None, data=inp.train)
    graph.resolve_spec(inp.c, inp.spec)


@case("bn_modes", "check_bn")
def batchnorm_handlings(inp: Inputs) -> None:
    wb.bn_modes(inp.a)
    wb.merging.check_bn("reset", inp.b)


@case("weight_matching")
def weight_matching(inp: Inputs) -> None:
    wb.weight_matching(inp.a, inp.b)
    init = wb.random_permutation(inp.spec, seed=2)
    with kept(init=init):
        wb.weight_matching(inp.a, inp.b, spec=inp.spec, init=init)


@case("c2m3_matching", "match_to_universe")
def c2m3(inp: Inputs) -> None:
    wb.c2m3_matching(inp.a, inp.b, max_iter=3)
    wb.match_to_universe([inp.a, inp.b], spec=inp.spec, max_iter=3, progress=False)


@case("activation_matching")
def activation_matching(inp: Inputs) -> None:
    wb.activation_matching(inp.a, inp.b, data=inp.train, progress=False)


@case("ste_matching")
def ste_matching(inp: Inputs) -> None:
    # a step large enough to move the projection, on batches smaller than the data
    wb.ste_matching(inp.a, inp.b, data=inp.train, steps=3, lr=0.05, batch_size=64, progress=False)


# Per method, options that keep a case small where its defaults do a long run.
FAST_OPTIONS: dict[str, dict[str, Any]] = {"ste": {"steps": 2}}


def _match(inp: Inputs, method: str) -> None:
    wb.match(
        inp.a,
        inp.b,
        method=method,
        data=inp.train,
        **_quiet(method),
        **FAST_OPTIONS.get(method, {}),
    )


def _align(inp: Inputs, method: str) -> None:
    wb.align(
        inp.a,
        inp.b,
        method=method,
        data=inp.train,
        **_quiet(method),
        **FAST_OPTIONS.get(method, {}),
    )


for _method in wb.alignment.pairwise_methods():  # merges (kind "merge") cannot align
    case("match", name=f"match-{_method}")(functools.partial(_match, method=_method))
    case("align", name=f"align-{_method}")(functools.partial(_align, method=_method))


@case("align", name="align-trained-weight")
def align_trained(inp: Inputs) -> None:
    wb.align(inp.trained_a, inp.trained_b, method="weight")


@case("match", "apply_alignment", name="apply_alignment-permutation")
def apply_alignment_permutation(inp: Inputs) -> None:
    result = wb.match(inp.a, inp.b, method="weight", spec=inp.spec)
    with kept(result=result):
        alignment.apply_alignment(inp.b, result=result)


@case("match", "apply_alignment", name="apply_alignment-linear")
def apply_alignment_linear(inp: Inputs) -> None:
    result = wb.match(inp.a, inp.b, method="cca", data=inp.train, spec=inp.spec, progress=False)
    with kept(result=result):
        alignment.apply_alignment(inp.b, result=result, data=inp.train, model_a=inp.a)


@case("apply_permutation")
def apply_permutation(inp: Inputs) -> None:
    perm = wb.random_permutation(inp.spec, seed=1)
    with kept(perm=perm):
        wb.apply_permutation(inp.b, spec=inp.spec, perm=perm)


@case("match", "apply_linear_maps")
def apply_linear_maps(inp: Inputs) -> None:
    # without BatchNorm every group can take CCA's general matrices
    result = wb.match(
        inp.plain_a, inp.plain_b, method="cca", data=inp.train, spec=inp.plain_spec, progress=False
    )
    assert result.kind == "linear"
    with kept(maps=result.transform):
        wb.apply_linear_maps(inp.plain_b, spec=inp.plain_spec, maps=result.transform)


@case("cca_align")
def cca_align(inp: Inputs) -> None:
    wb.cca_align(inp.a, inp.b, data=inp.train, progress=False)


@case("ot_maps", "ot_fusion")
def ot_fusion(inp: Inputs) -> None:
    # entropic, then exact into a model of another width (a wider B's own spec is traced)
    wb.ot_maps(inp.a, inp.b, data=inp.train, spec=inp.spec, epsilon=0.03, progress=False)
    wide = _prepare(wb.create_model("cnn", width=0.5, in_channels=1), 7)
    before = snapshot(wide)
    wb.ot_fusion(inp.a, wide, data=inp.train, progress=False)
    assert_unchanged(before, wide, "wide")


@case("collect_statistics")
def collect_statistics(inp: Inputs) -> None:
    alignment.collect_statistics([inp.a, inp.b], data=inp.train, spec=inp.spec, progress=False)
    alignment.collect_statistics(
        [inp.a, inp.b], data=inp.train, spec=inp.spec, within=False, progress=False
    )


@case("fold_batchnorm", "general_groups", "map_model")
def folding(inp: Inputs) -> None:
    alignment.fold_batchnorm(inp.b, spec=inp.spec)
    general = alignment.general_groups(inp.b, spec=inp.spec)
    generator = torch.Generator().manual_seed(0)
    maps = {
        name: torch.eye(group.size, dtype=torch.float64)
        + (0.1 * torch.randn(group.size, group.size, generator=generator, dtype=torch.float64))
        for name, group in inp.spec.groups.items()
        if name in general
    }
    with kept(maps=maps):
        alignment.map_model(inp.b, spec=inp.spec, maps=maps, model_a=inp.a, data=inp.train)


# -- merging


@case("interpolate")
def interpolate(inp: Inputs) -> None:
    wb.interpolate(inp.a, inp.b, alpha=0.3)


@case("average")
def average(inp: Inputs) -> None:
    models, weights = [inp.a, inp.b, inp.c], [0.5, 0.3, 0.2]
    with kept(models=models, weights=weights):
        wb.average(models, weights=weights)


@case("reset_bn")
def reset_bn(inp: Inputs) -> None:
    wb.reset_bn(inp.a, data=inp.train)


@case("repair", name="repair-batchnorm")
def repair_batchnorm(inp: Inputs) -> None:
    endpoints, weights = [inp.b, inp.c], [0.4, 0.6]
    with kept(endpoints=endpoints, weights=weights):
        wb.repair(inp.a, endpoints, alpha=weights, data=inp.train, spec=inp.spec)


@case("repair", name="repair-plain")
def repair_plain(inp: Inputs) -> None:
    wb.repair(inp.plain_a, [inp.plain_a, inp.plain_b], alpha=0.5, data=inp.train)


# Per method, settings that reach different paths (BN handling, reference choice, search).
MERGE_OPTIONS: dict[str, dict[str, Any]] = {
    "none": {"bn": "repair"},
    "weight": {"bn": "reset", "reference": "best"},
    "activation": {"bn": None},
    "cca": {"bn": "reset", "gamma": (0.1, 1.0)},
    "ot": {"bn": "reset", "epsilon": (0.0, 0.03)},
    "ste": {"bn": "reset", "batch_size": 64, "steps": 2},
    "np_merge": {"steps": 2, "eval_every": 1, "align_options": {"seed": 1}},
    "zipit": {
        "bn": "reset",
        "within_weight": 1.0,
        "within_budget": (0.0, 0.5),
        "stop": "features.conv2",
    },
}


def _merge_many(inp: Inputs, method: str) -> None:
    models, options = [inp.a, inp.b, inp.c], MERGE_OPTIONS.get(method, {})
    with kept(models=models, options=options):
        wb.merge_many(models, data=inp.train, method=method, progress=False, **options)


for _method in wb.methods():
    case("merge_many", name=f"merge_many-{_method}")(functools.partial(_merge_many, method=_method))


@case("cca_merge")
def cca_merge(inp: Inputs) -> None:
    wb.cca_merge([inp.a, inp.b], data=inp.train, gamma=0.1, progress=False)


@case("np_merge")
def np_merge(inp: Inputs) -> None:
    models, learning = [inp.a, inp.b, inp.c], {"steps": 4, "eval_every": 2, "progress": False}
    with kept(models=models, learning=learning):
        wb.np_merge(models, data=inp.train, **learning)
        wb.np_merge(
            models[:2], data=inp.train, align="activation", bn=None, scheme="joint", **learning
        )


@case("np_merge_models")
def np_merge_models(inp: Inputs) -> None:
    models = [inp.a, inp.b]
    spec = wb.permutation_spec(inp.a, example_input=inp.train.images[:2])
    with kept(models=models):
        wb.merging.np_merge_models(models, spec=spec, data=inp.train, steps=2, progress=False)


@case("zipit")
def zipit(inp: Inputs) -> None:
    models = [inp.a, inp.b, inp.c]
    with kept(models=models):
        wb.zipit(
            models, data=inp.train, within_weight=(0.5, 1.0), within_budget=0.5, progress=False
        )


@case("zipit_merge")
def zipit_merge(inp: Inputs) -> None:
    models = [inp.a, inp.b]
    with kept(models=models):
        wb.zipit_merge(
            models,
            spec=inp.spec,
            data=inp.train,
            within_budget=1.0,
            stop="features.conv3",
            progress=False,
        )


@case("merge_many", name="merge_many-learned")
def merge_many_learned(inp: Inputs) -> None:
    models = [inp.a, inp.b]
    with kept(models=models), pytest.warns(FutureWarning, match="merge='learned'"):
        wb.merge_many(
            models, data=inp.train, method="weight", merge="learned", steps=2, progress=False
        )


@case("ensemble")
def ensemble(inp: Inputs) -> None:
    # the ensemble holds the models themselves: using it must leave them as they were
    models = [inp.a, inp.b, inp.plain_a]
    with kept(models=models):
        for combine in ("logits", "probabilities"):
            wb.evaluate(wb.ensemble(models, combine=combine), eval_data=inp.test)


# -- analysis


@case("compare_methods")
def compare_methods(inp: Inputs) -> None:
    models, methods, sizes = [inp.a, inp.b, inp.c], ["none", "weight"], [3]
    with kept(models=models, methods=methods, sizes=sizes):
        wb.compare_methods(
            models,
            data=inp.train,
            eval_data=inp.test,
            methods=methods,
            sizes=sizes,
            cache=False,
            progress=False,
        )


def _lmc_curve(inp: Inputs, bn: str | None) -> None:
    # original_b=c computes another function than b: B's own metrics are measured too
    wb.lmc_curve(
        inp.a,
        inp.b,
        eval_data=inp.train,
        alphas=3,
        bn=bn,
        original_b=inp.c,
        cache=False,
        progress=False,
    )


for _bn in (None, "reset", "repair"):
    case("lmc_curve", name=f"lmc_curve-{_bn}")(functools.partial(_lmc_curve, bn=_bn))


@case("lmc_curves")
def lmc_curves(inp: Inputs) -> None:
    splits, alphas = {"train": inp.train, "test": inp.test}, [0.0, 0.5, 1.0]
    with kept(splits=splits, alphas=alphas):
        wb.lmc_curves(
            inp.a,
            inp.b,
            eval_data=splits,
            alphas=alphas,
            bn="reset",
            data=inp.train,
            cache=False,
            progress=False,
        )


@case("pairwise_curves")
def pairwise_curves(inp: Inputs) -> None:
    models, splits = [inp.a, inp.b], {"test": inp.test}
    with kept(models=models, splits=splits):
        wb.pairwise_curves(
            models,
            eval_data=splits,
            alphas=3,
            bn="repair",
            method="activation",
            data=inp.train,
            cache=False,
            progress=False,
        )


@case("loss_plane")
def loss_plane(inp: Inputs) -> None:
    wb.loss_plane(
        [inp.a, inp.b, inp.c],
        eval_data=inp.train,
        resolution=3,
        bn="reset",
        method="weight",
        cache=False,
        progress=False,
    )


@case("loss_planes", "plane_basis")
def loss_planes(inp: Inputs) -> None:
    planes.plane_basis([inp.a, inp.b, inp.c])
    planes.loss_planes(
        [inp.a, inp.b, inp.c],
        eval_data={"train": inp.train, "test": inp.test},
        resolution=2,
        bn=None,
        cache=False,
        progress=False,
    )


@case("matched_correlations")
def matched_correlations(inp: Inputs) -> None:
    diagnostics.matched_correlations(inp.a, inp.b, data=inp.train, cache=False, progress=False)


@case("partial_alignment")
def partial_alignment(inp: Inputs) -> None:
    # one curve per number of aligned groups; lmc_curves' cases cover the BN corrections
    diagnostics.partial_alignment(
        inp.a,
        inp.b,
        data=inp.train,
        eval_data=inp.test,
        bn=None,
        alphas=3,
        cache=False,
        progress=False,
    )


@case("sweep")
def sweep(inp: Inputs) -> None:
    wb.sweep(
        "width",
        [0.25],
        data=inp.train,
        eval_data=inp.test,
        epochs=1,
        methods=("weight",),
        bn=None,
        alphas=3,
        cache=False,
        progress=False,
    )


@case("evaluate")
def evaluate(inp: Inputs) -> None:
    wb.evaluate(inp.a, eval_data=inp.test)


# -- training, checkpoints, data


@case("train_model")
def train_model(inp: Inputs) -> None:
    augment = wb.random_translate(2)
    augment(inp.train.images[:8], torch.Generator().manual_seed(0))  # a view of the dataset
    wb.train_model(inp.a, data=inp.train, epochs=1, seed=0, augment=augment, progress=False)


@case("training_run")
def training_run(inp: Inputs) -> None:
    wb.training_run(inp.a, data=inp.train, epochs=1, seed=0, eval_data=inp.test, progress=False)


_TINY_CNN = {"width": 0.25, "in_channels": 1}


@case("train_models")
def train_models(inp: Inputs) -> None:
    model_kwargs = dict(_TINY_CNN)
    with kept(model_kwargs=model_kwargs):
        wb.train_models("cnn", [0], inp.train, 1, model_kwargs=model_kwargs, progress=False)


@case("train_models", name="train_models-split")
def train_models_split(inp: Inputs) -> None:
    seeds = [0, 1]
    with kept(seeds=seeds):
        wb.train_models(
            "cnn",
            seeds,
            inp.train,
            1,
            model_kwargs=_TINY_CNN,
            partition="dirichlet",
            progress=False,
        )


@case("train_population")
def train_population(inp: Inputs) -> None:
    options = {"shuffle_probability": 0.5}
    with kept(model_kwargs=_TINY_CNN, options=options):
        wb.train_population("cnn", 2, data=inp.train, method="wash", epochs=1,
                            model_kwargs=_TINY_CNN, progress=False, **options)  # fmt: skip


@case("train_populations")
def train_populations(inp: Inputs) -> None:
    seeds = [0]
    with kept(seeds=seeds):
        wb.train_populations("cnn", 2, seeds=seeds, data=inp.train, method="papa", epochs=1,
                             model_kwargs=_TINY_CNN, progress=False)  # fmt: skip


@case("spawn_sweep")
def spawn_sweep(inp: Inputs) -> None:
    steps = [0, 2]
    with kept(steps=steps):
        wb.spawn_sweep("cnn", steps, data=inp.train, eval_data=inp.test, epochs=1,
                       model_kwargs=_TINY_CNN, alphas=3, cache=False, progress=False)  # fmt: skip


@case("training_runs")
def training_runs(inp: Inputs) -> None:
    wb.training_runs(
        "cnn", [0], inp.train, 1, model_kwargs=_TINY_CNN, eval_data=inp.test, progress=False
    )


@case("save_checkpoint", "load_checkpoint")
def checkpoints(inp: Inputs) -> None:
    path = wb.save_checkpoint(inp.a, inp.tmp_path / "a.safetensors", seed=0)
    wb.load_checkpoint(path, model=inp.b)  # b is the template: copied, not filled


@case("checkpoint_metadata", "fingerprint")
def metadata(inp: Inputs) -> None:
    found = wb.checkpoint_metadata(inp.trained_a)
    assert found, "the shipped model carries its checkpoint's metadata"
    found.clear()  # a copy: clearing it must not touch the model's own
    wb.fingerprint(inp.trained_a)


@case("train_val_split")
def train_val_split(inp: Inputs) -> None:
    wb.train_val_split(inp.train, 0.2)


@case("as_image_dataset")
def as_image_dataset(inp: Inputs) -> None:
    wb.as_image_dataset(inp.train)
    wb.as_image_dataset(inp.test, split="val")  # shares the tensors: must not touch them
    wb.as_image_dataset(torch.utils.data.Subset(inp.train, range(20)), progress=False)


@case("partition")
def partition(inp: Inputs) -> None:
    for how in ("disjoint", "dirichlet"):
        wb.partition(inp.train, 3, how, concentration=0.5, seed=0)


@case("per_part_accuracy")
def per_part_accuracy(inp: Inputs) -> None:
    parts = wb.partition(inp.train, 2, "disjoint")
    classes, weights = [0, 1, 2], {3: 1.0, 4: 2.0}
    with kept(classes=classes, weights=weights):
        wb.per_part_accuracy(inp.a, eval_data=inp.test, parts=[*parts, classes, weights, inp.train])


# -- feature visualization

_LAYER = "features.conv2"


@case("render_channels", "render_quality", "resolve_layer")
def render_channels(inp: Inputs) -> None:
    featviz.resolve_layer(inp.trained_a, layer=_LAYER)
    channels = [0, 3]
    with kept(channels=channels):
        images = featviz.render_channels(
            inp.trained_a, layer=_LAYER, channels=channels, steps=4, cache=False, progress=False
        )
    with kept(channels=channels, images=images):
        featviz.render_quality(
            inp.trained_a, layer=_LAYER, channels=channels, images=images, data=inp.train
        )


@case("steps_tradeoff")
def steps_tradeoff(inp: Inputs) -> None:
    featviz.steps_tradeoff(
        inp.trained_a, layer=_LAYER, data=inp.train, channels=[1, 2], steps=(2, 4), progress=False
    )


@case("top_exemplars")
def top_exemplars(inp: Inputs) -> None:
    featviz.top_exemplars(
        inp.trained_a,
        layer=_LAYER,
        data=inp.train,
        channels=[0, 1],
        k=3,
        cache=False,
        progress=False,
    )


@case("matched_units")
def matched_units(inp: Inputs) -> None:
    featviz.matched_units(inp.a, inp.b, layer=_LAYER, data=inp.train, method="activation")


@case("compare_layer", "render_layer", "layer_exemplars", "plot_unit_comparison")
def compare_layer(inp: Inputs) -> None:
    # the comparison holds model A itself: rendering it must leave A as it was
    found = featviz.compare_layer(inp.a, inp.b, layer=_LAYER, data=inp.train)
    units = [0, 1]
    with kept(comparison=found, units=units):
        images = featviz.render_layer(found, units, steps=4, cache=False, progress=False)
        exemplars = featviz.layer_exemplars(found, inp.train, units, 2, cache=False, progress=False)
    with kept(comparison=found, images=images, exemplars=exemplars):
        featviz.plot_unit_comparison(found, 1, images, exemplars, units)


@case("observation_point", "observable_layers", "unit_objective")
def observation_point(inp: Inputs) -> None:
    for point in featviz.POINTS:
        featviz.observation_point(inp.trained_a, layer=_LAYER, point=point)
    layers = [_LAYER]
    with kept(layers=layers):
        featviz.observable_layers(inp.trained_a, layers=layers, point="relu")
    images = torch.rand(2, 28, 28, 1)
    with kept(images=images):
        featviz.unit_objective(
            inp.trained_a, layer=_LAYER, images=images, channels=[0, 1], point="relu"
        )


_STUDY = {"render": True, "steps": 2, "units": 2, "cache": False, "progress": False}


@case("unit_study", "layer_study", "path_study")
def unit_study(inp: Inputs) -> None:
    featviz.unit_study(inp.a, inp.b, layer=_LAYER, data=inp.train, eval_data=inp.test, **_STUDY)
    featviz.path_study(inp.a, inp.b, layer=_LAYER, data=inp.train, alphas=(0.0, 1.0), **_STUDY)
    featviz.layer_study(inp.a, inp.b, data=inp.train, **{**_STUDY, "render": False})


@case("study_many", "pairs_study")
def study_many(inp: Inputs) -> None:
    featviz.study_many([inp.a, inp.b, inp.c], layers=[_LAYER], data=inp.train, **_STUDY)
    settings = {**_STUDY, "render": False}
    featviz.pairs_study(
        [(inp.a, inp.b), (inp.b, inp.c)], layers=[_LAYER], data=inp.train, **settings
    )


# ---------------------------------------------------------------------------------------
# The purity test

# Where public functions live: the package and the sub-packages that export functions
# taking models or data.
NAMESPACES: tuple[ModuleType, ...] = (
    wb,
    alignment,
    merging,
    graph,
    featviz,
    lmc,
    planes,
    diagnostics,
    comparison_module,
    sweeps_module,
)


def _counting(function: Callable, name: str, calls: Counter[str]) -> Callable:
    @functools.wraps(function)
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return function(*args, **kwargs)

    return counted


def _count_calls(monkeypatch: pytest.MonkeyPatch, names: Iterable[str]) -> Counter[str]:
    """Count the calls of each public function ``name`` made through any namespace that
    exports it (the lazy attributes of ``workbench`` itself are reached via featviz)."""
    calls: Counter[str] = Counter()
    for name in names:
        for module in NAMESPACES:
            if name in module.__all__ and name in vars(module):
                monkeypatch.setattr(module, name, _counting(vars(module)[name], name, calls))
    return calls


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_inputs_are_unchanged(case: Case, inputs: Inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_calls(monkeypatch, case.functions)
    checked = inputs.checked()
    before = {name: snapshot(obj) for name, obj in checked.items()}
    case.run(inputs)
    not_called = [name for name in case.functions if calls[name] == 0]
    assert not not_called, f"case {case.name} never calls {not_called}"
    for name, obj in checked.items():
        assert_unchanged(before[name], obj, name)


# ---------------------------------------------------------------------------------------
# The helpers detect each kind of change


def _bump_weight(inp: Inputs) -> None:
    weight = inp.a.features.conv2.weight
    with torch.no_grad():
        weight[0, 0, 0, 0] = torch.nextafter(weight[0, 0, 0, 0], torch.tensor(1.0))


def _negate_zero(inp: Inputs) -> None:
    inp.a.features.bn1.bias.data.zero_()
    inp.a.features.bn1.bias.data[0] = -0.0


def _bump_image(inp: Inputs) -> None:
    inp.train.images[0, 0, 0, 0] += 1


MUTATIONS: dict[str, tuple[Callable[[Inputs], object], str]] = {
    "one ulp of one weight": (_bump_weight, r"features\.conv2\.weight: values"),
    "negative zero": (_negate_zero, r"features\.bn1\.bias: values"),
    "buffer dtype": (
        lambda inp: setattr(
            inp.a.features.bn1, "running_var", inp.a.features.bn1.running_var.double()
        ),
        r"running_var: values or type changed \(torch.float32 .* -> torch.float64",
    ),
    "parameter replaced": (
        lambda inp: setattr(
            inp.a.classifier.fc1,
            "weight",
            nn.Parameter(inp.a.classifier.fc1.weight.detach().clone()),
        ),
        r"classifier\.fc1\.weight: replaced",
    ),
    "left in eval mode": (lambda inp: inp.a.eval(), r"<root>\.training: True -> False"),
    "left in train mode": (lambda inp: inp.a.train(), r"training: False -> True"),
    "requires_grad": (
        lambda inp: inp.a.classifier.fc2.bias.requires_grad_(False),
        r"classifier\.fc2\.bias\.requires_grad",
    ),
    "gradients zeroed": (lambda inp: inp.a.zero_grad(), r"\.grad changed"),
    "BatchNorm momentum": (
        lambda inp: setattr(inp.a.features.bn3, "momentum", 1.0),
        r"features\.bn3\['momentum'\]: 0\.1 -> 1\.0",
    ),
    "attribute added": (
        lambda inp: setattr(inp.a.features.conv1, "cached", torch.zeros(1)),
        r"features\.conv1: keys \[.*\] -> \[.*'cached'\]",
    ),
    "checkpoint metadata": (
        lambda inp: vars(inp.trained_a)["_workbench_checkpoint"].clear(),
        r"trained_a was modified.*\n.*<root>\['_workbench_checkpoint'\]: keys",
    ),
    "forward hook": (
        lambda inp: inp.a.features.relu1.register_forward_hook(lambda *_: None),
        r"features\.relu1: hooks left behind \{'_forward_hooks'",
    ),
    "forward pre-hook": (
        lambda inp: inp.a.register_forward_pre_hook(lambda *_: None),
        r"<root>: hooks left behind \{'_forward_pre_hooks'",
    ),
    "backward hook": (
        lambda inp: inp.a.classifier.fc1.register_full_backward_hook(lambda *_: None),
        r"classifier\.fc1: hooks left behind \{'_backward_hooks'",
    ),
    "dataset images": (_bump_image, r"train was modified.*\n\s+images: values"),
    "dataset targets": (
        lambda inp: inp.train.targets.__setitem__(0, (inp.train.targets[0] + 1) % 10),
        r"targets: values",
    ),
    "dataset tensor replaced": (
        lambda inp: setattr(inp.train, "images", inp.train.images.clone()),
        r"images: replaced",
    ),
    "dataset split": (
        lambda inp: setattr(inp.test, "split", "train"),
        r"attributes\['split'\]: 'test' -> 'train'",
    ),
    "spec": (lambda inp: inp.spec.report.append("changed"), r"spec's content changed"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS), ids=list(MUTATIONS))
def test_assert_unchanged_detects(mutation: str, inputs: Inputs) -> None:
    mutate, message = MUTATIONS[mutation]
    checked = inputs.checked()
    before = {name: snapshot(obj) for name, obj in checked.items()}
    for name, obj in checked.items():  # nothing changed yet
        assert_unchanged(before[name], obj, name)
    mutate(inputs)
    with pytest.raises(AssertionError, match=message):
        for name, obj in checked.items():
            assert_unchanged(before[name], obj, name)


def _swap_first_two(value: dict[str, torch.Tensor]) -> None:
    value["g"][[0, 1]] = value["g"][[1, 0]]


KEPT_CHANGES: dict[str, tuple[Callable[[], Any], Callable[[Any], object], str]] = {
    "tensor in a dict": (lambda: {"g": torch.arange(4)}, _swap_first_two, r"value\['g'\]"),
    "dict entry replaced": (
        lambda: {"g": torch.arange(4)},
        lambda value: value.update(g=torch.arange(4).flip(0)),
        r"value\['g'\]",
    ),
    "list grown": (lambda: [0.5, 0.5], lambda value: value.append(0.0), r"value: \[0.5, 0.5\] ->"),
    "dataclass field": (
        lambda: wb.MergeReport("cca", 2, 0, None),
        lambda value: setattr(value, "gamma", 0.1),
        r"value\['gamma'\]: None -> 0.1",
    ),
    "model replaced in a list": (
        lambda: [nn.Linear(1, 1)],
        lambda value: value.__setitem__(0, nn.Linear(1, 1)),
        r"value\[0\]: Linear",
    ),
}


@pytest.mark.parametrize("change", list(KEPT_CHANGES), ids=list(KEPT_CHANGES))
def test_kept_detects(change: str) -> None:
    make, mutate, message = KEPT_CHANGES[change]
    value = make()
    with kept(value=value):  # nothing changed yet
        pass
    with pytest.raises(AssertionError, match=message), kept(value=value):
        mutate(value)


# ---------------------------------------------------------------------------------------
# Guard: every public function is checked here or excluded with a reason

_CLASS = "a class: constructing one stores its arguments, it does not transform them"
_NO_MODEL = "takes no model and no dataset"
_RESULTS = "takes results (curves, tables, planes, matches), never a model or a dataset"
_PLUMBING = "works on permutations, specs, statistics or state dicts, not on models or data"
_IN_PLACE = "in place by design: the trailing underscore and the docstring say so"

EXCLUDED: dict[str, str] = {
    # result, error and data types, and the type aliases of permutations and maps
    **dict.fromkeys(
        [
            "AlignmentMethod",
            "AlignmentResult",
            "BatchNormHandling",
            "Axis",
            "CCAAlignment",
            "CheckpointError",
            "DatasetInfo",
            "DatasetUnavailableError",
            "DidNotLearnWarning",
            "Ensemble",
            "Exemplars",
            "GraphTraceError",
            "GroupMap",
            "GroupStatistics",
            "LayerComparison",
            "LayerPoint",
            "LMCCurve",
            "LossPlane",
            "MatchedCorrelations",
            "MergeReport",
            "Merged",
            "MergeResult",
            "Metrics",
            "PartialAlignment",
            "PermutationGroup",
            "PermutationSpec",
            "Result",
            "ResultCache",
            "StepsTradeoff",
            "Population",
            "Sweep",
            "TensorImageDataset",
            "TrainingRun",
            "UnitMatch",
            "UnitStudy",
            "LayerStudy",
            "PathStudy",
            "PairsStudy",
            "ObservationPoint",
        ],
        _CLASS,
    ),
    **dict.fromkeys(["LinearMaps", "Permutation"], "a type alias"),
    # functions that build things from names, paths or numbers
    **dict.fromkeys(
        [
            "alpha_grid",
            "architectures",
            "cache_dir",
            "canonical_method",
            "create_model",
            "dataset_info",
            "describe_point",
            "datasets",
            "default_cache",
            "default_device",
            "get_bn",
            "get_method",
            "list_datasets",
            "list_models",
            "load_dataset",
            "load_result",
            "load_quickstart_models",
            "log_ticks",
            "matching_methods",
            "methods",
            "pairwise_methods",
            "population_methods",
            "read_metadata",
            "register_architecture",
            "register_bn",
            "register_dataset",
            "register_method",
            "shipped_models_dir",
            "small_image_transforms",
            "unregister_architecture",
            "unregister_bn",
            "unregister_dataset",
            "unregister_method",
        ],
        _NO_MODEL,
    ),
    # random_translate's augmentation is applied to a view of a dataset in train_model's case
    "random_translate": _NO_MODEL,
    **dict.fromkeys(
        [
            "canonical_correlation",
            "cca_maps",
            "compose",
            "graph_order",
            "identity_permutation",
            "inverse",
            "observation_points",
            "permutation_from_statistics",
            "permute_state",
            "plane_weights",
            "random_permutation",
            "repair_points",
        ],
        _PLUMBING,
    ),
    **dict.fromkeys(
        [
            "barrier_table",
            "cached_curves",
            "curves_frame",
            "plot_bands",
            "plot_coefficients",
            "plot_comparison",
            *(name for name in study_plots.__all__ if name.startswith("plot_")),
            "plot_curves",
            "plot_gallery",
            "plot_layer_matches",
            "plot_matched_correlations",
            "plot_partial_alignment",
            "plot_plane",
            "plot_sweep",
            "write_csv",
        ],
        _RESULTS,
    ),
    **dict.fromkeys(["load_interpolation_", "repair_", "reset_bn_"], _IN_PLACE),
}

# An annotation naming a model, a dataset or something that holds models.
_MODEL_OR_DATA = re.compile(r"\bnn\.Module\b|\bDataLike\b|Dataset\b|\bLayerComparison\b")


def takes_model_or_data(function: Callable) -> bool:
    """Whether a parameter of ``function`` is annotated as a model or data."""
    parameters = inspect.signature(function).parameters.values()
    return any(_MODEL_OR_DATA.search(str(p.annotation)) for p in parameters)


def public_callables(namespaces: Iterable[ModuleType] = NAMESPACES) -> dict[str, Callable]:
    """Every callable the namespaces export (modules aside), by exported name."""
    found: dict[str, Callable] = {}
    for module in namespaces:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            if found.setdefault(name, obj) is not obj:
                raise AssertionError(f"{name!r} names two different objects in the package.")
    return found


def covered() -> set[str]:
    return {name for c in CASES.values() for name in c.functions}


def unclassified() -> list[str]:
    """Public callables neither checked by a case nor excluded."""
    return sorted(set(public_callables()) - covered() - set(EXCLUDED))


def test_every_public_function_is_checked_or_excluded() -> None:
    public = public_callables()
    checked = covered()
    assert checked, "no case registered: the guard would pass vacuously"
    unknown = sorted(checked - set(public))
    assert not unknown, f"cases name functions the package does not export: {unknown}"
    stale = sorted(set(EXCLUDED) - set(public))
    assert not stale, f"excluded names the package no longer exports: {stale}"
    both = sorted(checked & set(EXCLUDED))
    assert not both, f"both checked and excluded: {both}"
    missing = unclassified()
    assert not missing, (
        f"public functions without a purity check: {missing}; add a case to "
        "tests/test_purity.py, or an entry with a reason to EXCLUDED."
    )


def test_functions_taking_models_or_data_are_checked() -> None:
    """The annotations agree with the lists: every public function with a model or data
    parameter is checked (or works in place by design), and every checked one has one."""
    public = public_callables()
    functions = {
        name: obj
        for name, obj in public.items()
        if not inspect.isclass(obj) and EXCLUDED.get(name) != "a type alias"
    }
    taking = {name for name, obj in functions.items() if takes_model_or_data(obj)}
    unchecked = sorted(taking - covered() - {n for n, r in EXCLUDED.items() if r == _IN_PLACE})
    assert not unchecked, f"functions taking models or data without a purity case: {unchecked}"
    not_taking = sorted(covered() - taking)
    assert not not_taking, f"checked functions without a model or data parameter: {not_taking}"
    in_place = sorted(name for name, reason in EXCLUDED.items() if reason == _IN_PLACE)
    assert in_place, "the in-place exclusions are empty"
    assert all(name.endswith("_") and name in taking for name in in_place), in_place


def test_guard_notices_a_new_public_function(monkeypatch: pytest.MonkeyPatch) -> None:
    def new_analysis(model: nn.Module) -> None:
        """A public function added without a purity case."""

    monkeypatch.setattr(wb, "new_analysis", new_analysis, raising=False)
    monkeypatch.setattr(wb, "__all__", [*wb.__all__, "new_analysis"])
    assert unclassified() == ["new_analysis"]
    assert takes_model_or_data(new_analysis)
