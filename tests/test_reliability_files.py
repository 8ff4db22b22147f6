"""Honest caches and safe files (issue 17): nothing silently wrong, nothing lost.

Each case is one complaint of the user study, reproduced as it happened: a cached result
returned for a model or data that computes something else, a damaged or foreign cache
entry, ``clear`` reaching outside the cache, two processes saving to one path, files
created without the user's umask, a read-only folder found only after the work, and
checkpoint files that load wrongly or are reported as something they are not.

The tests run as root here, and root ignores permission bits: the permission cases run in
a child process without the capabilities that bypass them (``setpriv``), and the other
unwritable folders are paths under a regular file, which no user can write to.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

import workbench as wb
import workbench.files as files
from workbench.cache import ResultCache
from workbench.cli import main
from workbench.fingerprints import data_fingerprint, fingerprint

ROOT = Path(__file__).resolve().parents[1]


def _model(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return wb.create_model("cnn", width=0.25, in_channels=1)


def _entries(cache: ResultCache, kind: str) -> list[Path]:
    return sorted((cache.root / kind).glob("*.safetensors"))


def _curve(a: nn.Module, b: nn.Module, data, cache: ResultCache) -> wb.LMCCurve:
    return wb.lmc_curve(a, b, eval_data=data, alphas=3, cache=cache, progress=False)


def _without_permission_override(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python child to which file permissions apply: as root, without
    the capabilities that bypass them."""
    command = [sys.executable, "-c", textwrap.dedent(code)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


# -- stale hits: a cached result for something that computes differently ---------------------


def test_changed_batchnorm_eps_is_not_served_a_stale_curve(tmp_path, tiny_train):
    cache = ResultCache(tmp_path)
    a, b = _model(0), _model(1)
    first = _curve(a, b, tiny_train, cache)
    a_eps, b_eps = copy.deepcopy(a), copy.deepcopy(b)
    for model in (a_eps, b_eps):
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = 0.5  # the weights are equal, the function is not
    second = _curve(a_eps, b_eps, tiny_train, cache)
    assert len(_entries(cache, "lmc")) == 2
    assert not (first.loss == second.loss).all()


def _net_class(activation: str) -> type:
    """A class ``Net`` whose forward uses ``activation``, defined as a notebook cell
    redefines it: same module, same qualname, no source file to read."""
    namespace = {"nn": nn, "torch": torch, "__name__": __name__}
    source = f"""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            x = torch.{activation}(self.bn(self.conv(x)))
            return self.fc(x.mean((2, 3)))
    """
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), namespace)
    return namespace["Net"]


def test_same_weights_under_another_activation_is_not_served_a_stale_curve(tmp_path, tiny_train):
    cache = ResultCache(tmp_path)
    relu, tanh = _net_class("relu"), _net_class("tanh")
    assert relu.__qualname__ == tanh.__qualname__ and relu.__module__ == tanh.__module__
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a, b = relu(), relu()
    a_tanh, b_tanh = tanh(), tanh()
    a_tanh.load_state_dict(a.state_dict())
    b_tanh.load_state_dict(b.state_dict())
    first = _curve(a, b, tiny_train, cache)
    second = _curve(a_tanh, b_tanh, tiny_train, cache)
    assert len(_entries(cache, "lmc")) == 2
    assert not (first.loss == second.loss).all()


def test_other_input_normalization_is_not_served_a_stale_rendering(tmp_path):
    model = _model(0)
    loaded = {}
    for dataset in ("mnist", "fashion-mnist"):  # other mean and std, same weights
        path = wb.save_checkpoint(model, tmp_path / f"{dataset}.safetensors", dataset=dataset)
        loaded[dataset] = wb.load_checkpoint(path)
    cache = ResultCache(tmp_path / "cache")
    images = {
        name: wb.render_channels(
            m, layer="features.conv1", channels=[0], steps=2, cache=cache, progress=False
        )
        for name, m in loaded.items()
    }
    assert len(_entries(cache, "render")) == 2
    assert not torch.equal(images["mnist"], images["fashion-mnist"])


def test_data_fingerprint_covers_normalization_and_transforms(tiny_train):
    info = dataclasses.replace(tiny_train.info, mean=(0.5,), std=(0.25,))  # same name
    renormalized = wb.TensorImageDataset(tiny_train.images, tiny_train.targets, info, "train")
    assert renormalized.info.name == tiny_train.info.name
    assert data_fingerprint(renormalized) != data_fingerprint(tiny_train)
    flipped = tiny_train.subset(range(len(tiny_train)), "train")
    flipped.transform = lambda x: x.flip(-1)
    shifted = tiny_train.subset(range(len(tiny_train)), "train")
    shifted.transform = lambda x: x + 1
    assert data_fingerprint(flipped) != data_fingerprint(shifted)
    assert data_fingerprint(flipped) != data_fingerprint(tiny_train)


def test_fingerprints_are_stable_across_processes(shipped_pair, tiny_train):
    code = """
        import torch
        import workbench as wb
        from workbench.fingerprints import data_fingerprint
        model = wb.load_quickstart_models((0,))[0]
        train = wb.load_dataset("mnist-5k", "train")
        step = len(train) // 256
        tiny = train.subset(torch.arange(0, step * 256, step), "train")
        print(wb.fingerprint(model), data_fingerprint(tiny))
    """
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [fingerprint(shipped_pair[0]), data_fingerprint(tiny_train)]


# -- damaged and foreign cache entries are misses -----------------------------------------------


def test_truncated_entry_is_recomputed(tmp_path):
    cache = ResultCache(tmp_path)
    key = cache.key(x=1)
    path = cache.store("curve", key, {"loss": torch.arange(100.0)}, {"n": 100})
    path.write_bytes(path.read_bytes()[:60])  # an interrupted copy
    calls = []

    def compute():
        calls.append(1)
        return {"loss": torch.ones(3)}, {"n": 3}

    tensors, meta = cache.get_or_compute("curve", key, compute)
    assert calls == [1] and meta == {"n": 3} and torch.equal(tensors["loss"], torch.ones(3))


def test_foreign_entry_without_the_tensors_read_is_a_miss(tmp_path, tiny_train):
    cache = ResultCache(tmp_path)
    a, b = _model(0), _model(1)
    first = _curve(a, b, tiny_train, cache)
    [entry] = _entries(cache, "lmc")
    tensors = load_file(entry)
    with safe_open(entry, framework="pt") as handle:
        header = handle.metadata()
    del tensors["0/loss"]  # another tool's entry under the same name
    save_file(tensors, str(entry), metadata=header)
    assert cache.load("lmc", entry.stem) is not None  # readable as a file, incomplete
    again = _curve(a, b, tiny_train, cache)  # a miss, recomputed: no KeyError
    assert (again.loss == first.loss).all()
    assert "0/loss" in load_file(entry)  # and stored whole again


def test_expect_and_valid_reject_entries(tmp_path):
    cache = ResultCache(tmp_path)
    key = cache.key(x=2)
    cache.store("plane", key, {"x": torch.zeros(3)}, {"resolution": 3})
    assert cache.load("plane", key, expect=("x",)) is not None
    assert cache.load("plane", key, expect=("x", "y")) is None
    assert cache.load("plane", key, valid=lambda t, _: t["x"].shape == (5,)) is None
    assert cache.load("plane", key, valid=lambda t, m: m["missing"]) is None  # raises: a miss


# -- clear stays inside the cache ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["../x", "/abs", "a/b", "..", "."])
def test_clear_refuses_kinds_that_are_not_plain_names(tmp_path, kind):
    cache = ResultCache(tmp_path / "root" / "cache")
    outside = tmp_path / "root" / "x"
    outside.mkdir(parents=True)
    (outside / "user.safetensors").write_bytes(b"the user's own file")
    if kind == "/abs":
        kind = str(outside)
    with pytest.raises(ValueError, match="must be a plain name"):
        cache.clear(kind)
    assert (outside / "user.safetensors").read_bytes() == b"the user's own file"


def test_clear_refuses_a_kind_linked_outside(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "user.safetensors").write_bytes(b"keep")
    cache.root.mkdir()
    (cache.root / "lmc").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the cache"):
        cache.clear("lmc")
    assert cache.clear() == 0
    assert (outside / "user.safetensors").read_bytes() == b"keep"


# -- unwritable caches and output folders fail before the work -------------------------------


def _must_not_run():
    raise AssertionError("computed before the cache was checked writable")


def test_cache_root_that_is_a_file_fails_before_compute(tmp_path):
    root = tmp_path / "cache"
    root.write_text("not a folder")
    cache = ResultCache(root)
    with pytest.raises(NotADirectoryError, match=r"result cache folder .*is not a folder"):
        cache.get_or_compute("lmc", cache.key(x=1), _must_not_run)
    with pytest.raises(NotADirectoryError, match="WORKBENCH_CACHE_DIR"):
        cache.store("lmc", cache.key(x=1), {"a": torch.ones(1)}, {})
    assert root.read_text() == "not a folder"


def test_read_only_cache_fails_before_compute(tmp_path):
    root = tmp_path / "read-only"
    root.mkdir()
    root.chmod(0o555)
    child = _without_permission_override(f"""
        import pytest
        from workbench.cache import ResultCache

        def compute():
            raise AssertionError("computed before the cache was checked writable")

        cache = ResultCache({str(root)!r})
        with pytest.raises(PermissionError, match="WORKBENCH_CACHE=off"):
            cache.get_or_compute("lmc", cache.key(x=1), compute)
        print("refused before the work")
    """)
    root.chmod(0o755)
    assert child.returncode == 0, child.stderr
    assert "refused before the work" in child.stdout


def test_figure_and_table_under_a_file_fail_with_the_folder_named(tmp_path):
    blocker = tmp_path / "report.txt"
    blocker.write_text("a file where a folder should be")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    with pytest.raises(NotADirectoryError, match=r"report\.txt exists and is not a folder"):
        wb.figures.save(fig, blocker / "figs" / "lmc", formats=("pdf",))
    with pytest.raises(NotADirectoryError, match="table folder"):
        wb.figures.save_table(pd.DataFrame({"a": [1]}), blocker / "t.csv")


def test_cli_checks_out_before_computing(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "report.txt"
    blocker.write_text("")
    monkeypatch.setattr("workbench.cli.commands.pairwise_curves", _must_not_run)
    monkeypatch.setattr("workbench.cli.commands.training_runs", _must_not_run)
    for argv in (
        ["lmc", "--out", str(blocker / "out"), "--limit", "50"],
        ["train", "cnn", "--epochs", "1", "--out", str(blocker / "models")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Cannot write to the --out folder" in err and "pass --out" in err


# -- exclusive, atomic writes -----------------------------------------------------------------


def test_two_writers_of_one_path_exactly_one_wins(tmp_path):
    path = tmp_path / "spec.json"
    both_writing = threading.Barrier(2, timeout=30)
    outcomes: dict[str, str] = {}

    def writer(name: str) -> None:
        def fill(tmp: Path) -> None:
            tmp.write_text(name * 1000)
            both_writing.wait()  # both are past the exists check, writing at once

        try:
            files.atomic_write(path, fill, overwrite=False)
            outcomes[name] = "written"
        except FileExistsError as exc:
            outcomes[name] = str(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, o in outcomes.items() if o == "written"]
    assert len(winners) == 1, outcomes
    [loser] = set("ab") - set(winners)
    assert "another writer created it" in outcomes[loser]
    assert "overwrite=True" in outcomes[loser]
    assert path.read_text() == winners[0] * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["spec.json"]  # no temporary left


def test_concurrent_save_checkpoint_exactly_one_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    models = {"a": _model(0), "b": _model(1)}
    both_writing = threading.Barrier(2, timeout=30)
    real_save_file = files.save_file

    def save_file_together(*args, **kwargs):
        both_writing.wait()  # both saves are past save_checkpoint's own exists check
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(files, "save_file", save_file_together)
    errors: dict[str, Exception] = {}

    def save(name: str) -> None:
        try:
            wb.save_checkpoint(models[name], path, seed=ord(name))
        except FileExistsError as exc:
            errors[name] = exc

    threads = [threading.Thread(target=save, args=(n,)) for n in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1, errors
    with pytest.raises(FileExistsError, match="another writer created it"):
        raise next(iter(errors.values()))
    [winner] = set(models) - set(errors)
    loaded = wb.load_checkpoint(path)
    assert wb.checkpoint_metadata(loaded)["seed"] == ord(winner)
    for key, tensor in models[winner].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_exclusive_write_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")  # e.g. FAT

    monkeypatch.setattr(os, "link", no_links)
    path = files.write_text(tmp_path / "s.json", "first")
    with pytest.raises(FileExistsError, match="exists"):
        files.write_text(path, "second")
    assert path.read_text() == "first"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        checkpoint = wb.save_checkpoint(_model(0), tmp_path / "m.safetensors")
        table = wb.figures.save_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(checkpoint.stat().st_mode) == mode
    assert stat.S_IMODE(table.stat().st_mode) == mode


# -- checkpoints that are unreadable or would load wrongly ----------------------------------


def test_unreadable_checkpoint_paths_say_what_they_are(tmp_path):
    folder = tmp_path / "models"
    wb.save_checkpoint(_model(0), folder / "a.safetensors")
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a checkpoint.*a\.safetensors"):
        wb.load_checkpoint(folder)
    link = tmp_path / "link.safetensors"
    link.symlink_to(tmp_path / "moved.safetensors")
    with pytest.raises(FileNotFoundError, match=r"broken symbolic link.*moved\.safetensors"):
        wb.load_checkpoint(link)


def test_checkpoint_without_read_permission(tmp_path):
    path = wb.save_checkpoint(_model(0), tmp_path / "m.safetensors")
    path.chmod(0)
    child = _without_permission_override(f"""
        import pytest
        import workbench as wb

        with pytest.raises(PermissionError, match="cannot be read: permission denied"):
            wb.load_checkpoint({str(path)!r})
        print("reported as unreadable")
    """)
    path.chmod(0o644)
    assert child.returncode == 0, child.stderr
    assert "reported as unreadable" in child.stdout


def _rewrite(path: Path, edit) -> Path:
    """``path`` with its tensors changed by ``edit`` (in place) and its metadata kept."""
    state = load_file(path)
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    edit(state)
    save_file(state, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("dtype", "shown"), [(torch.int64, "torch.int64"), (torch.float16, "torch.float16")]
)
def test_tensors_of_another_dtype_are_refused(tmp_path, dtype, shown):
    path = wb.save_checkpoint(_model(0), tmp_path / "m.safetensors")

    def store_as(state):
        state["features.conv1.weight"] = (state["features.conv1.weight"] * 100).to(dtype)

    _rewrite(path, store_as)
    pattern = f"other dtypes \\(features.conv1.weight: file {shown} vs model torch.float32\\)"
    with pytest.raises(wb.CheckpointError, match=pattern):
        wb.load_checkpoint(path)
    with pytest.raises(wb.CheckpointError, match="cast"):
        wb.load_checkpoint(path, model=_model(1))


def test_impossible_batchnorm_statistics_are_refused(tmp_path):
    path = wb.save_checkpoint(_model(0), tmp_path / "m.safetensors")

    def negative_variance(state):
        state["features.bn1.running_var"][1] = -0.5

    _rewrite(path, negative_variance)
    with pytest.raises(wb.CheckpointError, match=r"bn1.running_var has 1 negative entries"):
        wb.load_checkpoint(path)
    path = wb.save_checkpoint(_model(0), tmp_path / "n.safetensors")

    def negative_count(state):
        state["features.bn2.num_batches_tracked"].fill_(-3)

    _rewrite(path, negative_count)
    with pytest.raises(wb.CheckpointError, match=r"bn2.num_batches_tracked is -3"):
        wb.load_checkpoint(path)
