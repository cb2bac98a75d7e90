"""The search in MLflow: a ``search`` parent run per experiment, one child run per trial and seed, best parameters on
the parent; and applying the best parameters to the final runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from cl_harness.runner.checkpoint import atomic_write_bytes
from cl_harness.runner.experiment import end_quietly, run_exists, safe_name
from cl_harness.runner.grid import plan_runs
from cl_harness.runner.prepare import PreparedExperiment
from cl_harness.search.config import SearchPlan
from cl_harness.search.run import BEST_PARAMS_FILE, SEARCH_ROLE, STUDY_DB, TRIAL_TAG, StrategyResult, apply_params, run_search
from cl_harness.tracking.mlflow_logger import (
    RunLogger,
    check_tracking_reachable,
    default_artifact_location,
    get_or_create_experiment,
)

ROLE_TAG = "cl_harness.role"
TRIAL_ROLE = "trial"
MARKER = "search.json"


def search_folder(prepared: PreparedExperiment) -> Path:
    """``<checkpoint_dir>/<experiment>/search-<hash>``: the hash leaves out ``search.n_trials``, so more trials resume."""
    config = prepared.checked.resolved_config()
    config.pop("tracking", None)
    config["search"] = {k: v for k, v in (config.get("search") or {}).items() if k != "n_trials"}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = Path(prepared.checked.loaded.config.checkpoint_dir)
    return root / safe_name(prepared.checked.loaded.config.name) / f"search-{digest}"


def _open_parent(client, experiment_id: str, folder: Path, prepared: PreparedExperiment) -> RunLogger:
    """The search parent run: reopened when this folder's search was started before in this store."""
    marker = folder / MARKER
    if marker.is_file():
        run_id = json.loads(marker.read_text()).get("parent_run_id")
        if run_id and run_exists(client, run_id) and client.get_run(run_id).info.experiment_id == experiment_id:
            return RunLogger.reopen(client, run_id)
    checked = prepared.checked
    parent = RunLogger(client, experiment_id, "search", tags={
        ROLE_TAG: SEARCH_ROLE, "stream": checked.loaded.stream.config.name, "scenario": checked.scenario,
        "search_storage": str((folder / STUDY_DB).resolve()),
    })
    parent.log_config(checked.resolved_config())
    folder.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"parent_run_id": parent.run_id}).encode()
    atomic_write_bytes(marker, lambda f: f.write(payload))
    return parent


def run_tracked_search(prepared: PreparedExperiment, plan: SearchPlan, uri: str, on_result=None) -> list[StrategyResult]:
    """Run the search with every trial an MLflow child run of the ``search`` parent; the best parameters go on the parent."""
    from mlflow import MlflowClient

    check_tracking_reachable(uri)
    config = prepared.checked.loaded.config
    name = config.tracking.experiment or config.name
    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(client, name, default_artifact_location(uri, name))
    folder = search_folder(prepared)
    parent = _open_parent(client, experiment_id, folder, prepared)

    def trial_logger(spec, number: int, seed: int, params: dict[str, Any]) -> RunLogger:
        logger = RunLogger(client, experiment_id, f"{spec.label}/trial{number}/seed{seed}", parent_run_id=parent.run_id,
                           tags={ROLE_TAG: TRIAL_ROLE, "strategy": spec.label, TRIAL_TAG: str(number), "seed": str(seed)})
        logger.set_tags({f"param.{k}": v for k, v in params.items()})
        return logger

    try:
        results = run_search(prepared, plan, folder, trial_logger=trial_logger, on_result=on_result)
    except KeyboardInterrupt:
        end_quietly(parent, "KILLED")
        raise
    except BaseException:
        end_quietly(parent, "FAILED")
        raise
    parent.log_artifact(folder / BEST_PARAMS_FILE)
    parent.log_final({f"best_valid_acc.{r.label}": r.best_value for r in results if r.best_value is not None})
    parent.set_tags({f"best.{r.label}.{k}": v for r in results for k, v in r.best_params.items()})
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
    runs = plan_runs(strategies, checked.loaded.config.seeds, orders)
    checked = dataclasses.replace(checked, strategies=strategies, runs=runs)
    return dataclasses.replace(prepared, checked=checked), skipped
