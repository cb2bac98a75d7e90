"""The search in MLflow: a ``search`` parent run per experiment, one child run per trial and seed, best parameters on
the parent; and applying the best parameters to the final runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from cl_harness.grid.experiment import safe_name
from cl_harness.grid.plan import plan_runs
from cl_harness.grid.prepare import PreparedExperiment, shares_prefix
from cl_harness.runner.checkpoint import atomic_write_bytes
from cl_harness.search.config import SearchPlan
from cl_harness.search.run import BEST_PARAMS_FILE, STUDY_DB, StrategyResult, apply_params, run_search
from cl_harness.tracking import writer
from cl_harness.tracking.store import experiment_for, open_store
from cl_harness.tracking.writer import RunLogger

MARKER = "search.json"  # in the search folder: the id of its search parent run


def search_folder(prepared: PreparedExperiment) -> Path:
    """``<checkpoint_dir>/<experiment>/search-<hash>``: the hash leaves out ``search.n_trials``, so more trials resume."""
    config = prepared.checked.resolved_config()
    config.pop("tracking", None)
    config["search"] = {k: v for k, v in (config.get("search") or {}).items() if k != "n_trials"}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = Path(prepared.config.checkpoint_dir)
    return root / safe_name(prepared.config.name) / f"search-{digest}"


def _open_parent(client, experiment_id: str, folder: Path, prepared: PreparedExperiment) -> RunLogger:
    """The search parent run: reopened when this folder's search was started before in this store."""
    marker = folder / MARKER
    if marker.is_file():
        reopened = writer.reopen_run(client, json.loads(marker.read_text()).get("parent_run_id"), experiment_id)
        if reopened is not None:
            return reopened
    checked = prepared.checked
    parent = writer.open_search_parent(client, experiment_id, checked.stream_name, checked.scenario,
                                       (folder / STUDY_DB).resolve(), checked.resolved_config())
    folder.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"parent_run_id": parent.run_id}).encode()
    atomic_write_bytes(marker, lambda f: f.write(payload))
    return parent


def run_tracked_search(prepared: PreparedExperiment, plan: SearchPlan, uri: str, on_result=None) -> list[StrategyResult]:
    """Run the search with every trial an MLflow child run of the ``search`` parent; the best parameters go on the parent."""
    uri, client = open_store(uri)
    config = prepared.config
    experiment_id = experiment_for(client, uri, config.tracking.experiment or config.name)
    folder = search_folder(prepared)
    parent = _open_parent(client, experiment_id, folder, prepared)

    def trial_logger(spec, number: int, seed: int, params: dict[str, Any]) -> RunLogger:
        return writer.open_trial(client, experiment_id, parent.run_id, spec.label, number, seed, params)

    with writer.closed_on_failure(parent):
        results = run_search(prepared, plan, folder, trial_logger=trial_logger, on_result=on_result)
        writer.log_search_outcome(parent, folder / BEST_PARAMS_FILE, {r.label: (r.best_value, r.best_params) for r in results})
    parent.end("FINISHED")
    return results


def apply_best(prepared: PreparedExperiment, best: dict[str, dict[str, Any]]) -> tuple[PreparedExperiment, list[str]]:
    """The experiment with each strategy's best plugin parameters; also the ``training.*`` values it cannot apply.

    Every run of a grid shares one training config, so per-strategy ``training.*`` values are not
    applied to the final runs (they are listed for the caller to report).
    """
    checked = prepared.checked
    strategies, skipped = [], []
    for spec in checked.strategies:
        params = best.get(spec.label, {})
        skipped += [f"{spec.label}: {k}={v}" for k, v in params.items() if k.startswith("training.")]
        _, new_spec = apply_params(prepared, spec, {k: v for k, v in params.items() if not k.startswith("training.")})
        strategies.append(new_spec)
    orders = [order for _, order in sorted({(r.order_index, r.order) for r in checked.runs})]
    runs = plan_runs(strategies, checked.config.seeds, orders, shares_prefix(checked.loaded))
    checked = dataclasses.replace(checked, strategies=strategies, runs=runs)
    return dataclasses.replace(prepared, checked=checked), skipped
