"""A cached result is keyed by every input that changes it: every function that builds a
cache key reaches each of its parameters from that key (read from its code), a permutation
spec given to an analysis changes the result it is served, and a unit study read back from
the cache equals the one computed.

Before the spec entered the keys, ``matched_correlations`` with a spec of one group
returned the cached result of the traced spec (four groups), and ``partial_alignment``
returned the four-group curves under the one-group spec's names: silently wrong.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import textwrap

import numpy as np
import pytest
import torch

import workbench
import workbench as wb
from workbench import featviz as fv
from workbench.analysis.diagnostics import matched_correlations, partial_alignment
from workbench.cache import ResultCache
from workbench.featviz import study_merge


def _cached_with_spec() -> set[str]:
    """Every public function of the package that takes both a ``spec`` and a ``cache``."""
    found = set()
    for info in pkgutil.walk_packages(workbench.__path__, "workbench."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not inspect.isfunction(obj):
                continue
            if {"spec", "cache"} <= set(inspect.signature(obj).parameters):
                found.add(f"{obj.__module__}.{obj.__qualname__}")
    return found


# parameters that do not change what is cached: how it runs, and display names that are
# set on the result after it is read (lmc_curves' label, loss_planes' labels) or a file it
# is also written to (compare_methods' csv)
NEUTRAL = {"progress", "cache", "executor"}
AFTER_THE_CACHE = {
    "workbench.analysis.comparison.compare_methods": {"csv"},
    "workbench.analysis.lmc.compute.lmc_curves": {"label"},
    "workbench.analysis.planes.compute.loss_planes": {"labels"},
}


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _unkeyed(function) -> tuple[bool, list[str]]:
    """Whether ``function``'s code builds a cache key (``<cache>.key(...)``), and which of
    its parameters that key does not reach: the names in the key's arguments, followed
    back through the assignments (and loop variables) that made them."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    keyed: set[str] = set()
    made_from: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if call and node.func.attr == "key":
            keyed |= _names(node)
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for name in set().union(*map(_names, targets)):
                made_from.setdefault(name, set()).update(_names(node.value))
        if isinstance(node, (ast.For, ast.comprehension)):
            for name in _names(node.target):
                made_from.setdefault(name, set()).update(_names(node.iter))
    reached, todo = set(), list(keyed)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += made_from.get(name, ())
    parameters = inspect.signature(function).parameters
    return bool(keyed), [p for p in parameters if p not in NEUTRAL and p not in reached]


def _key_builders() -> dict[str, object]:
    """Every function of the package whose code builds a cache key."""
    found = {}
    for info in pkgutil.walk_packages(workbench.__path__, "workbench."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if inspect.isfunction(obj) and obj.__module__ == module.__name__:
                function = inspect.unwrap(obj)
                if ".key(" in inspect.getsource(function):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = function
    return found


def test_every_cache_key_reaches_every_parameter() -> None:
    builders = _key_builders()
    assert "workbench.analysis.diagnostics.matched_correlations" in builders  # the scan works
    assert len(builders) >= 12
    for name, function in builders.items():
        keyed, missing = _unkeyed(function)
        if keyed:
            assert set(missing) == AFTER_THE_CACHE.get(name, set()), name


def test_the_key_scan_finds_a_missing_parameter() -> None:
    def cached(model, data, spec=None, progress=True, cache=True):
        store = ResultCache(enabled=False)
        used = [model, data]
        key = store.key(inputs=used)
        return key, spec

    assert _unkeyed(cached) == (True, ["spec"])


@pytest.fixture(scope="module")
def specs(shipped_pair, tiny_train):
    """The traced spec of the shipped CNN and one that permutes its first group only
    (and names its first layer only, which is what REPAIR corrects)."""
    spec = wb.permutation_spec(shipped_pair[0], example_input=tiny_train.images[:2])
    first = next(iter(spec.groups))
    one = dataclasses.replace(
        spec, groups={first: spec.groups[first]}, layers=spec.layers[:1], verification={}
    )
    return spec, one


def _eval(mnist_test):
    return {"test": mnist_test.subset(torch.arange(0, 1000, 8), "test")}


def _correlations(a, b, data, test, **kw):
    return sorted(
        matched_correlations(a, b, data=data, method="weight", progress=False, **kw).groups
    )


def _partial(a, b, data, test, **kw):
    found = partial_alignment(a, b, data=data, eval_data=test, alphas=3, progress=False, **kw)
    return [c.accuracy.tolist() for c in found.curves]


def _curves(a, b, data, test, **kw):
    found = wb.lmc_curves(
        a, b, eval_data=test, data=data, alphas=3, bn="repair", progress=False, **kw
    )
    return found["test"].loss.tolist()


def _curve(a, b, data, test, **kw):
    found = wb.lmc_curve(
        a, b, eval_data=test["test"], data=data, alphas=3, bn="repair", progress=False, **kw
    )
    return found.loss.tolist()


def _planes(a, b, data, test, **kw):
    models = [a, b, wb.average([a, b])]
    found = wb.analysis.planes.loss_planes(
        models, eval_data=test, data=data, resolution=2, method="weight", progress=False, **kw
    )
    return found["test"].loss.tolist()


def _compare(a, b, data, test, **kw):
    found = fv.compare_layer(a, b, layer="features.conv1", data=data, method="weight", **kw)
    return found.match.matched.tolist()


def _study(a, b, data, test, **kw):
    layers = ["features.conv1"]
    found = fv.layer_study(
        a, b, layers=layers, data=data, render=False, units=8, progress=False, **kw
    )
    return found.first.matched.tolist()


# name -> the call, returning what of its result tells two specs apart
CALLS = {
    "workbench.analysis.diagnostics.matched_correlations": _correlations,
    "workbench.analysis.diagnostics.partial_alignment": _partial,
    "workbench.analysis.lmc.compute.lmc_curves": _curves,
    "workbench.analysis.lmc.compute.lmc_curve": _curve,
    "workbench.analysis.planes.compute.loss_planes": _planes,
    "workbench.featviz.views.compare_layer": _compare,
    "workbench.featviz.study.layer_study": _study,
}


def test_every_cached_analysis_with_a_spec_is_checked() -> None:
    assert _cached_with_spec() == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_given_spec_is_part_of_the_key(name, shipped_pair, tiny_train, mnist_test, specs):
    a, b = shipped_pair
    call, test = CALLS[name], _eval(mnist_test)
    spec, one = specs
    traced = call(a, b, tiny_train, test, spec=spec)
    cached = call(a, b, tiny_train, test, spec=one)
    fresh = call(a, b, tiny_train, test, spec=one, cache=False)
    assert cached == fresh
    assert fresh != traced  # else this check could not fail
    # the same spec verified again (another report) keys the same result
    again = dataclasses.replace(one, verification={"seconds": 1.0})
    assert again.cache_key == one.cache_key != spec.cache_key


def test_a_study_read_back_equals_the_computed_one(shipped_pair, tiny_train, monkeypatch, tmp_path):
    a, b = shipped_pair
    kw = {"layers": ["features.conv2", "features.conv1"], "data": tiny_train, "units": 3}
    kw["cache"] = ResultCache(tmp_path)  # empty: the first call computes
    computed = fv.layer_study(a, b, steps=4, progress=False, **kw)

    def refuse(*args, **kwargs):
        raise AssertionError("the study was computed again")

    monkeypatch.setattr(study_merge, "align_parents", refuse)
    monkeypatch.setattr(fv.study, "align_parents", refuse)
    read = fv.layer_study(a, b, steps=4, progress=False, **kw)
    assert read.layers == computed.layers == ["features.conv2", "features.conv1"]
    for layer, study in computed.studies.items():
        other = read.studies[layer]
        for field in dataclasses.fields(study):
            mine, theirs = getattr(study, field.name), getattr(other, field.name)
            if isinstance(mine, torch.Tensor):
                assert torch.equal(mine, theirs) or (
                    mine.shape == theirs.shape and np.array_equal(mine, theirs, equal_nan=True)
                ), field.name
            elif isinstance(mine, dict) and field.name == "images":
                assert list(mine) == list(theirs)
                assert all(torch.equal(mine[k], theirs[k]) for k in mine)
            else:
                assert mine == theirs, field.name
    # another setting is another study: computed, not read
    with pytest.raises(AssertionError, match="computed again"):
        fv.layer_study(a, b, steps=5, progress=False, **kw)
