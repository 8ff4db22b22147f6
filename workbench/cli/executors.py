"""The ``--executor`` of the command line: where the independent jobs of a command run.

``local:N`` (or ``local``: one worker per core): a pool of ``N`` worker processes on this
machine, each running its jobs with its share of the cores (:mod:`workbench.jobs`).
``slurm``: one SLURM job per workbench job through submitit (an optional extra,
``pip install 'merge-workbench[cluster]'``), with ``--partition``, ``--gpus-per-job``,
``--cpus-per-job`` and ``--timeout-min``; submitit's logs go to ``--slurm-folder``.
Without ``--executor`` the jobs run in the command's own process, one after another.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor

__all__ = ["add_executor_arguments", "executor_from_args"]

SUBMITIT_MISSING = (
    "--executor slurm submits the jobs through submitit, which is not installed: "
    "pip install 'merge-workbench[cluster]' (or pip install submitit), or run here with "
    "--executor local:N."
)


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--executor`` options of a command that runs independent jobs."""
    group = parser.add_argument_group("where the jobs run")
    group.add_argument(
        "--executor",
        default=None,
        help="local:N (N worker processes here; local: one per core) or slurm "
        "(one SLURM job per job, through submitit); default: here, one after another",
    )
    group.add_argument("--partition", default=None, help="SLURM partition (--executor slurm)")
    group.add_argument("--gpus-per-job", type=int, default=0, help="GPUs per SLURM job")
    group.add_argument("--cpus-per-job", type=int, default=4, help="CPU cores per SLURM job")
    group.add_argument("--timeout-min", type=int, default=60, help="time limit per SLURM job")
    group.add_argument(
        "--slurm-folder", default="slurm-logs", help="where submitit writes its logs"
    )


def _local(spec: str) -> Executor:
    _, _, count = spec.partition(":")
    workers = os.cpu_count() or 1
    if count:
        if not count.isdigit() or int(count) < 1:
            raise ValueError(
                f"--executor local:N needs a positive number of workers, got {spec!r}."
            )
        workers = int(count)
    # spawned, not forked: a fork of a process that has started torch's threads can hang
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _slurm(args: argparse.Namespace) -> Executor:
    try:
        submitit = importlib.import_module("submitit")
    except ImportError:
        raise ValueError(SUBMITIT_MISSING) from None
    executor = submitit.AutoExecutor(folder=args.slurm_folder, cluster="slurm")
    parameters = {
        "timeout_min": args.timeout_min,
        "gpus_per_node": args.gpus_per_job,
        "cpus_per_task": args.cpus_per_job,
    }
    if args.partition:
        parameters["slurm_partition"] = args.partition
    executor.update_parameters(**parameters)
    return executor


def executor_from_args(args: argparse.Namespace) -> Executor | None:
    """The executor ``args.executor`` names (``None``: run here). A local pool's worker
    processes end with the command."""
    spec = args.executor
    if spec is None:
        return None
    if spec == "local" or spec.startswith("local:"):
        return _local(spec)
    if spec == "slurm":
        return _slurm(args)
    raise ValueError(f"--executor must be local:N or slurm, got {spec!r}.")
