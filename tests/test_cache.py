"""The result cache: keys follow content, hits return what was stored, damage is a miss;
caches live in the user cache folder (or ``$WORKBENCH_CACHE_DIR``), never in the checkout."""

from pathlib import Path

import numpy as np
import platformdirs
import pytest
import torch

import workbench
import workbench as wb
from workbench.alignment import get_method
from workbench.cache import CACHE_SECTIONS, ResultCache, cache_dir, default_cache
from workbench.data import default_data_root
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
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(2)))
    assert cache.key(data=loader, bn="reset") is None  # cannot be fingerprinted: not cached
    assert cache.key(options={"thing": object()}) is None
    assert ResultCache(tmp_path, enabled=False).key(model="abc") is None
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
    assert not cache.enabled and cache.root == tmp_path / "results"
    assert cache.store("curve", cache.key(x=1), {"a": torch.ones(1)}, {}) is None
    assert list(tmp_path.iterdir()) == []


def test_caches_default_to_the_user_cache_folder(monkeypatch):
    """Without $WORKBENCH_CACHE_DIR every cache lies in platformdirs' user cache folder,
    outside the source checkout (nothing is written: only the paths are read)."""
    monkeypatch.delenv("WORKBENCH_CACHE_DIR", raising=False)
    monkeypatch.delenv("WORKBENCH_DATA_DIR", raising=False)
    user = Path(platformdirs.user_cache_dir("merge-workbench", appauthor=False))
    checkout = Path(workbench.__file__).resolve().parents[1]
    assert cache_dir() == user
    assert {kind: cache_dir(kind) for kind in CACHE_SECTIONS} == {
        k: user / k for k in CACHE_SECTIONS
    }
    assert default_cache().root == ResultCache().root == user / "results"
    assert default_data_root() == user / "datasets"
    for path in (cache_dir(), default_cache().root, default_data_root()):
        assert not path.resolve().is_relative_to(checkout), path


def test_workbench_cache_dir_overrides_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_DATA_DIR", raising=False)
    assert cache_dir() == tmp_path
    assert default_cache().root == ResultCache().root == tmp_path / "results"
    assert default_data_root() == tmp_path / "datasets"
    cache = default_cache()
    written = cache.store("curve", cache.key(x=1), {"a": torch.ones(1)}, {})
    assert written == tmp_path / "results" / "curve" / f"{cache.key(x=1)}.safetensors"
    assert written.is_file()
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_root() == tmp_path / "elsewhere"  # datasets alone may go elsewhere
    assert default_cache().root == tmp_path / "results"


def test_unknown_cache_kind_is_refused():
    with pytest.raises(ValueError, match="Unknown cache section 'figures'"):
        cache_dir("figures")


def test_the_key_counts_each_input_by_what_determines_it(tmp_path, tiny_train):
    """Models by their fingerprint, data by content, methods and BatchNorm handlings by
    their registration and code, containers element-wise (ResultCache.key is the one place
    where inputs become a key)."""
    cache = ResultCache(tmp_path)
    model = torch.nn.Linear(3, 2)
    same = torch.nn.Linear(3, 2)
    same.load_state_dict(model.state_dict())
    assert cache.key(models=[model], data=tiny_train) == cache.key(models=[same], data=tiny_train)
    with torch.no_grad():
        same.bias.add_(1.0)
    assert cache.key(models=[model]) != cache.key(models=[same])
    assert cache.key(data=tiny_train) != cache.key(data=tiny_train.subset(range(10), "x"))
    assert cache.key(method=get_method("weight")) != cache.key(method=get_method("cca"))
    assert cache.key(bn=wb.get_bn("reset")) != cache.key(bn=wb.get_bn("repair"))
    assert cache.key(alphas=np.linspace(0, 1, 3)) == cache.key(alphas=(0.0, 0.5, 1.0))
    assert cache.key(splits={"test": tiny_train}) != cache.key(splits={"train": tiny_train})


def test_a_cache_argument_that_is_no_cache_is_refused(shipped_pair, tiny_train):
    """Every cached call resolves ``cache`` one way; before, a render or an exemplar scan
    given cache="off" failed deep inside with an AttributeError."""
    model = shipped_pair[0]
    for call in (
        lambda: wb.render_channels(
            model, layer="features.conv1", channels=[0], steps=1, cache="off"
        ),
        lambda: wb.top_exemplars(model, layer="features.conv1", data=tiny_train, cache="off"),
        lambda: wb.lmc_curve(model, shipped_pair[1], eval_data=tiny_train, alphas=2, cache=1),
    ):
        with pytest.raises(
            TypeError, match=r"cache must be True, False or a .*got 'off' \(str\)|got 1 \(int\)"
        ):
            call()
