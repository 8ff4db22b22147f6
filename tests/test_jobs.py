"""Jobs on executors: the same results as a serial run, cached as they finish, and a rerun
of an interrupted run that computes only what is missing."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.cache import describe
from workbench.fingerprints import data_fingerprint
from workbench.jobs import Job, run_jobs, worker_threads

TINY = {"width": 0.25, "in_channels": 1}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def _flaky(value: int, folder: str) -> tuple[dict, dict]:
    """A job that logs each computation, and fails while ``fail-<value>`` exists."""
    folder = Path(folder)
    with (folder / "log").open("a") as log:
        log.write(f"{value}\n")
    if (folder / f"fail-{value}").exists():
        raise RuntimeError(f"job {value} interrupted")
    return {"x": torch.full((2,), float(value))}, {"value": value}


def _log(folder: Path) -> list[int]:
    path = folder / "log"
    return [int(v) for v in path.read_text().split()] if path.exists() else []


@pytest.fixture
def pool():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


@pytest.fixture(scope="module")
def test_part(mnist_test):
    return mnist_test.subset(torch.arange(200), "test")


@pytest.mark.parametrize("parallel", [False, True])
def test_an_interrupted_run_resumes_without_recomputing(tmp_path, parallel):
    cache = wb.ResultCache(tmp_path / "cache")
    key = cache.key
    jobs = [Job("flaky", key(v=v), _flaky, {"value": v, "folder": str(tmp_path)}) for v in range(4)]
    (tmp_path / "fail-1").touch()
    executor = ThreadPoolExecutor(2) if parallel else contextlib.nullcontext()
    with executor as running, pytest.raises(RuntimeError, match="job 1 interrupted"):
        run_jobs(jobs, executor=running, cache=cache, progress=False)
    done = {v for v in _log(tmp_path) if v != 1}
    assert 0 in done  # finished before the failure, stored by the job itself
    (tmp_path / "fail-1").unlink()
    (tmp_path / "log").unlink()
    with ThreadPoolExecutor(2) if parallel else contextlib.nullcontext() as running:
        found = run_jobs(jobs, executor=running, cache=cache, progress=False)
    assert sorted(_log(tmp_path)) == sorted(set(range(4)) - done)  # only the missing ones
    assert [meta["value"] for _, meta in found] == [0, 1, 2, 3]
    assert torch.equal(found[3][0]["x"], torch.full((2,), 3.0))


def test_train_models_on_a_process_pool_is_the_serial_run(tiny_train, pool, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    kwargs = {"model_kwargs": TINY, "batch_size": 64, "augment": wb.random_translate(2)}
    found = wb.train_models(
        "cnn", [0, 1, 2], tiny_train, 1, executor=pool, progress=False, **kwargs
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(worker_threads(pool))  # torch's sums depend on the thread count
    try:
        serial = wb.train_models("cnn", [0, 1, 2], tiny_train, 1, progress=False, **kwargs)
    finally:
        torch.set_num_threads(threads)
    assert all(_same(a, b) for a, b in zip(found, serial, strict=True))
    assert all(not m.training for m in found)
    # a rerun is read from the cache: nothing is submitted
    again = wb.train_models(
        "cnn", [0, 1, 2], tiny_train, 1, executor=_Refusing(), progress=False, **kwargs
    )
    assert all(_same(a, b) for a, b in zip(again, found, strict=True))


class _Refusing:
    """An executor that fails the test if anything is submitted to it."""

    _max_workers = 1

    def submit(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a cached job was submitted again")


def test_sweep_compare_and_pairs_on_a_pool_equal_the_serial_run(tiny_train, test_part, pool):
    threads = torch.get_num_threads()
    torch.set_num_threads(worker_threads(pool))
    try:
        models = wb.train_models("cnn", [0, 1, 2], tiny_train, 1, model_kwargs=TINY, progress=False)
        kwargs = {"alphas": 3, "bn": "reset", "method": "weight", "data": tiny_train}
        serial = wb.pairwise_curves(
            models, eval_data={"test": test_part}, progress=False, cache=False, **kwargs
        )
        table = wb.compare_methods(
            models,
            data=tiny_train,
            eval_data=test_part,
            methods=["none", "weight"],
            cache=False,
            progress=False,
        )
        sweep = wb.sweep(
            "width",
            [0.25, 0.5],
            data=tiny_train,
            eval_data=test_part,
            epochs=1,
            alphas=3,
            cache=False,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    pooled = wb.pairwise_curves(
        models, eval_data={"test": test_part}, progress=False, cache=False, executor=pool, **kwargs
    )
    assert [c.settings["pair"] for c in pooled] == [c.settings["pair"] for c in serial]
    for a, b in zip(pooled, serial, strict=True):
        assert a.loss.tolist() == b.loss.tolist() and a.accuracy.tolist() == b.accuracy.tolist()
    pooled_table = wb.compare_methods(models, data=tiny_train, eval_data=test_part, methods=["none", "weight"], cache=False,
                                      progress=False, executor=pool)  # fmt: skip
    columns = ["method", "n_models", "accuracy", "loss"]
    assert pooled_table[columns].equals(table[columns])
    pooled_sweep = wb.sweep("width", [0.25, 0.5], data=tiny_train, eval_data=test_part, epochs=1, alphas=3,
                            cache=False, progress=False, executor=pool)  # fmt: skip
    frame, pooled_frame = sweep.table, pooled_sweep.table
    assert pooled_frame[["width", "method", "barrier"]].equals(
        frame[["width", "method", "barrier"]]
    )


@pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None,
    reason="submitit is an optional extra (pip install 'merge-workbench[cluster]'), not "
    "installed in this environment",
)
def test_submitit_local_executor_gives_the_serial_result(tiny_train, tmp_path, monkeypatch):
    import submitit

    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=10)
    found = wb.train_models(
        "cnn", [0, 1], tiny_train, 1, model_kwargs=TINY, executor=executor, progress=False
    )
    serial = wb.train_models("cnn", [0, 1], tiny_train, 1, model_kwargs=TINY, progress=False)
    assert all(_same(a, b) for a, b in zip(found, serial, strict=True))


def test_bad_executors_and_recipe_parts():
    with pytest.raises(TypeError, match=r"concurrent\.futures\.Executor"):
        run_jobs([], executor="local:2", cache=wb.ResultCache(enabled=False))
    assert worker_threads(None) is None
    assert worker_threads(_Refusing()) >= 1
    assert describe({"lr": 0.1, "sizes": (1, 2)}) == {"lr": 0.1, "sizes": [1, 2]}
    translate = describe(wb.random_translate(3))
    assert translate["max_shift"] == 3 and translate != describe(wb.random_translate(2))
    assert describe({"thing": object()}) is None
    assert describe(None) is None and describe({"augment": None}) == {"augment": None}


def test_pickling_changes_no_fingerprint(mnist_train):
    """Pickling or deep-copying an object makes copyreg cache ``__slotnames__`` on its class;
    that must not change the class's fingerprints (a job's data travels by pickle)."""

    class Fresh(wb.TensorImageDataset):
        pass

    data = Fresh(mnist_train.images[:8], mnist_train.targets[:8], mnist_train.info, "train")
    before = data_fingerprint(data)
    copy.deepcopy(data)  # pickles it the same way (copyreg)
    assert "__slotnames__" in vars(Fresh)
    assert data_fingerprint(data) == before
