"""Checkpoints: safetensors round trips, metadata, and every way a file can be refused."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import assert_state_equal, state_copy, states_equal
from safetensors.torch import save_file

import workbench as wb

TINY = {"width": 0.25, "in_channels": 1}


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = wb.create_model("cnn", **TINY)
    # Non-default BatchNorm statistics, so that buffers are checked too.
    with torch.no_grad():
        m.features.bn1.running_mean.uniform_(-1, 1)
        m.features.bn1.num_batches_tracked.fill_(17)
    return m


def test_round_trip(model, tmp_path):
    path = tmp_path / "m.safetensors"
    model.train()
    returned = wb.save_checkpoint(
        model, path, dataset="mnist-5k", seed=3, metrics={"test_accuracy": 0.5}
    )
    assert returned == path and path.is_file()
    loaded = wb.load_checkpoint(path)
    assert type(loaded) is type(model)
    assert states_equal(loaded.state_dict(), model.state_dict())
    assert not loaded.training
    assert all(not m.training for m in loaded.modules())
    meta = wb.checkpoint_metadata(loaded)
    assert meta["architecture"] == model.workbench_architecture
    assert meta["dataset"] == "mnist-5k"
    assert meta["seed"] == 3
    assert meta["metrics"] == {"test_accuracy": 0.5}
    assert meta["format"] == "merge-workbench/1"
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["workbench"] == wb.__version__
    for key in ("torchvision", "safetensors", "python"):
        assert meta["versions"][key]
    assert wb.read_metadata(path) == meta
    assert loaded.workbench_architecture == model.workbench_architecture


def test_round_trip_other_architecture(tmp_path):
    torch.manual_seed(1)
    model = wb.create_model("resnet20", width=0.25, num_classes=4, in_channels=3)
    path = wb.save_checkpoint(model, tmp_path / "sub" / "r.safetensors")  # folders created
    loaded = wb.load_checkpoint(path)
    assert states_equal(loaded.state_dict(), model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_refuses_overwrite(model, tmp_path):
    path = tmp_path / "m.safetensors"
    wb.save_checkpoint(model, path, seed=1)
    original = path.read_bytes()
    other = wb.create_model("cnn", **TINY)
    with pytest.raises(FileExistsError, match=r"exists; pass overwrite=True"):
        wb.save_checkpoint(other, path, seed=2)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left


def test_overwrite_replaces(model, tmp_path):
    path = tmp_path / "m.safetensors"
    wb.save_checkpoint(model, path, seed=1)
    torch.manual_seed(5)
    other = wb.create_model("cnn", **TINY)
    wb.save_checkpoint(other, path, overwrite=True, seed=2)
    loaded = wb.load_checkpoint(path)
    assert wb.read_metadata(path)["seed"] == 2
    assert states_equal(loaded.state_dict(), other.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize("name", ["m.pt", "m.safetensor", "m"])
def test_save_rejects_other_suffix(model, tmp_path, name):
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        wb.save_checkpoint(model, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_save_rejects_non_json_metadata(model, tmp_path):
    with pytest.raises(ValueError, match="JSON-serializable"):
        wb.save_checkpoint(model, tmp_path / "m.safetensors", extra=object())
    assert list(tmp_path.iterdir()) == []


def test_text_file_named_safetensors(tmp_path):
    path = tmp_path / "fake.safetensors"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(
        wb.CheckpointError, match=re.escape(str(path)) + " is not a safetensors file"
    ):
        wb.load_checkpoint(path)
    with pytest.raises(wb.CheckpointError, match=re.escape(str(path))):
        wb.read_metadata(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match=f"No checkpoint at {re.escape(str(path))}"):
        wb.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        wb.read_metadata(path)


def test_safetensors_without_metadata(model, tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(wb.CheckpointError, match=r"without workbench metadata.*model=") as info:
        wb.load_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(wb.CheckpointError, match="without workbench metadata"):
        wb.read_metadata(path)
    # With a model of the right architecture it loads.
    template = wb.create_model("cnn", **TINY)
    before = state_copy(template)
    loaded = wb.load_checkpoint(path, model=template)
    assert states_equal(loaded.state_dict(), model.state_dict())
    assert_state_equal(template, before)  # the template is copied, not filled
    assert not loaded.training


def test_invalid_json_metadata(model, tmp_path):
    path = tmp_path / "badjson.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"workbench": "{not json"})
    with pytest.raises(wb.CheckpointError, match="workbench metadata is not valid JSON") as info:
        wb.read_metadata(path)
    assert str(path) in str(info.value)
    with pytest.raises(wb.CheckpointError, match="not valid JSON"):
        wb.load_checkpoint(path)


def test_wrong_width_with_model(tmp_path):
    path = wb.save_checkpoint(
        wb.create_model("cnn", width=1, in_channels=1), tmp_path / "w1.safetensors"
    )
    wide = wb.create_model("cnn", width=2, in_channels=1)
    with pytest.raises(wb.CheckpointError, match="wrong shapes") as info:
        wb.load_checkpoint(path, model=wide)
    message = str(info.value)
    assert str(path) in message
    assert "features.conv1.weight: file (16, 1, 3, 3) vs model (32, 1, 3, 3)" in message
    assert "SimpleCNN" in message


def test_missing_and_unexpected_keys(tmp_path):
    path = wb.save_checkpoint(wb.create_model("cnn", **TINY), tmp_path / "bn.safetensors")
    no_bn = wb.create_model("cnn", **TINY, batch_norm=False)
    with pytest.raises(
        wb.CheckpointError, match=r"missing features\.conv1\.bias.*unexpected features\.bn1"
    ):
        wb.load_checkpoint(path, model=no_bn)


def test_metadata_architecture_does_not_match_tensors(tmp_path):
    model = wb.create_model("cnn", width=1, in_channels=1)
    path = tmp_path / "lie.safetensors"
    wb.save_checkpoint(
        model, path, architecture={"name": "cnn", "width": 0.5, "num_classes": 10, "in_channels": 1}
    )
    with pytest.raises(
        wb.CheckpointError, match=r"does not fit architecture 'cnn' \(.*width=0\.5\)"
    ) as info:
        wb.load_checkpoint(path)
    assert "wrong shapes" in str(info.value)
    assert str(path) in str(info.value)


def test_metadata_architecture_cannot_be_built(tmp_path):
    path = tmp_path / "bad.safetensors"
    wb.save_checkpoint(wb.create_model("cnn", **TINY), path, architecture={"name": "alexnet"})
    with pytest.raises(
        wb.CheckpointError, match=r"cannot rebuild architecture.*Unknown model 'alexnet'"
    ):
        wb.load_checkpoint(path)


def test_model_without_recorded_architecture(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    path = wb.save_checkpoint(model, tmp_path / "seq.safetensors")
    assert wb.read_metadata(path)["architecture"] is None
    with pytest.raises(
        wb.CheckpointError,
        match=r"records no architecture; pass load_checkpoint\(path, model=\.\.\.\)",
    ):
        wb.load_checkpoint(path)
    loaded = wb.load_checkpoint(path, model=torch.nn.Sequential(torch.nn.Linear(3, 2)))
    assert states_equal(loaded.state_dict(), model.state_dict())


def test_nan_weights_refused_at_save(model, tmp_path):
    with torch.no_grad():
        model.features.conv2.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    with pytest.raises(wb.CheckpointError, match=r"features\.conv2\.weight contain NaN") as info:
        wb.save_checkpoint(model, path)
    assert str(path) in str(info.value)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_nan_weights_refused_at_load(model, tmp_path):
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["classifier.fc1.bias"][3] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    with pytest.raises(wb.CheckpointError, match=r"classifier\.fc1\.bias contain NaN") as info:
        wb.load_checkpoint(path, model=wb.create_model("cnn", **TINY))
    assert str(path) in str(info.value)

    state["classifier.fc1.bias"][3] = float("inf")
    pt = tmp_path / "inf.pt"
    torch.save(state, pt)
    with pytest.raises(wb.CheckpointError, match=re.escape(str(pt)) + ".*NaN or Inf"):
        wb.load_checkpoint(pt, model=wb.create_model("cnn", **TINY))


def test_plain_pt_state_dict(model, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    loaded = wb.load_checkpoint(path, model=wb.create_model("cnn", **TINY))
    assert states_equal(loaded.state_dict(), model.state_dict())
    assert not loaded.training
    # Lightning-style {"state_dict": ...} wrappers load too.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, wrapped)
    loaded = wb.load_checkpoint(wrapped, model=wb.create_model("cnn", **TINY))
    assert states_equal(loaded.state_dict(), model.state_dict())


def test_plain_pt_needs_model(model, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(
        wb.CheckpointError, match=r"plain state dict with no architecture recorded.*model="
    ) as info:
        wb.load_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(wb.CheckpointError, match=r"only \.safetensors checkpoints carry metadata"):
        wb.read_metadata(path)


def test_pt_with_non_tensor_values(tmp_path):
    path = tmp_path / "ints.pt"
    torch.save({"a": 1, "b": torch.zeros(2)}, path)
    with pytest.raises(wb.CheckpointError, match="holds a dict, not a state dict of tensors"):
        wb.load_checkpoint(path, model=torch.nn.Linear(2, 2))
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(wb.CheckpointError, match="holds a list"):
        wb.load_checkpoint(path, model=torch.nn.Linear(2, 2))


def test_pickled_object_refused(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"a": object()}, path)
    with pytest.raises(wb.CheckpointError, match="pickled objects are refused") as info:
        wb.load_checkpoint(path, model=torch.nn.Linear(2, 2))
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(wb.CheckpointError, match="weights-only"):
        wb.load_checkpoint(path, model=torch.nn.Linear(2, 2))
    assert not marker.exists()
    with pytest.raises(wb.CheckpointError):
        wb.load_checkpoint(path)
    assert not marker.exists()
    # The payload works when unpickled unsafely: the check above is meaningful.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_read_metadata_of_shipped_checkpoint():
    path = wb.shipped_models_dir() / "cnn_mnist-5k_seed1.safetensors"
    meta = wb.read_metadata(path)
    assert meta["architecture"]["name"] == "cnn"
    assert meta["seed"] == 1
    assert meta["dataset"] == "mnist-5k"
    assert set(meta["recipe"]) == {"epochs", "lr", "batch_size", "translate"}
    json.dumps(meta)  # plain JSON data


def test_load_quickstart_models(shipped_pair, mnist_test):
    assert len(shipped_pair) == 2
    for seed, model in zip((0, 1), shipped_pair, strict=True):
        assert wb.checkpoint_metadata(model)["seed"] == seed
        assert not model.training
        metrics = wb.evaluate(model, eval_data=mnist_test)
        assert metrics.accuracy >= 0.97
        # The recorded test accuracy is the one measured here.
        assert metrics.accuracy == wb.checkpoint_metadata(model)["metrics"]["test_accuracy"]
    assert not torch.equal(
        shipped_pair[0].features.conv1.weight, shipped_pair[1].features.conv1.weight
    )


def test_load_quickstart_models_missing_seed():
    with pytest.raises(FileNotFoundError, match=r"cnn_mnist-5k_seed99\.safetensors.*README"):
        wb.load_quickstart_models((0, 99))


def test_load_into_a_given_model_keeps_the_file_metadata(tmp_path, tiny_model):
    path = wb.save_checkpoint(tiny_model, tmp_path / "m.safetensors", seed=7)
    loaded = wb.load_checkpoint(path, model=tiny_model)
    assert wb.checkpoint_metadata(loaded)["seed"] == 7
    assert wb.checkpoint_metadata(loaded)["versions"]["torch_threads"] == str(
        torch.get_num_threads()
    )
    cpu = torch.backends.cpu.get_cpu_capability()
    assert wb.checkpoint_metadata(loaded)["versions"]["cpu_capability"] == cpu
