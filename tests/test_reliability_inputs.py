"""Bad input never gives a silently wrong number: every kind of bad data, model and
argument found in the reliability study is refused with a clear error (its type and a
message naming the problem), raised before the expensive work.

One test per kind; each asserts the exact error type and a fragment of the message."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import workbench as wb
from workbench import validation

TINY = {"width": 0.25, "in_channels": 1}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return wb.create_model("cnn", **TINY).eval()


@pytest.fixture(scope="module")
def pair() -> list[nn.Module]:
    torch.manual_seed(1)
    return [wb.create_model("cnn", **TINY).eval() for _ in range(2)]


@pytest.fixture(scope="module")
def small(tiny_train) -> wb.TensorImageDataset:
    return tiny_train


def _with_image(data: wb.TensorImageDataset, index: int, value: float) -> wb.TensorImageDataset:
    images = data.images.clone()
    images[index, 0, 3, 3] = value
    return wb.TensorImageDataset(images, data.targets.clone(), data.info, data.split)


def _with_label(data: wb.TensorImageDataset, index: int, value: int) -> wb.TensorImageDataset:
    targets = data.targets.clone()
    targets[index] = value
    return wb.TensorImageDataset(data.images.clone(), targets, data.info, data.split)


class _Listed(Dataset):
    """A map-style dataset that is not in memory as whole tensors (checked as it streams)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


# -- data ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_one_non_finite_image_is_refused_by_every_pass(pair, small, value) -> None:
    bad = _with_image(small, len(small) - 1, value)  # the last image: not in a first batch
    model_a, model_b = pair
    message = r"1 examples with NaN or infinite values \(the first at position"
    with pytest.raises(ValueError, match=message):
        wb.activation_matching(model_a, model_b, data=bad)
    with pytest.raises(ValueError, match=message):
        wb.reset_bn(model_a, data=bad)
    with pytest.raises(ValueError, match=message):
        wb.evaluate(model_a, eval_data=bad)
    with pytest.raises(ValueError, match=message):
        wb.lmc_curve(model_a, model_b, eval_data=bad, alphas=3, cache=False, progress=False)
    with pytest.raises(ValueError, match=message):
        wb.top_exemplars(model_a, layer="features.conv1", data=bad, channels=[0], k=2)


def test_non_finite_batch_of_a_loader_is_refused_while_streaming(model, small) -> None:
    images = small.images[:64].clone()
    images[50] = math.nan
    loader = DataLoader(_Listed(images, small.targets[:64]), batch_size=16)
    with pytest.raises(ValueError, match="batch of the data holds 1 examples with NaN"):
        wb.evaluate(model, eval_data=loader)
    with pytest.raises(ValueError, match="NaN or infinite"):
        wb.reset_bn(model, data=loader)


@pytest.mark.parametrize(
    ("label", "fragment"),
    [(-100, r"labels \[-100\] outside \[0, 10\)"), (10, r"labels \[10\] outside"), (-1, "-1")],
)
def test_labels_outside_the_classes_are_refused(pair, small, label, fragment) -> None:
    bad = _with_label(small, len(small) - 1, label)  # the last example, not the first two
    with pytest.raises(ValueError, match=fragment):
        wb.evaluate(pair[0], eval_data=bad)
    with pytest.raises(ValueError, match=fragment):
        wb.lmc_curve(pair[0], pair[1], eval_data=bad, alphas=3, cache=False, progress=False)
    with pytest.raises(ValueError, match=fragment):
        wb.train_model(pair[0], data=bad, epochs=1, seed=0, progress=False)


def test_float_one_hot_labels_are_refused(model, small) -> None:
    one_hot = torch.nn.functional.one_hot(small.targets[:32], 10).float()
    with pytest.raises(TypeError, match=r"labels are torch.float32 of shape \(32, 10\)"):
        wb.evaluate(model, eval_data=TensorDataset(small.images[:32], one_hot))
    with pytest.raises(TypeError, match=r"labels\.argmax"):
        wb.evaluate(
            model, eval_data=DataLoader(TensorDataset(small.images[:32], one_hot), batch_size=8)
        )


def test_labels_that_do_not_match_the_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="32 inputs but 31 labels"):
        validation.check_labels(torch.zeros(31, dtype=torch.long), 10, count=32)


def test_empty_data_is_refused(pair, small) -> None:
    empty = TensorDataset(small.images[:0], small.targets[:0])
    with pytest.raises(ValueError, match="empty"):
        wb.evaluate(pair[0], eval_data=empty)
    with pytest.raises(ValueError, match="empty"):
        wb.align(pair[0], pair[1], method="activation", data=empty)
    with pytest.raises(ValueError, match="empty"):
        wb.lmc_curve(pair[0], pair[1], eval_data=empty, alphas=3, cache=False, progress=False)


def test_data_without_labels_serves_passes_that_need_none(pair, small) -> None:
    images = small.images[:128]
    unlabelled = DataLoader(TensorDataset(images), batch_size=32)
    labelled = DataLoader(TensorDataset(images, small.targets[:128]), batch_size=32)
    found = wb.activation_matching(*pair, data=unlabelled, progress=False)
    expected = wb.activation_matching(*pair, data=labelled, progress=False)
    assert found.keys() == expected.keys()
    assert all(torch.equal(found[k], expected[k]) for k in found)
    reset = wb.reset_bn(pair[0], data=DataLoader(images, batch_size=32))  # bare tensors
    ref = wb.reset_bn(pair[0], data=labelled)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(reset.state_dict()[key], value)
    with pytest.raises(ValueError, match="has no labels, and they are needed here"):
        wb.evaluate(pair[0], eval_data=unlabelled)


def test_not_a_dataset_is_refused(model) -> None:
    with pytest.raises(TypeError, match="must be a torch Dataset or DataLoader, got Tensor"):
        wb.evaluate(model, eval_data=torch.zeros(4, 1, 28, 28))


# -- models -------------------------------------------------------------------------------
class _TupleOutput(nn.Module):
    def __init__(self, inner: nn.Module, as_dict: bool = False) -> None:
        super().__init__()
        self.inner, self.as_dict = inner, as_dict

    def forward(self, x: torch.Tensor):
        logits = self.inner(x)
        return {"logits": logits, "aux": logits.detach()} if self.as_dict else (logits, x.mean())


@pytest.mark.parametrize(("as_dict", "hint"), [(False, "select_output(model, 0)"),
                                                (True, "select_output(model, 'logits')")])  # fmt: skip
def test_a_model_returning_a_tuple_or_dict_gets_the_way_to_pick_its_logits(
    model, small, as_dict, hint
) -> None:
    wrapped = _TupleOutput(model, as_dict)
    kind = "dict" if as_dict else "tuple"
    with pytest.raises(TypeError, match=rf"returns a {kind}.*{re.escape(hint)}"):
        wb.evaluate(wrapped, eval_data=small)
    picked = wb.modules.select_output(wrapped, "logits" if as_dict else 0)
    assert wb.evaluate(picked, eval_data=small) == wb.evaluate(model, eval_data=small)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_models_of_another_dtype_are_refused_with_the_conversion(pair, small, dtype) -> None:
    other = wb.create_model("cnn", **TINY).to(dtype)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(TypeError, match=rf"has {name} parameters.*model\.float\(\)"):
        wb.evaluate(other, eval_data=small)
    with pytest.raises(TypeError, match=rf"model 1 \(SimpleCNN\) has {name}"):
        wb.interpolate(pair[0], other, alpha=0.5)
    with pytest.raises(TypeError, match=name):
        wb.align(pair[0], other, method="weight")


def test_not_a_model_is_refused(pair) -> None:
    with pytest.raises(TypeError, match=r"model 1 must be a torch\.nn\.Module, got OrderedDict"):
        wb.interpolate(pair[0], pair[1].state_dict(), alpha=0.5)


# -- arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [math.nan, math.inf, "0.5", None])
def test_interpolate_refuses_a_bad_alpha(pair, alpha) -> None:
    error = TypeError if isinstance(alpha, str) or alpha is None else ValueError
    with pytest.raises(error, match="alpha must be a"):
        wb.interpolate(*pair, alpha=alpha)


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [([math.nan, 1.0], r"weights\[0\] must be a finite"), ([1.0], "1 entries for 2 models"),
     ([0.0, 0.0], "all zero"), ([True, False], "must be a number")],
)  # fmt: skip
def test_average_refuses_bad_weights(pair, weights, fragment) -> None:
    with pytest.raises((ValueError, TypeError), match=fragment):
        wb.average(pair, weights=weights)


def test_lmc_refuses_bad_alphas_and_batch_sizes(pair, small) -> None:
    with pytest.raises(ValueError, match="finite"):
        wb.lmc_curve(*pair, eval_data=small, alphas=[0.0, math.nan, 1.0], cache=False)
    with pytest.raises(ValueError, match="at least 2 points"):
        wb.lmc_curve(*pair, eval_data=small, alphas=1, cache=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        wb.lmc_curve(*pair, eval_data=small, alphas=3, batch_size=0, cache=False)


def test_weight_matching_refuses_a_negative_max_iter(pair) -> None:
    with pytest.raises(ValueError, match="max_iter must be >= 1, got -1"):
        wb.weight_matching(*pair, max_iter=-1)
    with pytest.raises(TypeError, match=r"max_iter must be an integer, got 2.5"):
        wb.weight_matching(*pair, max_iter=2.5)


def test_merge_many_refuses_a_bool_reference(pair, small) -> None:
    with pytest.raises(TypeError, match="reference must be an integer, got True"):
        wb.merge_many(pair, data=small, reference=True)
    with pytest.raises(ValueError, match=r"reference must be 'best' or a model index in \[0, 1\]"):
        wb.merge_many(pair, data=small, reference="worst")
    with pytest.raises(ValueError, match=r"reference must be in \[0, 1\], got 2"):
        wb.merge_many(pair, data=small, reference=2)


def test_render_channels_refuses_bad_steps_and_channels(model) -> None:
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        wb.render_channels(model, layer="features.conv1", channels=[0], steps=0, cache=False)
    with pytest.raises(TypeError, match=r"channels of layer 'features.conv1'\[0\] must be an integer, got 1.5"):  # fmt: skip
        wb.render_channels(model, layer="features.conv1", channels=[1.5], steps=1, cache=False)
    with pytest.raises(ValueError, match=r"must be in \[0, 3\], got 4"):
        wb.render_channels(model, layer="features.conv1", channels=[4], steps=1, cache=False)
    with pytest.raises(ValueError, match="lr must be a finite number, got nan"):
        wb.render_channels(
            model, layer="features.conv1", channels=[0], steps=1, lr=math.nan, cache=False
        )


def test_training_refuses_bad_hyperparameters(model, small) -> None:
    with pytest.raises(ValueError, match="lr must be a finite number, got nan"):
        wb.train_model(model, data=small, epochs=1, seed=0, lr=math.nan, progress=False)
    with pytest.raises(TypeError, match=r"epochs must be an integer, got 1\.0"):
        wb.train_model(model, data=small, epochs=1.0, seed=0, progress=False)
    with pytest.raises(TypeError, match="seed must be an integer, got None"):
        wb.train_model(model, data=small, epochs=1, seed=None, progress=False)


def test_plane_refuses_a_bool_resolution(small) -> None:
    models = [wb.create_model("cnn", **TINY) for _ in range(3)]
    with pytest.raises(TypeError, match="resolution must be an integer, got True"):
        wb.loss_plane(models, eval_data=small, resolution=True, cache=False)


def test_bad_arguments_fail_before_the_expensive_work(pair, small, monkeypatch) -> None:
    """The checks run before any pass over the data: a pass would call ``batches``."""
    import workbench.data as data_module

    def no_pass(*_args, **_kwargs):
        raise AssertionError("a data pass started before the arguments were checked")

    for module in ("workbench.alignment.statistics", "workbench.alignment.calibration"):
        monkeypatch.setattr(f"{module}.batches", no_pass)
    monkeypatch.setattr(data_module, "train_val_split", no_pass)
    with pytest.raises(TypeError, match="reference must be an integer"):
        wb.merge_many(pair, data=small, method="activation", reference=True)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        wb.activation_matching(*pair, data=small, batch_size=0)


def test_an_example_input_that_does_not_fit_is_one_clear_error(model) -> None:
    with pytest.raises(ValueError, match=r"cannot run on the example input of shape \(2, 3, 28, 28\): Given groups=1"):  # fmt: skip
        wb.permutation_spec(model, example_input=torch.zeros(2, 3, 28, 28))
    with pytest.raises(TypeError, match=r"example_input must be a tensor .* got \['Tensor', 'int'\]"):  # fmt: skip
        wb.permutation_spec(model, example_input=(torch.zeros(2, 1, 28, 28), 1))


def test_tied_weights_are_never_permuted_as_if_they_were_two() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))))

    model, x = Tied(), torch.randn(5, 6)
    unchecked = wb.permutation_spec(model, example_input=x, verify=False)
    with pytest.raises(ValueError, match="one shared tensor"):
        wb.apply_permutation(model, spec=unchecked, perm=wb.random_permutation(unchecked, seed=0))
    spec = wb.permutation_spec(model, example_input=x)  # verified: the tied groups are frozen
    permuted = wb.apply_permutation(model, spec=spec, perm=wb.random_permutation(spec, seed=0))
    torch.testing.assert_close(permuted(x), model(x))


def test_an_in_place_change_after_a_first_pass_is_checked_again(model, small) -> None:
    data = small.subset(torch.arange(64), "train")
    wb.evaluate(model, eval_data=data)  # checked once, remembered
    data.images[10, 0, 0, 0] = math.nan  # an in-place edit bumps the version counter
    with pytest.raises(ValueError, match=r"NaN or infinite values \(the first at position 10\)"):
        wb.evaluate(model, eval_data=data)
