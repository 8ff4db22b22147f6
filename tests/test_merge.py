"""Weight-space merging: interpolation, averaging and BatchNorm statistics reset (RESET)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_state_equal, state_copy
from torch.nn.modules.batchnorm import _BatchNorm

import workbench as wb

TINY = {"width": 0.25, "in_channels": 1}


def _assert_states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _logits(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


# --- interpolate ----------------------------------------------------------------------------


def test_interpolate_endpoints_exact(shipped_pair):
    a, b = shipped_pair
    _assert_states_equal(wb.interpolate(a, b, alpha=0.0), a)
    _assert_states_equal(wb.interpolate(a, b, alpha=1.0), b)
    _assert_states_equal(wb.interpolate(a, b, alpha=0), a)
    _assert_states_equal(wb.interpolate(a, b, alpha=1), b)


def test_interpolate_alpha_zero_ignores_b_entirely():
    a = wb.create_model("cnn", **TINY)
    b = wb.create_model("cnn", **TINY)
    with torch.no_grad():
        b.features.conv1.weight[0, 0, 0, 0] = float("inf")
    _assert_states_equal(wb.interpolate(a, b, alpha=0.0), a)


def test_interpolate_midpoint_is_the_average(shipped_pair):
    a, b = shipped_pair
    mid = wb.interpolate(a, b, alpha=0.5).state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    for key, tensor in mid.items():
        if tensor.is_floating_point():
            assert torch.equal(tensor, (sa[key] + sb[key]) / 2), key
        else:  # BatchNorm's integer batch counter comes from the first model
            assert torch.equal(tensor, sa[key]), key
    # Genuinely new weights: neither endpoint.
    assert not torch.equal(mid["features.conv1.weight"], sa["features.conv1.weight"])
    assert not torch.equal(mid["features.conv1.weight"], sb["features.conv1.weight"])


def test_interpolate_general_alpha_and_extrapolation(shipped_pair):
    a, b = shipped_pair
    sa, sb = a.state_dict(), b.state_dict()
    for alpha in (0.3, 1.5, -0.5):
        out = wb.interpolate(a, b, alpha=alpha).state_dict()
        for key, tensor in out.items():
            if tensor.is_floating_point():
                expected = (1 - alpha) * sa[key] + alpha * sb[key]
                assert torch.allclose(tensor, expected, rtol=1e-6, atol=1e-7), (alpha, key)


def test_interpolate_leaves_inputs_unmodified(shipped_pair):
    a, b = shipped_pair
    before_a, before_b = state_copy(a), state_copy(b)
    out = wb.interpolate(a, b, alpha=0.5)
    assert out is not a and out is not b
    assert_state_equal(a, before_a)
    assert_state_equal(b, before_b)
    # The result shares no storage with its inputs.
    with torch.no_grad():
        wb.interpolate(a, b, alpha=0.0).features.conv1.weight.add_(1.0)
    assert_state_equal(a, before_a)


def test_interpolate_mismatched_width():
    narrow = wb.create_model("cnn", width=0.25, in_channels=1)
    wide = wb.create_model("cnn", width=0.5, in_channels=1)
    with pytest.raises(
        ValueError,
        match=r"features\.conv1\.weight of shape \(8, 1, 3, 3\).*\(4, 1, 3, 3\).*differ in width",
    ):
        wb.interpolate(narrow, wide, alpha=0.5)


def test_interpolate_mismatched_architecture():
    cnn = wb.create_model("cnn", width=0.25, in_channels=1)
    resnet = wb.create_model("resnet20", width=0.25, in_channels=1)
    with pytest.raises(
        ValueError,
        match=r"Model 1 \(ResNet20\) has a different architecture from model 0 \(SimpleCNN\)",
    ):
        wb.interpolate(cnn, resnet, alpha=0.5)
    no_bn = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    with pytest.raises(ValueError, match=r"features\.bn1"):
        wb.interpolate(cnn, no_bn, alpha=0.5)


def test_interpolate_mismatched_classes():
    a = wb.create_model("cnn", width=0.25, in_channels=1, num_classes=10)
    b = wb.create_model("cnn", width=0.25, in_channels=1, num_classes=5)
    with pytest.raises(ValueError, match=r"classifier\.fc2\.weight.*number of classes"):
        wb.interpolate(a, b, alpha=0.5)


# --- average ------------------------------------------------------------------------------


def test_average_of_identical_copies(shipped_pair, mnist_test):
    a = shipped_pair[0]
    merged = wb.average([a, copy.deepcopy(a), copy.deepcopy(a)])
    images = mnist_test.images[:200]
    assert torch.allclose(_logits(merged, images), _logits(copy.deepcopy(a), images), atol=1e-5)


def test_average_of_two_is_the_midpoint(shipped_pair):
    a, b = shipped_pair
    _assert_states_equal(wb.average([a, b]), wb.interpolate(a, b, alpha=0.5))
    _assert_states_equal(wb.average([a, b], weights=[0.25, 0.75]), wb.interpolate(a, b, alpha=0.75))


def test_average_weighted_three():
    torch.manual_seed(0)
    models = [wb.create_model("cnn", **TINY) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]
    merged = wb.average(models, weights=weights).state_dict()
    states = [m.state_dict() for m in models]
    for key, tensor in merged.items():
        if tensor.is_floating_point():
            expected = sum(w * s[key] for w, s in zip(weights, states, strict=True))
            assert torch.allclose(tensor, expected, atol=1e-7), key
    assert wb.average(models[:1]).state_dict().keys() == states[0].keys()


def test_average_leaves_inputs_unmodified(shipped_pair):
    a, b = shipped_pair
    before_a, before_b = state_copy(a), state_copy(b)
    wb.average([a, b], weights=[0.9, 0.1])
    assert_state_equal(a, before_a)
    assert_state_equal(b, before_b)


def test_average_weight_validation():
    models = [wb.create_model("cnn", **TINY) for _ in range(2)]
    with pytest.raises(ValueError, match="weights has 3 entries for 2 models"):
        wb.average(models, weights=[0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match=r"Weights must sum to 1, got 0\.8"):
        wb.average(models, weights=[0.5, 0.3])
    with pytest.raises(ValueError, match="Need at least one model"):
        wb.average([])


def test_average_mismatched_models():
    models = [wb.create_model("cnn", **TINY), wb.create_model("cnn", width=0.5, in_channels=1)]
    with pytest.raises(ValueError, match="differ in width"):
        wb.average(models)


# --- reset_bn -----------------------------------------------------------------------------


def _bn_layers(model):
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def test_reset_bn_changes_statistics_only(shipped_pair, mnist_test):
    a, b = shipped_pair
    merged = wb.interpolate(a, b, alpha=0.5)
    before = state_copy(merged)
    reset = wb.reset_bn(merged, data=mnist_test)
    assert_state_equal(merged, before)  # input untouched
    params = dict(reset.named_parameters())
    for name, tensor in merged.named_parameters():
        assert torch.equal(params[name], tensor), name
    for old, new in zip(_bn_layers(merged), _bn_layers(reset), strict=True):
        assert not torch.equal(old.running_mean, new.running_mean)
        assert not torch.equal(old.running_var, new.running_var)
        assert new.momentum == old.momentum == 0.1  # RESET runs with momentum 1, then restores
        assert int(new.num_batches_tracked) == len(mnist_test) // 500
    assert not reset.training


def test_reset_bn_returns_eval_mode_and_reset_bn__keeps_the_mode(mnist_test):
    """``reset_bn`` returns a new model, in eval mode as every returned model; the in-place
    ``reset_bn_`` leaves the model in the mode it was given."""
    model = wb.create_model("cnn", **TINY)
    model.train()
    reset = wb.reset_bn(model, data=mnist_test)
    assert not any(m.training for m in reset.modules())
    assert all(m.training for m in model.modules())
    wb.merging.reset_bn_(model, data=mnist_test)
    assert all(m.training for m in model.modules())


def _first_conv_output(model, images):
    with torch.no_grad():
        return model.features.conv1(images).double()


@pytest.mark.parametrize(("batch_size", "max_batches"), [(500, None), (250, None), (200, 2)])
def test_reset_bn_first_layer_is_exact_data_mean(shipped_pair, mnist_test, batch_size, max_batches):
    a, b = shipped_pair
    merged = wb.interpolate(a, b, alpha=0.5)
    reset = wb.reset_bn(merged, data=mnist_test, batch_size=batch_size, max_batches=max_batches)
    used = len(mnist_test) if max_batches is None else batch_size * max_batches
    out = _first_conv_output(merged, mnist_test.images[:used])
    mean = out.mean(dim=(0, 2, 3))
    var = out.var(dim=(0, 2, 3))
    bn = reset.features.bn1
    assert torch.allclose(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    # The (unbiased) variance over all of the data, not an average of per-batch variances.
    assert torch.allclose(bn.running_var.double(), var, rtol=1e-5)
    # The statistics of the merged model are not those of either parent.
    assert not torch.allclose(a.features.bn1.running_mean.double(), mean, rtol=1e-3)


def test_reset_bn_exact_with_uneven_last_batch(shipped_pair, mnist_test):
    a, b = shipped_pair
    merged = wb.interpolate(a, b, alpha=0.5)
    reset = wb.reset_bn(merged, data=mnist_test, batch_size=300)  # batches of 300, 300, 300, 100
    out = _first_conv_output(merged, mnist_test.images)
    bn = reset.features.bn1
    assert torch.allclose(bn.running_mean.double(), out.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert torch.allclose(bn.running_var.double(), out.var(dim=(0, 2, 3)), rtol=1e-5)


def test_reset_bn_without_batchnorm(mnist_test):
    model = wb.create_model("cnn", **TINY, batch_norm=False)
    with pytest.raises(ValueError, match="SimpleCNN has no BatchNorm layers"):
        wb.reset_bn(model, data=mnist_test)


def test_reset_bn_empty_data(mnist_test):
    empty = mnist_test.subset(torch.arange(0), "empty")
    with pytest.raises(ValueError, match="empty dataset"):
        wb.reset_bn(wb.create_model("cnn", **TINY), data=empty)


def test_reset_bn_wrong_input_shape(mnist_test):
    model = wb.create_model("cnn", width=0.25, in_channels=3)
    with pytest.raises(
        ValueError, match=r"SimpleCNN cannot take inputs of shape \(500, 1, 28, 28\)"
    ):
        wb.reset_bn(model, data=mnist_test)


def test_reset_bn_raises_midpoint_accuracy(shipped_pair, mnist_train, mnist_test):
    a, b = shipped_pair
    midpoint = wb.interpolate(a, b, alpha=0.5)
    naive = wb.evaluate(midpoint, eval_data=mnist_test)
    reset = wb.evaluate(wb.reset_bn(midpoint, data=mnist_train), eval_data=mnist_test)
    assert reset.accuracy > naive.accuracy + 0.1
    assert reset.loss < naive.loss
