"""The result cache: keys follow content, hits return what was stored, damage is a miss."""

import torch

from workbench.cache import ResultCache, default_cache
from workbench.fingerprints import data_fingerprint, fingerprint
from workbench.zoo import create_model


def test_fingerprint_follows_every_weight(tiny_model):
    first = fingerprint(tiny_model)
    assert first == fingerprint(tiny_model)
    copy = create_model("cnn", width=0.25, in_channels=1)
    copy.load_state_dict(tiny_model.state_dict())
    assert fingerprint(copy) == first
    with torch.no_grad():
        next(copy.parameters()).view(-1)[0] += 1e-6
    assert fingerprint(copy) != first
    copy.load_state_dict(tiny_model.state_dict())
    buffer = next(name for name, _ in copy.named_buffers() if "running_mean" in name)
    copy.get_buffer(buffer).add_(1.0)
    assert fingerprint(copy) != first


def test_data_fingerprint(tiny_train):
    assert data_fingerprint(tiny_train) == data_fingerprint(
        tiny_train.subset(range(len(tiny_train)), "x")
    )
    assert data_fingerprint(tiny_train) != data_fingerprint(tiny_train.subset(range(10), "x"))
    assert data_fingerprint(torch.utils.data.DataLoader(tiny_train)) is None


def test_store_load_clear(tmp_path):
    cache = ResultCache(tmp_path)
    key = cache.key(model="abc", alphas=[0.0, 0.5, 1.0], bn="reset")
    assert key == cache.key(bn="reset", alphas=[0.0, 0.5, 1.0], model="abc")
    assert key != cache.key(model="abc", alphas=[0.0, 0.5, 1.0], bn=None)
    assert cache.key(model=None, bn="reset") is None
    assert cache.load("curve", key) is None
    calls = []

    def compute():
        calls.append(1)
        return {"loss": torch.tensor([1.0, 2.0, 0.5])}, {"label": "weight", "n": 3}

    tensors, meta = cache.get_or_compute("curve", key, compute)
    again, meta_again = cache.get_or_compute("curve", key, compute)
    assert len(calls) == 1
    assert torch.equal(again["loss"], tensors["loss"]) and meta_again == meta == {
        "label": "weight",
        "n": 3,
    }
    cache.get_or_compute("curve", None, compute)
    assert len(calls) == 2, "an unhashable input is recomputed, never cached"
    (tmp_path / "keep.txt").write_text("user file")
    assert cache.clear() == 1
    assert cache.load("curve", key) is None
    assert (tmp_path / "keep.txt").read_text() == "user file"


def test_damaged_entry_is_a_miss(tmp_path):
    cache = ResultCache(tmp_path)
    key = cache.key(x=1)
    cache.store("plane", key, {"z": torch.zeros(2)}, {})
    cache.path("plane", key).write_bytes(b"\x00garbage")
    assert cache.load("plane", key) is None


def test_disabled_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("WORKBENCH_CACHE", "off")
    cache = default_cache()
    assert not cache.enabled and cache.root == tmp_path
    assert cache.store("curve", cache.key(x=1), {"a": torch.ones(1)}, {}) is None
    assert list(tmp_path.iterdir()) == []
