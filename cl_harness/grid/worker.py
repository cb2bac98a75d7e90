"""One planned run in a worker process: load and tokenise the experiment there, then train and log the run."""

from __future__ import annotations

from pathlib import Path

from cl_harness.errors import ConfigError
from cl_harness.grid.experiment import RunSpec, grid_folder, run_child, run_folder
from cl_harness.grid.prepare import PreparedExperiment
from cl_harness.runner.run import RunResult


def prepare_in_worker(spec: RunSpec) -> PreparedExperiment:
    """Load and tokenise the experiment in this process, planned as the parent's runs, and check it is the parent's grid."""
    import torch

    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment

    if spec.threads:
        torch.set_num_threads(spec.threads)
    prepared = prepare_experiment(check_experiment(load_experiment(spec.experiment, spec.overrides, spec.data_root)))
    prepared = prepared.with_runs(list(spec.runs))
    if grid_folder(prepared).name != Path(spec.grid).name:
        raise ConfigError(
            f"the worker loaded {spec.experiment} into a different grid than the parent process",
            hint="workers need the same experiment files, data and environment variables (${VAR}) as the machine that submits",
        )
    return prepared


def run_planned(spec: RunSpec, index: int, prepared: PreparedExperiment | None = None) -> RunResult:
    """Run ``spec.runs[index]``, resuming from its run folder; ``prepared`` (else loaded here) serves a worker's runs."""
    from cl_harness.tracking.store import connect

    prepared = prepared or prepare_in_worker(spec)
    planned = prepared.runs[index]
    client = connect(spec.tracking_uri)
    folder = run_folder(Path(spec.grid), planned)
    return run_child(prepared, planned, client, spec.experiment_id, spec.parent_run_id, spec.tags, spec.show_progress, folder)
