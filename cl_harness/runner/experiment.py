"""Run a whole experiment grid into MLflow: one parent run per invocation, one child run per planned run."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cl_harness.runner.checkpoint import RunState, atomic_write_bytes, load_state, save_state
from cl_harness.runner.grid import PlannedRun
from cl_harness.runner.prepare import PreparedExperiment
from cl_harness.runner.run import RunResult, train_and_evaluate
from cl_harness.evaluation.validation import VALID_MATRIX_ARTIFACT, valid_matrix_dict
from cl_harness.tracking.artifacts import accuracy_matrix_dict, plot_accuracy_matrix
from cl_harness.tracking.mlflow_logger import (
    RunLogger,
    check_tracking_reachable,
    default_artifact_location,
    default_tags,
    get_or_create_experiment,
    resolve_tracking_uri,
    sqlite_db_path,
)

PARENT, CHILD = "parent", "child"
PLANNED_RUNS_ARTIFACT = "planned_runs.json"
OnResult = Callable[[RunResult], None]


@dataclass(frozen=True)
class RunSpec:
    """What a worker process needs to run planned runs of a grid: how to load the experiment, where to log (picklable)."""

    experiment: str  # the experiment YAML, absolute
    overrides: tuple[str, ...]
    data_root: str | None
    tracking_uri: str  # absolute: workers may start in another folder
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]
    grid: str  # the grid's run folder, absolute (the one shared-disk assumption)
    run_names: tuple[str, ...]
    show_progress: bool = False
    threads: int | None = None  # torch threads per run; None keeps torch's default


@dataclass
class GridContext:
    """One grid invocation in the parent process: the store, the parent run and the run folders."""

    prepared: PreparedExperiment
    client: object
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]
    grid: Path
    show_progress: bool = True
    runs: list[PlannedRun] = field(init=False)

    def __post_init__(self) -> None:
        self.runs = list(self.prepared.checked.runs)

    def run_here(self, planned: PlannedRun) -> RunResult:
        """Train and log one planned run in this process."""
        return run_child(self.prepared, planned, self.client, self.experiment_id, self.parent_run_id, self.tags,
                         self.show_progress, run_folder(self.grid, planned))

    def spec(self, threads: int | None = None) -> RunSpec:
        """The picklable description of this grid that workers load the experiment from again."""
        loaded = self.prepared.checked.loaded
        return RunSpec(
            str(loaded.path), tuple(loaded.overrides), loaded.data_root, absolute_uri(self.tracking_uri), self.experiment_id,
            self.parent_run_id, dict(self.tags), str(self.grid.resolve()), tuple(p.name for p in self.runs), False, threads,
        )

    def lost(self, planned: PlannedRun, error: str) -> RunResult:
        """A run whose worker gave up or died: its MLflow run, if one was created and is still open, is marked FAILED."""
        name = planned.name.replace("'", "\\'")
        found = self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_run_id}' and attributes.run_name = '{name}'"
        )
        run_id = found[0].info.run_id if found else None
        if found and found[0].info.status == "RUNNING":  # its worker died: nobody else will close it
            self.client.set_tag(run_id, "error", error[:4000])
            self.client.set_terminated(run_id, "FAILED")
        elif found and "error" not in found[0].data.tags:  # ended FAILED by the worker's own error handling
            self.client.set_tag(run_id, "error", error[:4000])
        tasks = [self.prepared.checked.task_names[i] for i in planned.order]
        return RunResult(planned.strategy.label, planned.seed, tasks, [], planned.order_index, status="FAILED", error=error, run_id=run_id)


class Executor(Protocol):
    """Runs every planned run of a grid and returns their results in planned order."""

    def run(self, context: GridContext, on_result: OnResult | None) -> list[RunResult]: ...


def run_sequentially(context: GridContext, on_result: OnResult | None) -> list[RunResult]:
    """The local executor: one run after another in this process."""
    results = []
    for planned in context.runs:
        result = context.run_here(planned)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def absolute_uri(uri: str) -> str:
    """A local ``sqlite:///relative/path`` made absolute; other URIs unchanged."""
    db = sqlite_db_path(uri)
    if db is None or db.is_absolute():
        return uri
    return f"sqlite:///{db.resolve()}" + (uri[uri.index("?"):] if "?" in uri else "")


def log_results(logger: RunLogger, result: RunResult) -> None:
    """Final metrics and the accuracy-matrix artifacts (also for a partial matrix)."""
    if result.metrics:
        logger.log_final(result.metrics)
    logger.log_dict(accuracy_matrix_dict(result.tasks, result.initial, result.matrix, result.column_metrics), "accuracy_matrix.json")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "accuracy_matrix.png"
        plot_accuracy_matrix(result.tasks, result.initial, result.matrix, png, title=result.run_name)
        logger.log_artifact(png)
    if result.valid_matrix:
        logger.log_dict(valid_matrix_dict(result.tasks, result.valid_initial, result.valid_matrix), VALID_MATRIX_ARTIFACT)


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
    prepared: PreparedExperiment,
    tracking_uri: str | None = None,
    show_progress: bool = True,
    on_result: OnResult | None = None,
    restart: bool = False,
    executor: Executor | None = None,
) -> list[RunResult]:
    """Every planned run of the experiment as a child of one parent run, then the comparison report on the parent.

    The experiment and the parent run are created here, before any worker starts; ``executor``
    (default: one run after another in this process) runs the children.
    """
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
    context = GridContext(prepared, client, uri, experiment_id, parent.run_id, tags, grid, show_progress)
    try:
        results = executor.run(context, on_result) if executor is not None else run_sequentially(context, on_result)
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
    parent.log_dict({"runs": [p.name for p in checked.runs]}, PLANNED_RUNS_ARTIFACT)  # the report names runs that never started
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
