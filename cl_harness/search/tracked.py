"""The search in MLflow: a ``search`` parent run per experiment, one child run per trial and seed, best parameters on
the parent; and applying the best parameters to the final runs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cl_harness.grid.experiment import strategy_params
from cl_harness.grid.locks import run_lock
from cl_harness.grid.plan import PlannedRun, plan_runs
from cl_harness.grid.prepare import CheckedExperiment, PreparedExperiment, shares_prefix
from cl_harness.runner.checkpoint import read_run_file, write_run_file
from cl_harness.search.config import SearchPlan
from cl_harness.search.run import BEST_PARAMS_FILE, STUDY_DB, StrategyResult, apply_params, run_search, search_folder
from cl_harness.search.workers import SearchSpec
from cl_harness.tracking import writer
from cl_harness.tracking.store import absolute_uri, experiment_for, open_store
from cl_harness.tracking.writer import RunLogger

MARKER = "search.json"  # in the search folder: the id of its search parent run
STALE_TRIAL = "the search process was killed during this trial; the resumed search ran another in its place"


def _open_parent(client, experiment_id: str, folder: Path, prepared: PreparedExperiment) -> RunLogger:
    """The search parent run: reopened when this folder's search was started before in this store."""
    marker = folder / MARKER
    if marker.is_file():
        reopened = writer.reopen_run(client, read_run_file(marker).get("parent_run_id"), experiment_id)
        if reopened is not None:
            return reopened
    checked = prepared.checked
    parent = writer.open_search_parent(client, experiment_id, checked.stream_name, checked.scenario,
                                       (folder / STUDY_DB).resolve(), checked.resolved_config(),
                                       {k: v for spec in checked.strategies for k, v in strategy_params(spec).items()})
    folder.mkdir(parents=True, exist_ok=True)
    write_run_file(marker, {"parent_run_id": parent.run_id})
    return parent


def run_tracked_search(prepared: PreparedExperiment, plan: SearchPlan, uri: str, on_result=None,
                       parallel: Callable[[SearchSpec], None] | None = None, threads: int | None = None,
                       on_trial=None) -> list[StrategyResult]:
    """Run the search with every trial an MLflow child run of the ``search`` parent; the best parameters go on the parent.

    One process at a time runs a search folder (a second invocation waits). A killed search resumes: its trials left
    RUNNING are failed, in Optuna and in MLflow, and as many new ones run. ``parallel`` (``run_in_workers`` or
    ``run_on_ray`` with their settings) runs the trials elsewhere first, sharing each strategy's study, with ``threads``
    torch threads each; what they leave undone runs in this process.
    """
    uri, client = open_store(uri)
    config = prepared.config
    experiment_id = experiment_for(client, uri, config.tracking.experiment or config.name)
    folder = search_folder(prepared)
    with run_lock(folder, f"search of {config.name}"):
        parent = _open_parent(client, experiment_id, folder, prepared)
        trial_logger = functools.partial(writer.open_trial, client, experiment_id, parent.run_id)
        with writer.closed_on_failure(parent):
            writer.end_stale_trials(client, experiment_id, parent.run_id, STALE_TRIAL)
            if parallel is not None:
                loaded = prepared.checked.loaded
                spec = SearchSpec(str(loaded.path), tuple(loaded.overrides), loaded.data_root, absolute_uri(uri), experiment_id,
                                  parent.run_id, str(folder.resolve()), threads)
                parallel(spec)
                writer.end_stale_trials(client, experiment_id, parent.run_id, STALE_TRIAL)  # a worker that died
            results = run_search(prepared, plan, folder, trial_logger=trial_logger, on_result=on_result, on_trial=on_trial)  # what is missing
            writer.log_search_outcome(parent, folder / BEST_PARAMS_FILE, {r.label: (r.best_value, r.best_params) for r in results})
        parent.end("FINISHED")
    return results


def apply_best(prepared: PreparedExperiment, best: dict[str, dict[str, Any]]) -> PreparedExperiment:
    """The experiment whose runs use each strategy's best parameters: plugin values and its own ``training.*`` values."""
    return prepared.with_runs(best_runs(prepared.checked, best))


def best_runs(checked: CheckedExperiment, best: dict[str, dict[str, Any]]) -> list[PlannedRun]:
    """The experiment's runs with each strategy's best parameters (see ``apply_best``)."""
    strategies, training = [], {}
    for spec in checked.strategies:
        tuned, training[spec.label] = apply_params(spec, best.get(spec.label, {}))
        strategies.append(tuned)
    orders = [order for _, order in sorted({(r.order_index, r.order) for r in checked.runs})]
    return plan_runs(strategies, checked.config.seeds, orders, training, shares_prefix(checked.loaded))

