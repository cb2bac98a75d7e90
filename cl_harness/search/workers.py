"""Trials in parallel, sharing each strategy's Optuna study: ``--workers N`` spawns N local processes, ``--executor ray``
submits one Ray task per slot of the cluster (its CPUs over ``--cpus-per-run``).

Optuna lets several processes optimise one study in an RDB storage (here the SQLite ``search.db``,
opened with a lock timeout; Ray workers need the search folder on a filesystem they share, as they
need the grid's run folders). Each process loads and tokenises the experiment itself, as grid
workers do, and logs its trial runs under the search parent.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cl_harness.errors import ConfigError
from cl_harness.grid.prepare import PreparedExperiment
from cl_harness.search.config import SearchPlan
from cl_harness.search.run import fail_stale_trials, open_study, remaining_trials, run_trials, search_folder, searched


@dataclass(frozen=True)
class SearchSpec:
    """What a search worker needs (picklable): how to load the experiment, where its studies and runs go."""

    experiment: str  # the experiment YAML, absolute
    overrides: tuple[str, ...]
    data_root: str | None
    tracking_uri: str  # absolute
    experiment_id: str
    parent_run_id: str
    folder: str  # the search folder, absolute
    threads: int | None = None  # torch threads per worker


def split(count: int, workers: int) -> list[int]:
    """``count`` trials dealt to ``workers`` processes as evenly as possible (5 over 2: [3, 2])."""
    return [count // workers + (1 if index < count % workers else 0) for index in range(workers)]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_with(parent: int) -> None:
    """Interrupt this worker once its parent process is gone (e.g. SIGKILLed), so no orphan trains on."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def search_worker(spec: SearchSpec, shares: dict[str, int], worker: int, own_process: bool = True) -> None:
    """One worker: load the experiment, then run ``shares[label]`` trials of each strategy's study.

    ``own_process``: a process spawned for this search, which stops with its parent; a Ray task leaves its
    process's signals and lifetime to Ray.
    """
    import torch

    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.search.config import parse_search
    from cl_harness.tracking import writer
    from cl_harness.tracking.store import connect

    if own_process:
        signal.signal(signal.SIGTERM, _interrupt)  # terminate() ends the running trial's run KILLED
        threading.Thread(target=_stop_with, args=(os.getppid(),), daemon=True).start()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    checked = check_experiment(load_experiment(spec.experiment, spec.overrides, spec.data_root))
    prepared = prepare_experiment(checked)
    plan = parse_search(checked.config.search, checked.strategies, checked.loaded.source, True)
    folder = Path(spec.folder)
    if search_folder(prepared).resolve() != folder:
        raise ConfigError(f"the worker loaded {spec.experiment} into a different search than the parent process",
                          hint="workers need the same experiment files, data and environment variables (${VAR})")
    logger = functools.partial(writer.open_trial, connect(spec.tracking_uri), spec.experiment_id, spec.parent_run_id)
    try:
        for strategy in searched(prepared, plan):
            if shares.get(strategy.label):
                study = open_study(folder, strategy.label, plan, worker)
                run_trials(prepared, strategy, study, plan, shares[strategy.label], trial_logger=logger, prefix_root=folder,
                           on_trial=functools.partial(print, flush=True))
    except KeyboardInterrupt:  # its trial ended (KILLED in MLflow, FAIL in Optuna): exit without a traceback
        raise SystemExit(130) from None


def deal(prepared: PreparedExperiment, plan: SearchPlan, folder: Path, slots: int) -> list[dict[str, int]]:
    """Every strategy's remaining trials dealt over at most ``slots`` workers (a killed search's trials failed first)."""
    shares: list[dict[str, int]] = [{} for _ in range(slots)]
    for strategy in searched(prepared, plan):
        study = open_study(folder, strategy.label, plan)
        fail_stale_trials(study)  # a killed search's trials, before any worker runs
        for index, count in enumerate(split(remaining_trials(study, plan), slots)):
            shares[index][strategy.label] = count
    return [share for share in shares if any(share.values())]


def run_in_workers(prepared: PreparedExperiment, plan: SearchPlan, spec: SearchSpec, workers: int) -> None:
    """Deal every strategy's remaining trials to ``workers`` processes and wait for them all.

    A worker that stops early leaves its trials undone; the caller runs what is missing in its own process.
    """
    shares = deal(prepared, plan, Path(spec.folder), workers)
    spawn = multiprocessing.get_context("spawn")  # torch is not fork-safe
    processes = [spawn.Process(target=search_worker, args=(spec, share, index), name=f"cl-harness-search-{index}")
                 for index, share in enumerate(shares)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    finally:
        for process in processes:  # interrupted here: the workers end their trial runs KILLED
            if process.is_alive():
                process.terminate()
                process.join(timeout=30)
    for process in processes:
        if process.exitcode != 0:
            print(f"search worker {process.name} stopped with exit code {process.exitcode}; its missing trials run here",
                  file=sys.stderr, flush=True)


def run_on_ray(prepared: PreparedExperiment, plan: SearchPlan, spec: SearchSpec, address: str | None, cpus: float,
               gpus: float) -> None:
    """Deal every strategy's remaining trials to one Ray task per slot of the cluster and wait for them all.

    A task that fails or whose worker dies leaves its trials undone; the caller runs what is missing in its own process.
    """
    from cl_harness.grid.executors.ray_tasks import run_tasks

    def calls(slots: int) -> list[tuple]:
        return [(spec, share, index, False) for index, share in enumerate(deal(prepared, plan, Path(spec.folder), slots))]

    for index, error in enumerate(run_tasks(search_worker, calls, address, cpus, gpus)):
        if error is not None:
            print(f"search task {index} on Ray stopped ({error}); its missing trials run here", file=sys.stderr, flush=True)
