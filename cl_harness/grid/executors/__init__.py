"""Executors run the planned runs of a grid: in this process, in N local processes, or as tasks on a Ray cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

from cl_harness.errors import ConfigError
from cl_harness.grid.experiment import Executor

EXECUTORS = ("local", "ray")
DEFAULT_RETRIES = 2  # times a run whose worker process died is started again


@dataclass(frozen=True)
class ExecutionOptions:
    """How to run a grid: the ``--executor``, ``--workers``, ``--ray-address``, retry and resource flags."""

    executor: str = "local"
    workers: int = 1
    ray_address: str | None = None
    max_retries: int | None = None  # None: DEFAULT_RETRIES
    cpus_per_run: float | None = None
    gpus_per_run: float = 0.0


def check_options(options: ExecutionOptions, tracking_uri: str) -> None:
    """Raise ConfigError naming the flag when the options cannot work together or with ``tracking_uri``."""
    if options.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {options.executor!r}", key="--executor", hint=f"choose one of {', '.join(EXECUTORS)}")
    if options.executor == "local":
        if options.ray_address is not None:
            raise ConfigError("applies to --executor ray only", key="--ray-address", hint="add --executor ray")
        if options.gpus_per_run:
            raise ConfigError("applies to --executor ray only; local workers share this machine's devices", key="--gpus-per-run")
        if options.max_retries is not None and options.workers == 1:
            raise ConfigError("applies to runs in worker processes only; a run in this process is not started again",
                              key="--max-retries", hint="add --workers N (N > 1) or --executor ray, or drop --max-retries")
        return
    if options.workers != 1:
        raise ConfigError("applies to --executor local only; on Ray the cluster's free CPUs and GPUs decide how many runs train at once",
                          key="--workers", hint="drop --workers, or set --cpus-per-run / --gpus-per-run")
    if options.ray_address and urlparse(tracking_uri).scheme.lower() not in ("http", "https"):
        raise ConfigError(
            f"workers on the Ray cluster at {options.ray_address} cannot write to the local store {tracking_uri}",
            key="--tracking-uri",
            hint="start a shared server (`mlflow server --host 0.0.0.0 --port 5000 ...`) and pass --tracking-uri http://HOST:5000",
        )


def make_executor(options: ExecutionOptions, tracking_uri: str) -> Executor:
    """The executor the options ask for, after checking them."""
    check_options(options, tracking_uri)
    retries = DEFAULT_RETRIES if options.max_retries is None else options.max_retries
    if options.executor == "ray":
        from cl_harness.grid.executors.ray_tasks import RayExecutor, require_ray

        require_ray()
        return RayExecutor(options.ray_address, retries, options.cpus_per_run or 1.0, options.gpus_per_run)
    from cl_harness.grid.executors.local import ProcessExecutor, SequentialExecutor

    if options.workers == 1:
        return SequentialExecutor(max(1, int(options.cpus_per_run)) if options.cpus_per_run else None)
    threads = int(options.cpus_per_run) if options.cpus_per_run else (os.cpu_count() or 1) // options.workers
    return ProcessExecutor(options.workers, retries, max(1, threads))
