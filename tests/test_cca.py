"""CCA alignment: BatchNorm folding, canonical correlations, maps, bad statistics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import workbench as wb
from tests.conftest import assert_state_equal, state_copy, states_equal
from workbench.alignment import (
    apply_linear_maps,
    canonical_correlation,
    cca_align,
    cca_maps,
    collect_statistics,
    fold_batchnorm,
    general_groups,
)
from workbench.graph import permutation_spec
from workbench.graph.transforms import transform_state


class _LinearResidual(nn.Module):
    """Linear layers with BatchNorm, a residual add and no nonlinearity: every group
    (including the one the add unites) can take any invertible map exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(5, 8), nn.BatchNorm1d(8)
        self.fc2, self.bn2 = nn.Linear(8, 8, bias=False), nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.fc1(x))
        return self.head(h + self.bn2(self.fc2(h)))


def _trained_statistics(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.weight.uniform_(0.5, 2.0, generator=generator)
                module.bias.normal_(generator=generator)
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def test_folded_batchnorm_passes_any_map_including_residual_groups() -> None:
    torch.manual_seed(0)
    model = _trained_statistics(_LinearResidual())
    x = torch.randn(32, 5)
    spec = permutation_spec(model, example_input=x)
    assert len(spec.groups) == 1, "the add unites fc1's and fc2's outputs into one group"
    before = state_copy(model)
    folded, folded_spec = fold_batchnorm(model, spec=spec)
    assert_state_equal(model, before)
    generator = torch.Generator().manual_seed(1)
    maps = {
        name: torch.randn(g.size, g.size, generator=generator) + 3 * torch.eye(g.size)
        for name, g in folded_spec.groups.items()
    }
    mapped = apply_linear_maps(folded, spec=folded_spec, maps=maps)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() < 1e-5
        assert (mapped(x) - model(x)).abs().max() < 1e-4
        assert not torch.allclose(mapped.fc1.weight, folded.fc1.weight)
    with pytest.raises(ValueError, match="per-channel tensor"):
        apply_linear_maps(model, spec=spec, maps=maps)  # unfolded BatchNorm cannot pass it


def _relu_activations(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    outputs = []
    handle = model.classifier.relu.register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return outputs[0].double().numpy()


def test_canonical_correlations_match_a_direct_computation(shipped_pair, mnist_train) -> None:
    model_a, model_b = shipped_pair
    spec = permutation_spec(model_a, example_input=mnist_train.images[:2])
    stats = collect_statistics([model_a, model_b], data=mnist_train, spec=spec, progress=False)
    fc1 = stats["classifier.fc1"]
    acts_a = _relu_activations(model_a, mnist_train.images)
    acts_b = _relu_activations(model_b, mnist_train.images)
    live = (acts_a.std(0) > 0) & (acts_b.std(0) > 0)
    assert live.sum() >= 50
    # Direct CCA: the canonical correlations are the singular values of Qa^T Qb for
    # orthonormal bases of the centered activations (here of the live units only).
    qa = scipy.linalg.orth(acts_a[:, live] - acts_a[:, live].mean(0))
    qb = scipy.linalg.orth(acts_b[:, live] - acts_b[:, live].mean(0))
    direct = scipy.linalg.svdvals(qa.T @ qb)
    index = torch.from_numpy(np.flatnonzero(live))
    sub = lambda i, j: fc1.block(i, j)[index][:, index]  # noqa: E731
    transform, rho = canonical_correlation(sub(0, 0), sub(1, 1), sub(0, 1), gamma=0.0)
    # the streaming statistics form per-batch products in float32: agreement to ~1e-4
    np.testing.assert_allclose(rho.numpy(), direct[: len(rho)], atol=2e-4)
    assert rho[0] > 0.9 and (rho[:-1] >= rho[1:]).all()
    # T carries B's activations onto A's with A's covariance (gamma = 0: exactly)
    mapped = (acts_b[:, live] - acts_b[:, live].mean(0)) @ transform.numpy().T
    np.testing.assert_allclose(np.cov(mapped.T), sub(0, 0).numpy(), atol=1e-4)


def test_dead_units_need_a_ridge(shipped_pair, tiny_train) -> None:
    spec = permutation_spec(shipped_pair[0], example_input=tiny_train.images[:2])
    stats = collect_statistics(list(shipped_pair), data=tiny_train, spec=spec, progress=False)
    fc1 = stats["classifier.fc1"]
    assert (fc1.std(0) == 0).any(), "the quickstart model has dead fc1 units"
    with pytest.raises(ValueError, match=r"singular .* never vary.*gamma > 0"):
        canonical_correlation(fc1.block(0, 0), fc1.block(1, 1), fc1.block(0, 1), gamma=0.0)
    transform, rho = canonical_correlation(
        fc1.block(0, 0), fc1.block(1, 1), fc1.block(0, 1), gamma=0.01
    )
    assert torch.isfinite(transform).all() and torch.isfinite(rho).all()
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        canonical_correlation(fc1.block(0, 0), fc1.block(1, 1), fc1.block(0, 1), gamma=-1)


def test_too_few_samples_say_how_many_are_needed(shipped_pair, tiny_train) -> None:
    few = tiny_train.subset(torch.arange(40), "train")  # 40 images for 128 * width fc1 units
    hidden = shipped_pair[0].classifier.fc1.out_features
    expected = rf"'classifier\.fc1' has {hidden} channels .* only 40 .* {10 * hidden}"
    with pytest.raises(ValueError, match=expected):
        cca_align(*shipped_pair, data=few, gamma=0.0, progress=False)
    with pytest.warns(UserWarning, match="ridge keeps the result finite"):
        image = cca_align(*shipped_pair, data=few, gamma=0.1, progress=False)
    assert all(torch.isfinite(t).all() for t in image.state_dict().values())


def test_cca_recovers_a_planted_permutation(shipped_pair, mnist_train, mnist_test) -> None:
    model = shipped_pair[0]
    spec = permutation_spec(model, example_input=mnist_train.images[:2])
    permuted = wb.apply_permutation(model, spec=spec, perm=wb.random_permutation(spec, seed=7))
    before = state_copy(permuted)
    image = cca_align(model, permuted, data=mnist_train, spec=spec, gamma=1e-4, progress=False)
    assert_state_equal(permuted, before)
    stats = collect_statistics([model, permuted], data=mnist_train, spec=spec, progress=False)
    found = cca_maps(stats, 1e-4, spec, general_groups(permuted, spec=spec))
    for matrix in found.maps.values():  # fc1's dead units included
        # a permutation, to the float32 noise of the statistics (amplified by the small ridge)
        torch.testing.assert_close(matrix, matrix.round(), atol=1e-3, rtol=0)
    for name in ("features.conv1", "features.conv2", "features.conv3"):
        # conv1's channels are all functions of one 3x3 grey patch, so their covariance is
        # nearly singular and the ridge lowers the last canonical correlations a little
        assert (found.correlations[name] > 0.99).float().mean() >= 0.9
        assert found.correlations[name].min() > 0.85
    x = mnist_test.images[:500]
    with torch.no_grad():  # maps within float noise of a permutation keep the statistics
        got, expected = image.eval()(x), model.eval()(x)
    # exact to the statistics' float32 noise, which the tiny ridge amplifies (measured
    # 3e-4 on logits of size ~10): the dead fc1 units, which correlate with nothing, stay
    # dead (the undetermined part of U V^T is completed by a permutation, not a rotation)
    assert (got - expected).abs().max() < 1e-3


def test_align_with_cca_gives_a_model_in_the_reference_space(shipped_pair, mnist_train) -> None:
    model_a, model_b = shipped_pair
    aligned = wb.align(model_a, model_b, method="cca", data=mnist_train, gamma=0.3, progress=False)
    assert aligned.state_dict().keys() == model_b.state_dict().keys()
    distance = lambda m: sum(  # noqa: E731
        (p - q).square().sum() for p, q in zip(m.parameters(), model_a.parameters(), strict=True)
    )
    assert distance(aligned) < distance(model_b)
    with pytest.raises(ValueError, match="method='cca' needs data"):
        wb.align(model_a, model_b, method="cca")
    result = wb.alignment.match(
        model_a, model_b, method="cca", data=mnist_train, gamma=0.3, progress=False
    )
    assert result.kind == "linear" and not result.preserves_function
    assert result.options["gamma"] == 0.3
    again = wb.alignment.apply_alignment(model_b, result=result, data=mnist_train, model_a=model_a)
    assert states_equal(again.state_dict(), aligned.state_dict())
    with pytest.raises(ValueError, match=r"not a permutation: read result\.transform"):
        _ = result.permutation


def test_transform_state_rejects_maps_of_the_wrong_size(tiny_model) -> None:
    spec = permutation_spec(tiny_model, example_input=torch.zeros(2, 1, 28, 28))
    folded, folded_spec = fold_batchnorm(tiny_model, spec=spec)
    with pytest.raises(ValueError, match="must be 4x4"):
        transform_state(folded.state_dict(), folded_spec, {"features.conv1": torch.eye(5)})
