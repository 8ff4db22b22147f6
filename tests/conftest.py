"""Shared fixtures: the embedded mnist-5k splits, the shipped quickstart pair and tiny data.

The session-scoped objects are shared by many tests: tests must never modify them in place
(every public function of the package returns new models, and the tests check that).
"""

from __future__ import annotations

import copy
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

import workbench as wb
from workbench.vocabulary import STRICT


@pytest.fixture(scope="session", autouse=True)
def _private_result_cache(tmp_path_factory) -> None:
    """Tests (and the notebook kernels and commands they start, which inherit the
    environment) cache in a temporary folder, never in the user's cache folder:
    ``$WORKBENCH_CACHE_DIR`` holds every cache of the workbench (:func:`workbench.cache_dir`),
    datasets included once a user's ``$WORKBENCH_DATA_DIR`` is out of the way."""
    os.environ["WORKBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("workbench-cache"))
    os.environ.pop("WORKBENCH_DATA_DIR", None)


@pytest.fixture(scope="session", autouse=True)
def _strict_vocabulary() -> None:
    """The package never calls a function in a former spelling itself (a FutureWarning it
    raised would reach users who never wrote that call): such a call is an error here."""
    os.environ[STRICT] = "1"


@pytest.fixture(scope="session")
def mnist_train() -> wb.TensorImageDataset:
    return wb.load_dataset("mnist-5k", "train")


@pytest.fixture(scope="session")
def mnist_test() -> wb.TensorImageDataset:
    return wb.load_dataset("mnist-5k", "test")


@pytest.fixture(scope="session")
def shipped_pair():
    """The quickstart CNNs of seeds 0 and 1 (shared: do not modify)."""
    return tuple(wb.load_quickstart_models((0, 1)))


@pytest.fixture(scope="session")
def tiny_train(mnist_train) -> wb.TensorImageDataset:
    """256 training images (every 15th of the split)."""
    step = len(mnist_train) // 256
    return mnist_train.subset(torch.arange(0, step * 256, step), "train")


@pytest.fixture(scope="session")
def shuffled_tiny_train(tiny_train) -> wb.TensorImageDataset:
    """``tiny_train`` with its labels shuffled (seeded): nothing to learn, a training run
    on it ends at chance."""
    order = torch.randperm(len(tiny_train), generator=torch.Generator().manual_seed(0))
    return wb.TensorImageDataset(
        tiny_train.images, tiny_train.targets[order], tiny_train.info, "train"
    )


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    """A freshly initialized quarter-width CNN for 1-channel images (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return wb.create_model("cnn", width=0.25, in_channels=1)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of ``model``'s state dict, to check later that it was not modified."""
    return copy.deepcopy(model.state_dict())


def assert_state_equal(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``model``'s state dict equals ``state`` exactly (same keys too)."""
    current = model.state_dict()
    assert list(current) == list(state)
    for key, tensor in state.items():
        assert torch.equal(current[key], tensor), key


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def register():
    """``register(name, function, **declared)`` for one test: the method is registered
    with :func:`workbench.register_method`, and unregistered afterwards (the registry is
    then as it was)."""
    before = wb.methods()
    names = []

    def add(name, function, **declared) -> str:
        wb.register_method(name, **declared)(function)
        names.append(name)
        return name

    yield add
    for name in names:
        wb.alignment.unregister_method(name)
    assert wb.methods() == before
