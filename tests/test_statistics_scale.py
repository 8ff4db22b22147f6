"""The statistics pass at scale: models run side by side (lockstep), batches centered and
multiplied a chunk at a time, only the cross-correlations where a matcher needs no more
(``within=False``), and a default batch size chosen from the input size and a memory
budget (``workbench.batching.choose_batch_size``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import workbench as wb
from workbench.alignment import collect_statistics
from workbench.alignment import moments as moments_module
from workbench.alignment import statistics as statistics_module
from workbench.alignment.cca import cca_maps
from workbench.alignment.lockstep import lockstep
from workbench.batching import BUDGET_VARIABLE, MAX_BATCH, choose_batch_size
from workbench.graph import permutation_spec


@pytest.fixture(scope="module")
def pair():
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(wb.create_model("cnn", width=0.5, in_channels=1).eval())
    data = TensorDataset(torch.randn(96, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    spec = permutation_spec(models[0], example_input=torch.zeros(2, 1, 28, 28))
    return models, data, spec


def _direct(models, data, spec, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of the stacked activations, in float64 at once."""
    point, dim = next(iter(statistics_module.observation_points(spec.groups[name]).items()))
    found = []
    with torch.no_grad():
        for model in models:
            traced = lockstep([model], [spec], [point], lambda _n, out: found.append(out[0]))
            traced(data.tensors[0])
    rows = torch.cat([f.double().movedim(dim, -1).reshape(-1, f.shape[dim]) for f in found], 1)
    return rows.mean(0), rows.T.cov()


def test_statistics_match_a_float64_computation_whatever_the_chunk(pair, monkeypatch) -> None:
    """Whole batches in one product; then a few images at a time, each model's symmetric
    block formed in uneven panels (3, 3 and 2 rows of 8) of its upper triangle."""
    models, data, spec = pair
    name = "features.conv1"
    mean, covariance = _direct(models, data, spec, name)
    assert spec.groups[name].size == 8
    for chunk, panel in ((moments_module._CHUNK, moments_module._PANEL), (500, 3)):
        monkeypatch.setattr(moments_module, "_CHUNK", chunk)
        monkeypatch.setattr(moments_module, "_PANEL", panel)
        stats = collect_statistics(
            models, data=data, spec=spec, groups=[name], batch_size=40, progress=False
        )[name]
        assert torch.allclose(stats.mean, mean, atol=1e-5)
        assert torch.allclose(stats.covariance, covariance, rtol=1e-4, atol=1e-6)


def test_cross_statistics_hold_the_same_correlations_and_only_variances_within(pair) -> None:
    models, data, spec = pair
    full = collect_statistics(models, data=data, spec=spec, batch_size=32, progress=False)
    cross = collect_statistics(
        models, data=data, spec=spec, within=False, batch_size=32, progress=False
    )
    for name, stats in cross.items():
        assert not stats.within and full[name].within
        assert torch.equal(stats.correlation(0, 1), full[name].correlation(0, 1))
        own = stats.block(0, 0)
        assert torch.equal(own, torch.diag(own.diagonal()))
        assert torch.equal(own.diagonal(), full[name].block(0, 0).diagonal())
    with pytest.raises(ValueError, match="within=True"):
        cca_maps(cross, 0.1, spec)


def test_lockstep_refuses_models_of_another_architecture(pair) -> None:
    models, _, spec = pair
    other = wb.create_model("resnet20")
    other_spec = permutation_spec(other, example_input=torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="one architecture"):
        lockstep([models[0], other], [spec, other_spec], [], lambda *_: None)


def test_batch_size_comes_from_a_memory_budget(pair, monkeypatch) -> None:
    models, data, _ = pair
    assert choose_batch_size(models, data, batch_size=7) == 7  # an explicit one wins
    assert choose_batch_size(models, data) == MAX_BATCH  # small images: the old default
    # the largest activation (conv1: 8 x 28 x 28 floats), 4 alive at once, two models
    per_example = 4 * 2 * 8 * 28 * 28 * 4
    assert choose_batch_size(models, data, budget=10 * per_example) == 10
    assert choose_batch_size(models, data, budget=1) == 1  # never zero
    monkeypatch.setenv(BUDGET_VARIABLE, f"{3 * per_example / 1024:.3f}KB")
    assert choose_batch_size(models, data) == 3
    monkeypatch.setenv(BUDGET_VARIABLE, "lots")
    with pytest.raises(ValueError, match=BUDGET_VARIABLE):
        choose_batch_size(models, data)
    loader = DataLoader(data, batch_size=5)
    assert choose_batch_size(models, loader) == MAX_BATCH  # the loader batches on its own


def test_statistics_do_not_depend_on_the_chosen_batch_size(pair, monkeypatch) -> None:
    models, data, spec = pair
    chosen = collect_statistics(models, data=data, spec=spec, progress=False)
    monkeypatch.setenv(BUDGET_VARIABLE, str(4 * 2 * 8 * 28 * 28 * 4 * 10))  # 10 images
    small = collect_statistics(models, data=data, spec=spec, progress=False)
    for name, stats in chosen.items():
        assert torch.allclose(stats.covariance, small[name].covariance, rtol=1e-4, atol=1e-6)


def test_evaluation_curves_and_exemplars_fit_their_batches_to_the_budget(monkeypatch) -> None:
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(wb.create_model("cnn", width=0.5, in_channels=1).eval())
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(60, 1, 28, 28, generator=g), torch.arange(60) % 10)
    batch_sizes: list[int] = []
    hook = models[0].register_forward_pre_hook(lambda _m, args: batch_sizes.append(len(args[0])))
    whole = wb.evaluate(models[0], eval_data=data)
    curve = wb.lmc_curve(
        models[0], models[1], eval_data=data, alphas=3, cache=False, progress=False
    )
    # after the probes (the fit check, the budget) one batch: the old default
    assert {n for n in batch_sizes if n > 2} == {60}
    batch_sizes.clear()
    # one model's largest activation (conv1: 8 x 28 x 28 floats), 4 alive: 10 images fit
    monkeypatch.setenv(BUDGET_VARIABLE, str(4 * 8 * 28 * 28 * 4 * 10))
    found = wb.evaluate(models[0], eval_data=data)
    assert found.accuracy == whole.accuracy and found.loss == pytest.approx(whole.loss, rel=1e-6)
    assert {n for n in batch_sizes if n > 2} == {10}
    small = wb.lmc_curve(
        models[0], models[1], eval_data=data, alphas=3, cache=False, progress=False
    )
    expected, got = curve.to_frame(), small.to_frame()
    assert list(got.columns) == list(expected.columns)
    numbers = expected.select_dtypes("number").columns
    assert np.allclose(got[numbers], expected[numbers], rtol=1e-6)
    exemplars = wb.featviz.top_exemplars(
        models[0], layer="features.conv1", data=data, k=3, cache=False, progress=False
    )
    assert {n for n in batch_sizes if n > 2} == {10}  # the curve and the exemplars too
    monkeypatch.delenv(BUDGET_VARIABLE)
    assert torch.equal(
        exemplars.indices,
        wb.featviz.top_exemplars(
            models[0], layer="features.conv1", data=data, k=3, cache=False, progress=False
        ).indices,
    )
    hook.remove()
