"""Independent jobs on any ``concurrent.futures``-style executor, each result in the cache.

The one mechanism behind every ``executor=`` argument (:func:`~workbench.train_models`,
:func:`~workbench.train_populations`, :func:`~workbench.sweep`,
:func:`~workbench.compare_methods`, :func:`~workbench.pairwise_curves`, ``workbench sweep
--executor``). A :class:`Job` is a pure function of its recipe: a module-level function
(so that it pickles to another process or to a cluster node) and its arguments, and the
content key of its result (:meth:`ResultCache.key` over everything that determines it).

:func:`run_jobs` looks every key up first and submits only the jobs whose result is not
stored yet; each worker writes its result to the cache the moment it is done. So a sweep
that was killed, or whose cluster jobs timed out, resumes where it stopped: a rerun
computes only what is missing. One progress bar counts the jobs as they finish.

Torch sums on the CPU in an order that depends on the number of threads, so a result is
bit-identical to a serial run's when each job runs with the same number of threads (a
checkpoint records it). :func:`worker_threads` gives each worker of a local pool its
share of the machine's cores, so that ``n`` workers do not oversubscribe it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from workbench.cache import ResultCache

__all__ = ["Job", "check_executor", "run_jobs", "worker_threads"]

Entry = tuple[dict[str, torch.Tensor], dict]
"""A job's result as the cache stores it: named tensors and JSON settings."""


@dataclass(frozen=True)
class Job:
    """One independent piece of work: ``function(**arguments)`` returns an :data:`Entry`.

    ``function`` must be defined at module level (it travels to the worker by pickle);
    ``kind`` and ``key`` say where its result is cached (``key=None``: never cached,
    always computed); ``valid`` rejects a stored entry the caller cannot read (see
    :meth:`ResultCache.load`)."""

    kind: str
    key: str | None
    function: Callable[..., Entry]
    arguments: dict[str, Any] = field(default_factory=dict)
    valid: Callable[[dict, dict], bool] | None = None


def check_executor(executor: object) -> None:
    """A clear ``TypeError`` unless ``executor`` is ``None`` or has ``submit`` (the
    ``concurrent.futures.Executor`` interface: a process pool, submitit, Dask, Ray)."""
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(
            f"executor must be None (run here, one job after another) or a "
            f"concurrent.futures.Executor (anything with .submit), got "
            f"{type(executor).__name__}. Pass e.g. "
            "concurrent.futures.ProcessPoolExecutor(2), or a submitit AutoExecutor."
        )


def worker_threads(executor: Executor | None) -> int | None:
    """The torch threads each job of ``executor`` runs with: the machine's cores divided
    among a local process pool's workers (``max_workers``), at least one; ``None`` (left
    as it is) for no executor, a thread pool (its threads share this process's torch
    threads) and executors whose jobs run elsewhere (a cluster job gets the cores it
    asked for)."""
    workers = getattr(executor, "_max_workers", None)
    if isinstance(executor, ThreadPoolExecutor) or not isinstance(workers, int) or workers < 1:
        return None  # threads share this process's torch threads: leave them as they are
    return max(1, (os.cpu_count() or 1) // workers)


def _run(job: Job, cache: ResultCache, threads: int | None) -> Entry:
    """Compute one job where it runs (here or in a worker) and store its result at once."""
    if threads is not None:
        torch.set_num_threads(threads)
    tensors, meta = job.function(**job.arguments)
    tensors = {name: t.detach().cpu() for name, t in tensors.items()}
    cache.store(job.kind, job.key, tensors, meta)
    return tensors, dict(meta)


def run_jobs(
    jobs: Sequence[Job],
    *,
    executor: Executor | None = None,
    cache: ResultCache,
    progress: bool = True,
    desc: str = "jobs",
) -> list[Entry]:
    """The results of ``jobs``, in order: those in ``cache`` read from it, the others
    computed, here one after another (``executor=None``) or submitted to ``executor``.

    Every computed result is stored by the job itself, so if a job fails (or the sweep is
    killed) the finished ones are kept and a rerun computes only the rest. The first
    failure is raised at once, the jobs not started yet cancelled (those already running
    finish in their workers and store their results). One progress bar over the jobs."""
    check_executor(executor)
    jobs = list(jobs)
    results: list[Entry | None] = [cache.load(j.kind, j.key, valid=j.valid) for j in jobs]
    missing = [i for i, found in enumerate(results) if found is None]
    if any(jobs[i].key is not None for i in missing):
        cache.check_writable()  # before any work, not when the first result is stored
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(missing), desc=desc, disable=not progress)
    try:
        if executor is None:
            for i in missing:
                results[i] = _run(jobs[i], cache, None)
                bar.update()
        else:
            threads = worker_threads(executor)
            futures: dict[Any, int] = {
                executor.submit(_run, jobs[i], cache, threads): i for i in missing
            }
            _collect(futures, results, bar)
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _collect(futures: dict[Any, int], results: list, bar: tqdm) -> None:
    """Fill ``results`` as the jobs finish; on the first failure cancel what has not
    started and raise. ``concurrent.futures`` futures are waited on; other job handles
    with ``done()`` and ``result()`` (submitit's) are polled."""
    if all(isinstance(future, Future) for future in futures):
        finished = as_completed(futures)
    else:
        finished = _poll(futures)
    for future in finished:
        try:
            results[futures[future]] = future.result()
        except BaseException:
            for other in futures:
                other.cancel()
            raise
        bar.update()


def _poll(handles: dict[Any, int], interval: float = 1.0) -> Iterator[Any]:
    """Each handle once it is ``done()``, checking every ``interval`` seconds."""
    pending = list(handles)
    while pending:
        done = [handle for handle in pending if handle.done()]
        pending = [handle for handle in pending if handle not in done]
        yield from done
        if pending and not done:
            time.sleep(interval)
