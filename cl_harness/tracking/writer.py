"""Writing to the store: parent and child run lifecycles and their logging, through ``mlflow.MlflowClient`` only
(no fluent API, no active-run global state). Names come from ``tracking/schema.py``."""

from __future__ import annotations

import json
from contextlib import contextmanager
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from cl_harness.tracking import schema
from cl_harness.tracking.schema import END_STATUSES, PARENT_RUN_TAG, metric_key
from cl_harness.tracking.store import retry_if_raced, run_exists
from cl_harness.tracking.store_guard import artifact_writes

TRACKED_PACKAGES = ("torch", "transformers", "avalanche-lib", "mlflow", "datasets", "cl-harness")

T = TypeVar("T")


# --- keys and values ------------------------------------------------------------------------------


def plain(obj: Any) -> Any:
    """``obj`` as plain YAML/JSON data: dicts, lists, str, int, float, bool, None."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return plain(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return plain(obj.item())
    return str(obj)


def _truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_value(value: Any) -> str:
    """A config value as an MLflow param: strings as-is, anything else as JSON text, truncated to MLflow's limit."""
    text = value if isinstance(value, str) else json.dumps(plain(value), ensure_ascii=False)
    return _truncate(text, MAX_PARAM_VAL_LENGTH)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The config flattened to dotted keys (``training.lr``); lists and empty dicts stay whole as JSON text."""
    out: dict[str, str] = {}
    for key, value in plain(config).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, dotted + "."))
        else:
            out[metric_key(dotted)] = param_value(value)
    return out


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now_ms() -> int:
    """The current time in milliseconds since the epoch, as MLflow stores it."""
    return int(time.time() * 1000)


# --- runs -----------------------------------------------------------------------------------------


class RunLogger:
    """One MLflow run, logged through an explicit client; usable as a context manager that ends the run."""

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        """Create the run (as a child of ``parent_run_id`` when given)."""
        all_tags = {k: _truncate(str(v), MAX_TAG_VAL_LENGTH) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        self._client = client
        self._run_id: str = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        self._ended = False

    @classmethod
    def reopen(cls, client: MlflowClient, run_id: str) -> "RunLogger":
        """Continue logging into an existing run (a resumed one), marking it RUNNING again."""
        logger = cls.__new__(cls)
        logger._client = client
        logger._run_id = run_id
        logger._ended = False
        client.update_run(run_id, status="RUNNING")
        return logger

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric ``key`` is already recorded."""
        return {m.step for m in self._client.get_metric_history(self._run_id, key)}

    @property
    def run_id(self) -> str:
        """The MLflow run id."""
        return self._run_id

    @property
    def client(self) -> MlflowClient:
        """The client the run is logged through."""
        return self._client

    def log_config(self, resolved: Mapping[str, Any], strategy_params: Mapping[str, Any] | None = None) -> None:
        """Log the resolved config as a ``config.yaml`` artifact and as dotted-key params (batches of 100).

        Its ``strategies`` list is not one param: ``strategy_params`` (``strategy.<label>.<param>``: value) stand for it.
        """
        data = {k: v for k, v in plain(resolved).items() if k != "strategies"}
        self.log_params({**flatten_params(data), **{metric_key(k): param_value(v) for k, v in (strategy_params or {}).items()}})
        self.log_config_file(resolved)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params (already flat strings), in batches of 100."""
        for chunk in _chunks([Param(k, v) for k, v in params.items()], MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, params=chunk)

    def log_config_file(self, resolved: Mapping[str, Any]) -> None:
        """The resolved config as the ``config.yaml`` artifact (replacing an earlier one)."""
        text = yaml.safe_dump(plain(resolved), sort_keys=False, allow_unicode=True)
        with artifact_writes(self._run_id):
            self._client.log_text(self._run_id, text, schema.CONFIG_ARTIFACT)

    def _log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` at ``step`` in one ``log_batch`` call (more only past MLflow's 1000-per-batch cap)."""
        timestamp = _now_ms()
        batch: dict[str, Metric] = {}
        for name, value in metrics.items():
            key = metric_key(name)
            if key in batch:
                raise ValueError(f"metric names {name!r} and another both map to MLflow key {key!r}")
            batch[key] = Metric(key, float(value), timestamp, int(step))
        for chunk in _chunks(list(batch.values()), MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=chunk)

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log the metrics of one step (e.g. after training on task ``step``) in a single call."""
        self._log_metrics(step, metrics)

    def log_final(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log end-of-run summary metrics (use names distinct from the per-step ones)."""
        self._log_metrics(step, metrics)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Write ``obj`` as a JSON (``.json``) or YAML (``.yaml``/``.yml``) artifact."""
        with artifact_writes(self._run_id):
            self._client.log_dict(self._run_id, plain(obj), artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file (at the artifact root, or under ``artifact_path``)."""
        local = Path(path)
        if not local.is_file():
            raise FileNotFoundError(f"artifact file not found: {local}")
        with artifact_writes(self._run_id):
            self._client.log_artifact(self._run_id, str(local), artifact_path)

    def log_figure_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload an already-written figure (PNG, SVG, ...) as an artifact."""
        self.log_artifact(path, artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as strings, truncated to MLflow's limit), in batches of 100."""
        items = [RunTag(k, _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            retry_if_raced(lambda chunk=chunk: self._client.log_batch(self._run_id, tags=chunk))  # two finishers of one grid

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run terminated with status FINISHED, FAILED or KILLED."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {', '.join(END_STATUSES)}, got {status!r}")
        self._client.set_terminated(self._run_id, status)
        self._ended = True

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """End the run unless already ended: FINISHED, KILLED on Ctrl-C, FAILED on any other exception."""
        if self._ended:
            return
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")


# --- provenance tags ------------------------------------------------------------------------------


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or ``not installed``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(args: Sequence[str], cwd: Path) -> str | None:
    """Stdout of ``git <args>`` in ``cwd``, or None when git or the checkout is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_tags(directory: Path) -> dict[str, str]:
    """``git_commit`` and ``git_dirty`` (tracked files changed) for ``directory``; ``unknown`` outside a checkout."""
    commit = _git(["rev-parse", "HEAD"], directory)
    if not commit:
        return {schema.GIT_COMMIT_TAG: "unknown", schema.GIT_DIRTY_TAG: "unknown"}
    status = _git(["status", "--porcelain", "--untracked-files=no"], directory)
    dirty = "unknown" if status is None else str(bool(status)).lower()
    return {schema.GIT_COMMIT_TAG: commit, schema.GIT_DIRTY_TAG: dirty, schema.MLFLOW_GIT_COMMIT_TAG: commit}


def default_tags(project_dir: Path | None = None) -> dict[str, str]:
    """Provenance tags: ``versions.<pkg>`` for the main packages plus the git commit of ``project_dir``."""
    tags = {schema.version_tag(name): package_version(name) for name in TRACKED_PACKAGES}
    tags.update(git_tags(project_dir if project_dir is not None else Path(__file__).resolve().parents[2]))
    return tags


# --- the grid's runs ------------------------------------------------------------------------------


def child_tags(label: str, seed: int, order: int, tasks: Sequence[str], stream: str, scenario: str, backbone: str,
               key: str = "") -> dict[str, str]:
    """The tags of the child run of one (strategy, seed, task order); ``key``: its identity in the comparison."""
    return {
        schema.ROLE_TAG: schema.CHILD_ROLE,
        **({schema.RUN_KEY_TAG: key} if key else {}),
        schema.STRATEGY_TAG: label,
        schema.SEED_TAG: str(seed),
        schema.ORDER_TAG: str(order),
        schema.TASK_ORDER_TAG: schema.task_order_tag(tasks),
        schema.STREAM_TAG: stream,
        schema.SCENARIO_TAG: scenario,
        schema.BACKBONE_TAG: backbone,
    }


def parent_tags(stream: str, scenario: str) -> dict[str, str]:
    """The tags of a grid's parent run (besides the provenance tags)."""
    return {schema.ROLE_TAG: schema.PARENT_ROLE, schema.STREAM_TAG: stream, schema.SCENARIO_TAG: scenario}


def open_child(
    client: MlflowClient, experiment_id: str, name: str, tags: Mapping[str, str], parent_run_id: str, config: Mapping[str, Any],
    strategy_params: Mapping[str, Any] | None = None,
) -> RunLogger:
    """A new child run of ``parent_run_id``, with its tags and resolved config (its strategy's parameters one param each) logged."""
    logger = RunLogger(client, experiment_id, name, tags=tags, parent_run_id=parent_run_id)
    with closed_on_failure(logger):
        logger.log_config(config, strategy_params)
    return logger


def reopen_run(client: MlflowClient, run_id: str | None, experiment_id: str | None = None) -> RunLogger | None:
    """The run ``run_id`` reopened for logging when it still exists (in ``experiment_id`` when given); else None."""
    if not run_id or not run_exists(client, run_id):
        return None
    if experiment_id is not None and client.get_run(run_id).info.experiment_id != experiment_id:
        return None
    return RunLogger.reopen(client, run_id)


def open_parent(client: MlflowClient, experiment_id: str, name: str, tags: Mapping[str, str], shared: Mapping[str, Any]) -> RunLogger:
    """A new parent run of a comparison, its params the settings every run of it shares (they never change for it)."""
    parent = RunLogger(client, experiment_id, name, tags=tags)
    with closed_on_failure(parent):
        parent.log_params(flatten_params(shared))
    return parent


def log_plan(parent: RunLogger, config: Mapping[str, Any], planned: Sequence[str], keys: Sequence[str]) -> None:
    """The latest invocation's config and planned runs (names and keys) on a comparison's parent, replacing earlier ones:
    its comparison holds these runs (the report names those that never started)."""
    with closed_on_failure(parent):
        parent.log_config_file(config)
        parent.log_dict(schema.planned_runs_dict(planned, keys), schema.PLANNED_RUNS_ARTIFACT)


def log_matrix(
    logger: RunLogger,
    tasks: Sequence[str],
    initial: Sequence[float],
    matrix: Sequence[Sequence[float]],
    column_metrics: Sequence[str] | None,
    draw: Callable[[Path], Any] | None = None,
) -> None:
    """The accuracy matrix as ``accuracy_matrix.json``, and as ``accuracy_matrix.png`` drawn by ``draw(path)``."""
    logger.log_dict(schema.accuracy_matrix_dict(tasks, initial, matrix, column_metrics), schema.MATRIX_ARTIFACT)
    if draw is not None:
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / schema.MATRIX_PLOT_ARTIFACT
            draw(png)
            logger.log_artifact(png)


def log_valid_matrix(
    logger: RunLogger, tasks: Sequence[str], initial: Sequence[float], matrix: Sequence[Sequence[float]]
) -> None:
    """The validation accuracy matrix as ``valid_accuracy_matrix.json`` (nothing without one)."""
    if matrix:
        logger.log_dict(schema.valid_matrix_dict(tasks, initial, matrix), schema.VALID_MATRIX_ARTIFACT)


def record_error(logger: RunLogger, error: str) -> None:
    """The ``error`` tag of a failed run."""
    logger.set_tags({schema.ERROR_TAG: error[: schema.ERROR_TAG_CHARS]})


def children_named(client: MlflowClient, experiment_id: str, parent_run_id: str, name: str) -> list:
    """The (not deleted) child runs of ``parent_run_id`` named ``name``."""
    quoted = name.replace("'", "\\'")
    return client.search_runs([experiment_id], f"tags.{PARENT_RUN_TAG} = '{parent_run_id}' and attributes.run_name = '{quoted}'")


def discard_empty_children(client: MlflowClient, experiment_id: str, parent_run_id: str, name: str) -> int:
    """Delete the unfinished children ``name`` of ``parent_run_id`` that hold no metric: what a process stopped while it
    opened the run left (its run folder never learnt their id), before the run is opened again. Returns how many."""
    found = children_named(client, experiment_id, parent_run_id, name)
    empty = [run for run in found if run.info.status != schema.FINISHED and not run.data.metrics]
    for run in empty:
        client.delete_run(run.info.run_id)
    return len(empty)


def close_lost_child(client: MlflowClient, experiment_id: str, parent_run_id: str, name: str, error: str) -> str | None:
    """A child whose worker gave up or died: marked FAILED if still RUNNING, with its error tag; returns its run id."""
    found = children_named(client, experiment_id, parent_run_id, name)
    if not found:
        return None
    run_id = found[0].info.run_id
    if found[0].info.status == schema.RUNNING:  # its worker died: nobody else will close it
        tag_run(client, run_id, {schema.ERROR_TAG: error[: schema.ERROR_TAG_CHARS]})
        client.set_terminated(run_id, schema.FAILED)
    elif schema.ERROR_TAG not in found[0].data.tags:  # ended FAILED by the worker's own error handling
        tag_run(client, run_id, {schema.ERROR_TAG: error[: schema.ERROR_TAG_CHARS]})
    return run_id


def tag_run(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a run this process does not hold (another process may tag it too), leaving its status alone."""
    batch = [RunTag(k, _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
    retry_if_raced(lambda: client.log_batch(run_id, tags=batch))  # two finishers of one grid tag the same runs


def log_grid_counts(parent: RunLogger, finished: int, total: int) -> None:
    """How many of the parent's planned runs finished."""
    parent.log_final({schema.RUNS_FINISHED_METRIC: float(finished), schema.RUNS_TOTAL_METRIC: float(total)})


def log_report_files(client: MlflowClient, run_id: str, table: Any, files: Sequence[Path], plots: Sequence[Path]) -> None:
    """Attach a comparison report to a parent run: the table as ``comparison_table.json`` (replaced, not appended
    to, when the run already has one), the report files at the root and the plots under ``plots/``."""
    with artifact_writes(run_id):
        _log_table(client, run_id, table)
        for path in files:
            client.log_artifact(run_id, str(path))
        for path in plots:
            client.log_artifact(run_id, str(path), schema.PLOTS_ARTIFACT_DIR)


def _log_table(client: MlflowClient, run_id: str, table: Any) -> None:
    """Log a pandas table as ``comparison_table.json``; a second call replaces the first."""
    import warnings

    existing = {a.path for a in client.list_artifacts(run_id)}
    if schema.COMPARISON_TABLE_ARTIFACT not in existing:
        with warnings.catch_warnings():  # MLflow's own select_dtypes(["object"]) call warns under pandas 3
            warnings.filterwarnings("ignore", message="For backward compatibility, 'str' dtypes")
            client.log_table(run_id, data=table, artifact_file=schema.COMPARISON_TABLE_ARTIFACT)
        return
    with tempfile.TemporaryDirectory() as tmp:  # log_table would concatenate with the old rows
        path = Path(tmp) / schema.COMPARISON_TABLE_ARTIFACT
        table.to_json(path, orient="split", index=False)
        client.log_artifact(run_id, str(path))


@contextmanager
def closed_on_failure(logger: RunLogger) -> Iterator[None]:
    """Whatever fails inside ends ``logger``'s run (KILLED on Ctrl-C, else FAILED) before the error goes on: none stays RUNNING."""
    try:
        yield
    except BaseException as exc:
        end_quietly(logger, schema.KILLED if isinstance(exc, KeyboardInterrupt) else schema.FAILED)
        raise


def end_quietly(logger: RunLogger, status: str) -> None:
    """Mark a run ended while another error is on its way up; a tracking outage must not hide that error."""
    try:
        logger.end(status)
    except Exception:  # noqa: BLE001 - the store may be the thing that failed
        pass


# --- hyperparameter search (cl_harness/search/) -----------------------------------------------------


def open_search_parent(
    client: MlflowClient, experiment_id: str, stream: str, scenario: str, storage: Path, config: Mapping[str, Any],
    strategy_params: Mapping[str, Any] | None = None,
) -> RunLogger:
    """A new ``search`` parent run: role, stream, scenario and the Optuna study file it resumes from; its config logged."""
    tags = {schema.ROLE_TAG: schema.SEARCH_ROLE, schema.STREAM_TAG: stream, schema.SCENARIO_TAG: scenario,
            schema.SEARCH_STORAGE_TAG: str(storage)}
    parent = RunLogger(client, experiment_id, schema.SEARCH_RUN_NAME, tags=tags)
    parent.log_config(config, strategy_params)
    return parent


def open_trial(
    client: MlflowClient, experiment_id: str, parent_run_id: str, label: str, trial: int, seed: int, params: Mapping[str, Any]
) -> RunLogger:
    """A trial run (one trial, one seed) under the search parent, tagged with its sampled parameters."""
    return RunLogger(client, experiment_id, schema.trial_run_name(label, trial, seed),
                     tags=schema.trial_tags(label, trial, seed, {k: param_value(v) for k, v in params.items()}),
                     parent_run_id=parent_run_id)


def end_stale_trials(client: MlflowClient, experiment_id: str, parent_run_id: str, reason: str) -> int:
    """Trial runs of the search parent that a killed process left RUNNING: ended FAILED with ``reason``; how many."""
    query = (f"tags.{PARENT_RUN_TAG} = '{parent_run_id}' and tags.`{schema.ROLE_TAG}` = '{schema.TRIAL_ROLE}'"
             f" and attributes.status = '{schema.RUNNING}'")
    stale = client.search_runs([experiment_id], query, max_results=1000)
    for run in stale:
        tag_run(client, run.info.run_id, {schema.ERROR_TAG: reason[: schema.ERROR_TAG_CHARS]})
        client.set_terminated(run.info.run_id, schema.FAILED)
    return len(stale)


def log_search_outcome(parent: RunLogger, best_params_file: Path, best: Mapping[str, tuple[float | None, Mapping[str, Any]]]) -> None:
    """The search's outcome on its parent: ``best_params.yaml``, ``best_valid_acc.<strategy>`` and ``best.<strategy>.<name>`` tags.

    ``best`` maps each strategy label to (its best validation accuracy or None, its best parameters).
    """
    parent.log_artifact(best_params_file)
    parent.log_final({schema.best_valid_acc_metric(label): value for label, (value, _) in best.items() if value is not None})
    parent.set_tags(schema.best_tags({label: {k: param_value(v) for k, v in params.items()} for label, (_, params) in best.items()}))


def log_search_plot(client: MlflowClient, run_id: str, path: Path) -> None:
    """A plot of the search (e.g. Optuna's optimisation history) under ``search/`` of the search parent."""
    with artifact_writes(run_id):
        client.log_artifact(run_id, str(path), schema.SEARCH_ARTIFACT_DIR)
