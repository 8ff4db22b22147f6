"""Seeded training: reproducibility, isolation from global state, metrics and the recipe."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import assert_state_equal, state_copy, states_equal
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import workbench as wb
from workbench.training_health import DidNotLearnWarning, LastEpoch

TINY = {"width": 0.25, "in_channels": 1}
# 256 images at batch 64 for 2 epochs: 8 optimizer steps.
FAST = {"batch_size": 64, "device": "cpu", "progress": False}


def _train(model, data, seed, epochs=2, **kwargs):
    return wb.train_model(model, data=data, epochs=epochs, seed=seed, **{**FAST, **kwargs})


def test_same_seed_is_bit_identical(tiny_model, tiny_train):
    augment = wb.random_translate(2)
    first = _train(tiny_model, tiny_train, seed=3, augment=augment)
    second = _train(tiny_model, tiny_train, seed=3, augment=augment)
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key, tensor in first_state.items():
        assert torch.equal(tensor, second_state[key]), key
    # Training did change the weights.
    assert not torch.equal(first.features.conv1.weight, tiny_model.features.conv1.weight)


def test_different_seeds_differ(tiny_model, tiny_train):
    a = _train(tiny_model, tiny_train, seed=3)
    b = _train(tiny_model, tiny_train, seed=4)
    differing = [k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k])]
    assert "features.conv1.weight" in differing
    assert "classifier.fc2.weight" in differing


def test_input_model_not_modified(tiny_model, tiny_train):
    before = state_copy(tiny_model)
    tiny_model.train()
    trained = _train(tiny_model, tiny_train, seed=0)
    assert trained is not tiny_model
    assert_state_equal(tiny_model, before)
    assert tiny_model.training  # its mode is untouched too
    assert not trained.training  # the result comes back in eval mode


def test_global_rng_state_unchanged(tiny_model, tiny_train):
    torch.manual_seed(99)
    before = torch.get_rng_state()
    _train(tiny_model, tiny_train, seed=0, augment=wb.random_translate(1))
    assert torch.equal(torch.get_rng_state(), before)
    wb.train_models("cnn", [0, 1], tiny_train, 2, model_kwargs=TINY, **FAST)
    assert torch.equal(torch.get_rng_state(), before)


def test_result_does_not_depend_on_global_rng(tiny_model, tiny_train):
    torch.manual_seed(1)
    a = _train(tiny_model, tiny_train, seed=5)
    torch.manual_seed(2)
    b = _train(tiny_model, tiny_train, seed=5)
    assert states_equal(a.state_dict(), b.state_dict())


def test_training_run_metrics(tiny_model, tiny_train, mnist_test):
    run = wb.training_run(
        tiny_model, data=tiny_train, epochs=2, seed=0, eval_data=mnist_test, **FAST
    )
    model, metrics = run.model, run.metrics
    assert states_equal(model.state_dict(), _train(tiny_model, tiny_train, seed=0).state_dict())
    assert set(metrics) == {
        "epochs",
        "train_seconds",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
    }
    assert metrics["epochs"] == 2
    assert metrics["train_seconds"] > 0
    for split in ("train", "test"):
        assert 0.0 <= metrics[f"{split}_accuracy"] <= 1.0
        assert metrics[f"{split}_loss"] > 0
    train_eval = wb.evaluate(model, eval_data=tiny_train)
    test_eval = wb.evaluate(model, eval_data=mnist_test)
    assert metrics["train_accuracy"] == train_eval.accuracy
    assert metrics["train_loss"] == train_eval.loss
    assert metrics["test_accuracy"] == test_eval.accuracy
    assert metrics["test_loss"] == test_eval.loss


def test_training_run_without_test_data(tiny_model, tiny_train):
    metrics = wb.training_run(tiny_model, data=tiny_train, epochs=2, seed=0, **FAST).metrics
    assert "test_accuracy" not in metrics and "test_loss" not in metrics
    assert 0.0 <= metrics["train_accuracy"] <= 1.0


@pytest.mark.parametrize("epochs", [0, -1])
def test_epochs_must_be_positive(tiny_model, tiny_train, epochs):
    with pytest.raises(ValueError, match=f"epochs must be >= 1, got {epochs}"):
        wb.train_model(tiny_model, data=tiny_train, epochs=epochs, seed=0, progress=False)


def test_training_learns(tiny_train):
    torch.manual_seed(0)
    model = wb.create_model("cnn", width=0.5, in_channels=1)
    before = wb.evaluate(model, eval_data=tiny_train)
    trained = wb.train_model(model, data=tiny_train, epochs=6, seed=0, lr=0.1, **FAST)
    after = wb.evaluate(trained, eval_data=tiny_train)
    assert after.loss < before.loss
    assert after.accuracy > before.accuracy


def test_train_from_dataloader(tiny_model, tiny_train):
    loader = DataLoader(TensorDataset(tiny_train.images, tiny_train.targets), batch_size=64)
    a = wb.train_model(tiny_model, data=loader, epochs=2, seed=0, device="cpu", progress=False)
    b = wb.train_model(tiny_model, data=loader, epochs=2, seed=0, device="cpu", progress=False)
    assert states_equal(a.state_dict(), b.state_dict())
    assert not torch.equal(a.features.conv1.weight, tiny_model.features.conv1.weight)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
def test_any_number_of_optimizer_steps(tiny_model, tiny_train, steps):
    """epochs * batches per epoch may be any positive number (here: 1 epoch of `steps`)."""
    data = tiny_train.subset(torch.arange(steps * 8), "train")
    model = wb.train_model(
        tiny_model, data=data, epochs=1, seed=0, batch_size=8, device="cpu", progress=False
    )
    assert not torch.equal(model.features.conv1.weight, tiny_model.features.conv1.weight)


def test_random_translate(tiny_train):
    images = tiny_train.images[:16]
    gen = torch.Generator().manual_seed(0)
    shifted = wb.random_translate(2)(images, gen)
    assert shifted.shape == images.shape
    again = wb.random_translate(2)(images, torch.Generator().manual_seed(0))
    assert torch.equal(shifted, again)
    assert not torch.equal(shifted, images)
    # Each output is a translate of its input: some shift within +-2 pixels reproduces it.
    padded = torch.nn.functional.pad(images, [2] * 4)
    for i in range(len(images)):
        assert any(
            torch.equal(shifted[i], padded[i, :, dy : dy + 28, dx : dx + 28])
            for dy in range(5)
            for dx in range(5)
        )
    unshifted = wb.random_translate(0)(images, gen)
    assert torch.equal(unshifted, images)


def test_train_models_differ_only_by_seed(tiny_train):
    models = wb.train_models("cnn", [0, 1], tiny_train, 2, model_kwargs=TINY, **FAST)
    assert len(models) == 2
    a, b = models
    assert (
        a.workbench_architecture
        == b.workbench_architecture
        == {"name": "cnn", **TINY, "num_classes": 10}
    )
    sa, sb = a.state_dict(), b.state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    assert not torch.equal(sa["features.conv1.weight"], sb["features.conv1.weight"])


def test_train_models_seed_sets_init_and_training(tiny_train):
    [from_models] = wb.train_models("cnn", [7], tiny_train, 2, model_kwargs=TINY, **FAST)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        init = wb.create_model("cnn", **TINY)
    by_hand = wb.train_model(init, data=tiny_train, epochs=2, seed=7, **FAST)
    assert states_equal(from_models.state_dict(), by_hand.state_dict())


def test_training_runs_metrics(tiny_train, mnist_test):
    [run] = wb.training_runs(
        "cnn", [0], tiny_train, 2, model_kwargs=TINY, eval_data=mnist_test, **FAST
    )
    assert run.metrics["test_accuracy"] == wb.evaluate(run.model, eval_data=mnist_test).accuracy
    [model] = wb.train_models("cnn", [0], tiny_train, 2, model_kwargs=TINY, **FAST)
    assert states_equal(model.state_dict(), run.model.state_dict())


@pytest.fixture
def two_threads():
    """CPU results depend on how reductions are split across threads: the shipped
    checkpoints were trained with torch's default on a 2-core machine, i.e. 2 threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_retraining_reproduces_shipped_checkpoint(mnist_train, mnist_test, two_threads):
    """The shipped seed-0 checkpoint, retrained from its own recorded recipe: bit for bit
    where the checkpoint records this machine's CPU kernels, else (its file predates that
    record, or it was trained on another kind of CPU, whose kernels sum in another order and
    so take another path through training) a model as good as the recorded one."""
    path = wb.shipped_models_dir() / "cnn_mnist-5k_seed0.safetensors"
    metadata = wb.read_metadata(path)
    recipe = metadata["recipe"]
    arch = dict(metadata["architecture"])
    name = arch.pop("name")
    assert metadata["dataset"] == "mnist-5k"
    [model] = wb.train_models(
        name,
        [metadata["seed"]],
        mnist_train,
        recipe["epochs"],
        model_kwargs=arch,
        lr=recipe["lr"],
        batch_size=recipe["batch_size"],
        augment=wb.random_translate(recipe["translate"]) if recipe["translate"] else None,
        device="cpu",
        progress=False,
    )
    shipped = load_file(str(path))
    state = model.state_dict()
    assert shipped.keys() == state.keys()
    versions = metadata["versions"]
    same_kernels = versions.get("cpu_capability") == torch.backends.cpu.get_cpu_capability()
    same_kernels &= versions["torch_threads"] == str(torch.get_num_threads())
    if same_kernels:
        for key, tensor in shipped.items():
            assert torch.equal(state[key], tensor), key
    else:
        accuracy = wb.evaluate(model, eval_data=mnist_test).accuracy
        assert abs(accuracy - metadata["metrics"]["test_accuracy"]) < 0.01, accuracy


def _dead_cnn() -> torch.nn.Module:
    """A CNN without normalization whose convolutions' outputs are all far below zero: every
    ReLU is dead, so its output does not depend on the image (what a too high learning
    rate leaves behind)."""
    torch.manual_seed(0)
    model = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias.fill_(-100.0)
    return model


def test_a_run_that_learns_nothing_says_so(tiny_train):
    with pytest.warns(DidNotLearnWarning, match=r"seed=0\) did not learn.*lower lr \(was 0.05\)"):
        trained = _train(_dead_cnn(), tiny_train, seed=0, epochs=3)
    logits = trained(tiny_train.images[:64])
    assert torch.allclose(logits, logits[:1].expand_as(logits))  # the same for every image


def test_a_run_that_learns_warns_nothing(tiny_train):
    """64 steps: a last-epoch loss near 1.4, far below the labels' entropy (2.3)."""
    model = wb.create_model("cnn", width=0.5, in_channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DidNotLearnWarning)
        _train(model, tiny_train, 0, epochs=8, lr=0.1, batch_size=32)


def test_the_label_entropy_is_the_chance_loss():
    last = LastEpoch()
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 5])
    for part in labels.split(3):
        last.add(1.0, part)
    counts = torch.bincount(labels).double()
    p = counts[counts > 0] / len(labels)
    assert last.count == 7 and last.total == pytest.approx(7.0)
    expected = float(-(p * p.log()).sum())
    with pytest.warns(DidNotLearnWarning, match=f"label frequencies \\({expected:.3f}\\)"):
        _with_loss(labels, expected).check("a run", 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DidNotLearnWarning)
        _with_loss(labels, expected - 0.05).check("a run", 0.1)


def _with_loss(labels: torch.Tensor, loss: float) -> LastEpoch:
    last = LastEpoch()
    last.add(loss, labels)
    return last


def test_a_diverging_run_stops_with_a_clear_error(tiny_train):
    torch.manual_seed(0)
    model = wb.create_model("cnn", width=0.25, in_channels=1, batch_norm=False)
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at step \d+.*Lower lr"):
        _train(model, tiny_train, seed=0, epochs=2, lr=1e12)


def test_a_job_that_learns_nothing_says_so_in_the_caller(
    shuffled_tiny_train, monkeypatch, tmp_path
):
    """Jobs run where the caller's warnings filters and display are not: the message
    comes back with the result (and again from the cache)."""
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    shuffled = shuffled_tiny_train
    kwargs = {"model_kwargs": TINY, "batch_size": 64, "progress": False}
    for _ in range(2):  # trained, then read from the cache
        with ThreadPoolExecutor(2) as pool, pytest.warns(DidNotLearnWarning) as caught:
            wb.train_models("cnn", [0, 1], shuffled, 2, executor=pool, **kwargs)
        assert sorted(str(w.message)[:24] for w in caught) == [
            "train_model(seed=0) did ",
            "train_model(seed=1) did ",
        ]
