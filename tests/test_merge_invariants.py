"""Invariants every registered merging method passes, on three architectures: the
quickstart CNN with BatchNorm, a ResNet-20 with BatchNorm and a VGG-style CNN without
normalization (conv-ReLU-pool stacks). The tests read the registry, so a method
registered later gets them for free.

- merging a model with itself gives its function back (after the same BatchNorm
  handling), and so does merging it with a randomly permuted copy of itself; a
  permutation method recovers the permutation;
- interpolation at alpha 0 and 1 gives the endpoints, and RESET equals a direct
  recomputation of the statistics written plainly here;
- on an independently trained pair, every method beats plain averaging, and every one
  but CCA Merge (held to the paper's procedure instead; see ``MARGIN``) comes within a
  stated margin of weight matching.

The independent references for the linear methods (CCA Merge, OT fusion), written from
the papers' formulas, are in ``tests/test_linear_references.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.alignment import get_method
from workbench.alignment.weight import weight_objective
from workbench.evaluation import evaluate

ARCHITECTURES = ("bn_cnn", "bn_resnet", "plain_cnn")
# Merges that train (STE, NP Merge) take few steps here: the invariants hold at any step.
CHEAP = {"ste": {"steps": 5}, "np_merge": {"steps": 20, "eval_every": 10}}


@pytest.fixture(scope="module")
def fit_data(mnist_train) -> wb.TensorImageDataset:
    return mnist_train.subset(torch.arange(2000), "train")


@pytest.fixture(scope="module")
def merge_data(mnist_train) -> tuple[wb.TensorImageDataset, wb.TensorImageDataset]:
    """Training images for the merges' statistics and RESET (600 of the models' 2000: a
    ResNet's RESET takes one pass per BatchNorm layer), and held-out validation images
    (so that a method that stops early does not carve its split out of the first)."""
    return (
        mnist_train.subset(torch.arange(600), "train"),
        mnist_train.subset(torch.arange(2000, 2500), "train"),
    )


@pytest.fixture(scope="module")
def pairs(shipped_pair, fit_data) -> dict[str, tuple[nn.Module, nn.Module]]:
    """One independently trained pair (seeds 0 and 1) per architecture, in eval mode."""
    resnets = wb.train_models(
        "resnet20", (0, 1), fit_data, 3, model_kwargs={"width": 0.5, "in_channels": 1},
        lr=0.1, progress=False,
    )  # fmt: skip
    plain = wb.train_models(
        "cnn", (0, 1), fit_data, 10,
        model_kwargs={"width": 1, "in_channels": 1, "batch_norm": False},
        lr=0.1, batch_size=32, progress=False,
    )  # fmt: skip
    found = {"bn_cnn": shipped_pair, "bn_resnet": resnets, "plain_cnn": plain}
    return {name: tuple(m.eval() for m in models) for name, models in found.items()}


def _bn(model: nn.Module) -> str | None:
    return "reset" if wb.modules.has_batchnorm(model) else None


def _merge(models, data, method: str) -> nn.Module:
    """``merge_many`` at the method's defaults (no validation search); ``data``: the
    (training, validation) pair of :func:`merge_data`."""
    defaults = get_method(method).defaults
    options = CHEAP.get(method, {})
    fit, val = data
    result = wb.merge_many(
        models, data=fit, method=method, bn=_bn(models[0]), val_data=val, progress=False,
        **{**defaults, **options},
    )  # fmt: skip
    return result.model


def _same_function(model: nn.Module, data) -> nn.Module:
    """``model`` after the BatchNorm handling a merge applies (RESET where it has BatchNorm)."""
    return wb.reset_bn(model, data=data) if _bn(model) else model


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", wb.methods())
def test_merging_a_model_with_itself_gives_it_back(pairs, merge_data, mnist_test, arch, method):
    model = pairs[arch][0]
    merged = _merge([model, model], merge_data, method)
    x = mnist_test.images[:256]
    expected = _logits(_same_function(model, merge_data[0]), x)
    assert (_logits(merged, x) - expected).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", [m for m in wb.methods() if m != "none"])
def test_merging_with_a_permuted_copy_gives_the_model_back(
    pairs, merge_data, mnist_test, arch, method
):
    model = pairs[arch][0]
    # On held-out images: units that never fire on the merge's data (dead fc1 units)
    # fire on some of them, so a dead unit paired with another than its twin would show
    # (by 1.4e-3 before dead units were paired by their weights)
    x = mnist_test.images[:256]
    spec = wb.permutation_spec(model, example_input=x[:2])
    perm = wb.random_permutation(spec, seed=3)
    permuted = wb.apply_permutation(model, spec=spec, perm=perm)
    merged = _merge([model, permuted], merge_data, method)
    expected = _logits(_same_function(model, merge_data[0]), x)
    assert (_logits(merged, x) - expected).abs().max() < 1e-4
    found = get_method(method)
    if found.kind == "permutation" and found.merger is None:
        result = wb.match(
            model, permuted, method=method, data=merge_data[0], spec=spec, progress=False
        )
        undone = wb.alignment.compose(perm, result.permutation)
        for name, p in undone.items():  # the found permutation undoes the planted one,
            assert torch.equal(p, torch.arange(len(p))), name  # dead units included


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_interpolation_endpoints_are_the_models(pairs, mnist_test, arch):
    a, b = pairs[arch]
    for alpha, end in ((0.0, a), (1.0, b)):
        point = wb.interpolate(a, b, alpha=alpha)
        for key, value in end.state_dict().items():
            assert torch.equal(point.state_dict()[key], value), (alpha, key)


def _direct_reset(model: nn.Module, images: torch.Tensor) -> dict[str, tuple]:
    """Every BatchNorm layer's input mean and unbiased variance over ``images``, measured
    plainly: run the network in eval mode and, layer by layer in forward order, set each
    BatchNorm's running statistics to what it sees once the earlier ones are set."""
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    seen: list[torch.Tensor] = []
    for layer in layers:
        handle = layer.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
        with torch.no_grad():
            model.eval()(images)
        handle.remove()
        inputs = seen.pop().transpose(0, 1).flatten(1).double()
        layer.running_mean.copy_(inputs.mean(1))
        layer.running_var.copy_(inputs.var(1, unbiased=True))
    return {n: (m.running_mean, m.running_var) for n, m in model.named_modules() if m in layers}


@pytest.mark.parametrize("arch", ["bn_cnn", "bn_resnet"])
def test_reset_equals_a_direct_recomputation(pairs, fit_data, arch):
    a, b = pairs[arch]
    midpoint = wb.interpolate(a, b, alpha=0.5)
    part = fit_data.subset(torch.arange(1000), "train")
    reset = wb.reset_bn(midpoint, data=part)
    modules = dict(reset.named_modules())
    for name, (mean, var) in _direct_reset(midpoint, part.images).items():
        torch.testing.assert_close(modules[name].running_mean, mean.float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(modules[name].running_var, var.float(), rtol=1e-4, atol=1e-5)


# Merged test accuracy at the defaults on each independently trained pair (measured
# 2026-12-06; statistics and RESET on 600 training images):
#             none   weight activation cca    ot     ste    np_merge zipit
# bn_cnn      43.6%  96.9%  96.4%      95.8%  96.4%  96.9%  97.5%    96.5%
# bn_resnet   27.4%  58.0%  74.5%      57.9%  74.5%  68.7%  90.1%    76.1%
# plain_cnn   10.0%  88.1%  85.5%      89.6%  87.3%  88.2%  92.4%    85.8%
# (the ResNet pair is trained for 3 epochs only, so its merges are far from its
# endpoints, 93.8% and 89.4%; the test compares methods, not the merge's quality)
# On an AMD EPYC machine (2026-12-07) training rounds differently and gives other pairs:
# bn_resnet  17.3%  54.2%  79.1%      43.8%  79.1%  66.3%  90.6%    65.5%
# plain_cnn  10.2%  84.6%  88.1%      67.6%  87.8%  84.6%  91.3%    84.6%
# CCA's maps are not permutations, and on these pairs many units never fire on the 600
# statistics images (plain_cnn: 24 and 29 of fc1's 128); there the paper's procedure of
# tests/test_linear_references.py, run on the plain pair with numpy completing the SVD,
# gives 67.9% (gamma 1), 72.9% (gamma 0.1) against ours 67.6% and 76.0%. CCA is held to
# beating averaging here and to the paper's procedure there, not to weight matching.
# C2M3 maximizes weight matching's own objective (the pairwise inner product of the
# weights), by another optimizer, and is held to that objective instead (below): on the
# bn_resnet pair it reaches 422.7 where weight matching's descent seeds 0..3 reach
# 419.7 to 421.5, yet those seeds' merges score 54.2%, 54.1%, 41.0% and 17.9% (C2M3's
# 33.9%). Accuracy among such near-equal optima of a 3-epoch ResNet is a draw
# (benchmarks/weight_matching_seeds.py, benchmarks/c2m3.py).
MARGIN = 0.03  # how far below weight matching a permutation method may fall (accuracy, 0-1)
NOT_HELD_TO_WEIGHT_MATCHING = ("none", "weight", "cca", "c2m3")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_c2m3_reaches_weight_matchings_objective(pairs, arch):
    """C2M3 and weight matching maximize the same objective: on every trained pair
    C2M3's optimum is at least as high as that of weight matching's descent."""
    a, b = pairs[arch]
    spec = wb.permutation_spec(a, example_input=torch.zeros(2, 1, 28, 28))
    by_weight = wb.apply_permutation(b, spec=spec, perm=wb.weight_matching(a, b, spec=spec))
    by_c2m3 = wb.apply_permutation(b, spec=spec, perm=wb.c2m3_matching(a, b, spec=spec))
    assert weight_objective([a, by_c2m3]) >= weight_objective([a, by_weight])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_method_beats_averaging_and_nears_weight_matching(
    pairs, merge_data, mnist_test, arch
):
    pair = list(pairs[arch])
    accuracy = {
        m: evaluate(_merge(pair, merge_data, m), eval_data=mnist_test).accuracy
        for m in wb.methods()
    }
    for method, value in accuracy.items():
        if method == "none":
            continue
        assert value > accuracy["none"] + 0.05, (method, accuracy)
        if method not in NOT_HELD_TO_WEIGHT_MATCHING:
            assert value >= accuracy["weight"] - MARGIN, (method, accuracy)
