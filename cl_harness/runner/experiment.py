"""Run a whole experiment grid into MLflow: one parent run per invocation, one child run per planned run."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from pathlib import Path

from cl_harness.runner.checkpoint import RunState, atomic_write_bytes, load_state, save_state
from cl_harness.runner.grid import PlannedRun
from cl_harness.runner.prepare import PreparedExperiment
from cl_harness.runner.run import RunResult, train_and_evaluate
from cl_harness.tracking.artifacts import accuracy_matrix_dict, plot_accuracy_matrix
from cl_harness.tracking.mlflow_logger import (
    RunLogger,
    check_tracking_reachable,
    default_artifact_location,
    default_tags,
    get_or_create_experiment,
    resolve_tracking_uri,
)

PARENT, CHILD = "parent", "child"


def log_results(logger: RunLogger, result: RunResult) -> None:
    """Final metrics and the accuracy-matrix artifacts (also for a partial matrix)."""
    if result.metrics:
        logger.log_final(result.metrics)
    logger.log_dict(accuracy_matrix_dict(result.tasks, result.initial, result.matrix, result.column_metrics), "accuracy_matrix.json")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "accuracy_matrix.png"
        plot_accuracy_matrix(result.tasks, result.initial, result.matrix, png, title=result.run_name)
        logger.log_artifact(png)


def run_tags(prepared: PreparedExperiment, planned: PlannedRun) -> dict[str, str]:
    checked = prepared.checked
    return {
        "cl_harness.role": CHILD,
        "strategy": planned.strategy.label,
        "seed": str(planned.seed),
        "order": str(planned.order_index),
        "task_order": ",".join(checked.task_names[i] for i in planned.order),
        "stream": checked.loaded.stream.config.name,
        "scenario": checked.scenario,
        "backbone": checked.loaded.config.backbone.name,
    }


def grid_folder(prepared: PreparedExperiment) -> Path:
    """``<checkpoint_dir>/<experiment>/<hash of the resolved config>``: the same command finds the same folder."""
    config = prepared.checked.resolved_config()
    config.pop("tracking", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = Path(prepared.checked.loaded.config.checkpoint_dir)
    return root / safe_name(prepared.checked.loaded.config.name) / digest


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def run_folder(grid: Path, planned: PlannedRun) -> Path:
    return grid / safe_name(planned.name.replace("/", "-"))


def run_child(prepared: PreparedExperiment, planned: PlannedRun, client, experiment_id: str, parent_id: str, tags: dict, show_progress: bool, folder: Path) -> RunResult:
    """One tracked run, resumed if its folder holds an unfinished one; a training failure marks it FAILED, the grid goes on."""
    state = load_state(folder)
    if state and state.status == "FINISHED":
        note = f"already finished in {folder}: skipped (--restart runs the grid again)"
        return RunResult(
            planned.strategy.label, planned.seed, state.tasks, state.initial, planned.order_index,
            state.matrix, state.metrics, "FINISHED", run_id=state.run_id, note=note,
        )
    if state and state.run_id and run_exists(client, state.run_id):
        logger = RunLogger.reopen(client, state.run_id)
    else:
        logger = RunLogger(client, experiment_id, planned.name, tags={**tags, **run_tags(prepared, planned)}, parent_run_id=parent_id)
        config = prepared.checked.resolved_config()
        config["run"] = {"strategy": planned.strategy.as_dict(), "seed": planned.seed, "order": [prepared.checked.task_names[i] for i in planned.order]}
        logger.log_config(config)
        state = state or RunState()
        state.run_id = logger.run_id  # a checkpoint from another store is continued in this new run
        save_state(folder, state)
    try:
        result = train_and_evaluate(prepared, planned, logger, show_progress, folder=folder)
    except KeyboardInterrupt:
        end_quietly(logger, "KILLED")
        raise
    except BaseException:
        end_quietly(logger, "FAILED")
        raise
    log_results(logger, result)
    if result.error:
        logger.set_tags({"error": result.error[:4000]})
    logger.end(result.status)
    return result


def run_experiment(
    prepared: PreparedExperiment, tracking_uri: str | None = None, show_progress: bool = True, on_result=None, restart: bool = False
) -> list[RunResult]:
    """Every planned run of the experiment as a child of one parent run, then the comparison report on the parent."""
    from mlflow import MlflowClient

    checked = prepared.checked
    config = checked.loaded.config
    uri = resolve_tracking_uri(tracking_uri or config.tracking.uri)
    check_tracking_reachable(uri)
    name = config.tracking.experiment or config.name
    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(client, name, default_artifact_location(uri, name))
    tags = default_tags(None)
    grid = grid_folder(prepared)
    if restart and grid.exists():  # keep the old folder, out of the way
        grid.rename(grid.with_name(f"{grid.name}.before-{time.strftime('%Y%m%d-%H%M%S')}"))
    parent = open_parent(client, experiment_id, prepared, grid, tags)
    results: list[RunResult] = []
    try:
        for planned in checked.runs:
            result = run_child(prepared, planned, client, experiment_id, parent.run_id, tags, show_progress, run_folder(grid, planned))
            results.append(result)
            if on_result is not None:
                on_result(result)
    except KeyboardInterrupt:
        end_quietly(parent, "KILLED")
        raise
    except BaseException:
        end_quietly(parent, "FAILED")
        raise
    finish_parent(client, parent, name, results)
    return results


def end_quietly(logger: RunLogger, status: str) -> None:
    """Mark a run ended while another error is on its way up; a tracking outage must not hide that error."""
    try:
        logger.end(status)
    except Exception:  # noqa: BLE001 - the store may be the thing that failed
        pass


def run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def open_parent(client, experiment_id: str, prepared: PreparedExperiment, grid: Path, tags: dict) -> RunLogger:
    """The grid's parent run: reopened when this folder's grid was started before in this store, else new."""
    checked = prepared.checked
    marker = grid / "grid.json"
    if marker.is_file():
        parent_id = json.loads(marker.read_text()).get("parent_run_id")
        if parent_id and run_exists(client, parent_id) and client.get_run(parent_id).info.experiment_id == experiment_id:
            return RunLogger.reopen(client, parent_id)
    parent = RunLogger(
        client,
        experiment_id,
        checked.loaded.config.name,
        tags={**tags, "cl_harness.role": PARENT, "stream": checked.loaded.stream.config.name, "scenario": checked.scenario},
    )
    parent.log_config(checked.resolved_config())
    payload = json.dumps({"parent_run_id": parent.run_id, "runs": [p.name for p in checked.runs]}, indent=1).encode()
    atomic_write_bytes(marker, lambda f: f.write(payload))
    return parent


def finish_parent(client, parent: RunLogger, experiment_name: str, results: list[RunResult]) -> None:
    """Attach the comparison report to the parent run and close it."""
    from cl_harness.report.compare import load_comparison
    from cl_harness.report.html import log_report

    parent.log_final({"runs_finished": float(sum(r.status == "FINISHED" for r in results)), "runs_total": float(len(results))})
    comparison = load_comparison(client, experiment_name, parent.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        log_report(client, parent.run_id, comparison, tmp)
    parent.end("FINISHED" if all(r.status == "FINISHED" for r in results) else "FAILED")
