"""Reading a grid back from the store: one parent run and its children, as plain data.

A grid is one **parent run** (tag ``cl_harness.role=parent``) and its **child runs** (tag
``mlflow.parentRunId``), one child per (strategy, seed, task order). The parent's ``planned_runs.json``
names the runs its latest invocation planned, with their keys: children of other keys (a strategy
since removed or changed) are left out, and planned runs that never started come back as MISSING.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Experiment, Run, ViewType
from mlflow.exceptions import MlflowException

from cl_harness.config.schema import did_you_mean
from cl_harness.errors import ConfigError
from cl_harness.tracking import schema
from cl_harness.tracking.schema import (
    FINISHED,
    MATRIX_ARTIFACT,
    MISSING,
    PARENT_ROLE,
    PARENT_RUN_TAG,
    PLANNED_RUNS_ARTIFACT,
    ROLE_TAG,
    int_tag,
    parse_matrix,
    parse_planned_keys,
    parse_planned_runs,
    parse_run_name,
)
from cl_harness.tracking.store_guard import public_uri

MAX_LISTED = 20

@dataclass
class ChildRun:
    """One child run as read back from the store: tags, final metrics and accuracy matrix."""

    run_id: str
    name: str
    status: str
    strategy: str
    seed: int | None
    order: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    initial: list[float] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)
    error: str | None = None
    note: str | None = None
    inert: str | None = None  # why the strategy's own loss terms did nothing in this run (runner/hooks.py)
    strength_hint: str | None = None  # what to raise when they do nothing
    params: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # its identity in the comparison (RUN_KEY_TAG); None for runs logged before keys existed
    start_time_ms: int | None = None

    @property
    def finished(self) -> bool:
        """Whether the run ended with status FINISHED."""
        return self.status == FINISHED

    @property
    def has_matrix(self) -> bool:
        """Whether a usable accuracy matrix was read."""
        return bool(self.tasks) and bool(self.matrix)


@dataclass
class StoredGrid:
    """One parent run and its children, as read from the store."""

    experiment_name: str
    experiment_id: str
    parent_run_id: str
    parent_run_name: str
    parent_status: str
    start_time_ms: int | None
    tracking_uri: str
    runs: list[ChildRun]
    parent_tags: dict[str, str] = field(default_factory=dict)


def _listed(names: Sequence[str]) -> str:
    """At most MAX_LISTED names, comma-separated, with a count of the rest."""
    shown = ", ".join(names[:MAX_LISTED])
    rest = len(names) - MAX_LISTED
    return shown + (f" and {rest} more" if rest > 0 else "") if names else "none"


def _paged(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of a paged MLflow search, ``fetch(page_token)`` returning a PagedList."""
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def find_experiment(client: MlflowClient, name: str) -> Experiment:
    """The active experiment called ``name``; ConfigError listing the existing ones (with a suggestion) otherwise."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage != "deleted":
        return experiment
    names = sorted(e.name for e in _paged(lambda t: client.search_experiments(ViewType.ACTIVE_ONLY, page_token=t)))
    suggestion = did_you_mean(name, names)
    hint = (suggestion + " " if suggestion else "") + f"existing experiments: {_listed(names)}"
    state = "is deleted" if experiment is not None else "does not exist"
    raise ConfigError(f"MLflow experiment {name!r} {state} in {public_uri(client.tracking_uri)}", key="experiment", hint=hint)


def _parent_runs(client: MlflowClient, experiment_id: str, limit: int) -> list[Run]:
    """The experiment's most recent parent runs, newest first."""
    return list(client.search_runs(
        [experiment_id], f"tags.`{ROLE_TAG}` = '{PARENT_ROLE}'", max_results=limit, order_by=["attributes.start_time DESC"]
    ))


def _recent_parents_hint(client: MlflowClient, experiment_id: str) -> str:
    """A hint listing the experiment's recent parent run ids."""
    parents = _parent_runs(client, experiment_id, 5)
    if not parents:
        return "the experiment has no cl-harness parent run; run `cl-harness run EXPERIMENT.yaml` first"
    return "recent parent runs: " + ", ".join(f"{p.info.run_id} ({p.info.run_name})" for p in parents)


def find_parent(client: MlflowClient, experiment: Experiment, parent_run_id: str | None = None) -> Run:
    """The given parent run of ``experiment``, or its most recent one; ConfigError when there is none."""
    if parent_run_id is None:
        parents = _parent_runs(client, experiment.experiment_id, 1)
        if not parents:
            raise ConfigError(
                f"MLflow experiment {experiment.name!r} has no cl-harness parent run (tag {ROLE_TAG}={PARENT_ROLE})",
                key="experiment",
                hint="run `cl-harness run EXPERIMENT.yaml` first; runs logged before parent runs existed cannot be compared",
            )
        return parents[0]
    try:
        run = client.get_run(parent_run_id)
    except MlflowException as exc:
        raise ConfigError(
            f"no run with id {parent_run_id!r} in {public_uri(client.tracking_uri)}",
            key="parent", hint=_recent_parents_hint(client, experiment.experiment_id),
        ) from exc
    _check_parent(run, experiment)
    return run


def _check_parent(run: Run, experiment: Experiment) -> None:
    """Raise ConfigError unless ``run`` is a parent run of ``experiment``."""
    if run.info.experiment_id != experiment.experiment_id:
        raise ConfigError(
            f"run {run.info.run_id} belongs to experiment id {run.info.experiment_id}, not {experiment.name!r}",
            key="parent", hint=f"pass the experiment the run belongs to, or a parent run of {experiment.name!r}",
        )
    role = run.data.tags.get(ROLE_TAG)
    if role != PARENT_ROLE:
        parent = run.data.tags.get(PARENT_RUN_TAG)
        hint = f"its parent run is {parent}" if parent else f"pass the id of a run tagged {ROLE_TAG}={PARENT_ROLE}"
        raise ConfigError(f"run {run.info.run_id} is not a cl-harness parent run (role {role!r})", key="parent", hint=hint)


def find_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """All active child runs of the parent (every page)."""
    query = f"tags.{PARENT_RUN_TAG} = '{parent_run_id}'"
    return list(_paged(lambda t: client.search_runs([experiment_id], query, max_results=1000, page_token=t)))


def _read_matrix(client: MlflowClient, run_id: str, scratch: Path) -> tuple[list[str], list[float], list[list[float]]]:
    """Download and parse the run's accuracy_matrix.json; ValueError when missing or malformed."""
    target = scratch / run_id
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, MATRIX_ARTIFACT, str(target))
        data = json.loads(Path(local).read_text(encoding="utf-8"))
    except (MlflowException, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{MATRIX_ARTIFACT} could not be read ({type(exc).__name__})") from exc
    try:
        return parse_matrix(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{MATRIX_ARTIFACT} is malformed: {exc}") from exc


def read_child(client: MlflowClient, run: Run, scratch: Path) -> ChildRun:
    """A ChildRun from an MLflow run; the matrix is downloaded for FINISHED runs only."""
    tags = run.data.tags
    name = run.info.run_name or run.info.run_id
    child = ChildRun(
        run_id=run.info.run_id,
        name=name,
        status=run.info.status,
        strategy=tags.get(schema.STRATEGY_TAG) or parse_run_name(name).label,
        seed=int_tag(tags, schema.SEED_TAG),
        order=int_tag(tags, schema.ORDER_TAG),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        error=tags.get(schema.ERROR_TAG),
        inert=tags.get(schema.INERT_TAG),
        strength_hint=tags.get(schema.STRENGTH_HINT_TAG),
        params=dict(run.data.params),
        key=tags.get(schema.RUN_KEY_TAG),
        start_time_ms=run.info.start_time,
    )
    if child.finished:
        try:
            child.tasks, child.initial, child.matrix = _read_matrix(client, child.run_id, scratch)
        except ValueError as exc:
            child.note = str(exc)
    return child


def _planned(client: MlflowClient, parent_run_id: str, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """The run names the parent planned and their keys (key -> name; its ``planned_runs.json``); empty for parents
    logged before it existed, keys empty for parents logged before run keys."""
    target = scratch / parent_run_id
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(parent_run_id, PLANNED_RUNS_ARTIFACT, str(target))
        data = json.loads(Path(local).read_text(encoding="utf-8"))
        return parse_planned_runs(data), parse_planned_keys(data)
    except (MlflowException, OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return [], {}


def planned_children(children: list[ChildRun], keys: dict[str, str]) -> list[ChildRun]:
    """The children whose key the parent planned last, one per key (a finished one first, then the newest); all of them
    when the parent records no keys."""
    if not keys:
        return children
    chosen: dict[str, ChildRun] = {}
    for child in children:
        best = chosen.get(child.key or "")
        if child.key in keys and (best is None or (child.finished, child.start_time_ms or 0) > (best.finished, best.start_time_ms or 0)):
            chosen[child.key] = child
    return list(chosen.values())


def missing_run(name: str) -> ChildRun:
    """A planned ``<strategy>/seed<k>/order<m>`` run that has no child run in the store."""
    parts = parse_run_name(name)
    return ChildRun(
        run_id="", name=name, status=MISSING, strategy=parts.label, seed=parts.seed, order=parts.order,
        error="planned, but no run of it is in the store (never started, or deleted there)",
    )


def _run_sort_key(run: ChildRun) -> tuple:
    """Children ordered by strategy, seed, order, name."""
    return (run.strategy, run.seed if run.seed is not None else -1, run.order if run.order is not None else -1, run.name)


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow's download progress bars off while a grid is read (from a notebook too), as the CLI has them."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def read_grid(client: MlflowClient, experiment_name: str, parent_run_id: str | None = None) -> StoredGrid:
    """Read a parent run (default: the experiment's most recent one) and all its children back from the store."""
    experiment = find_experiment(client, experiment_name)
    parent = find_parent(client, experiment, parent_run_id)
    children = find_children(client, experiment.experiment_id, parent.info.run_id)
    with tempfile.TemporaryDirectory(prefix="cl-harness-compare-") as scratch, _no_progress_bars():
        names, keys = _planned(client, parent.info.run_id, Path(scratch))
        if keys:  # only the planned children's matrices are read
            children = [run for run in children if run.data.tags.get(schema.RUN_KEY_TAG) in keys]
        runs = planned_children([read_child(client, run, Path(scratch)) for run in children], keys)
        logged = {r.key for r in runs} if keys else {r.name for r in runs}
        runs += [missing_run(keys.get(planned, planned)) for planned in (keys or names) if planned not in logged]
        runs.sort(key=_run_sort_key)
    return StoredGrid(
        experiment_name=experiment.name,
        experiment_id=experiment.experiment_id,
        parent_run_id=parent.info.run_id,
        parent_run_name=parent.info.run_name or parent.info.run_id,
        parent_status=parent.info.status,
        start_time_ms=parent.info.start_time,
        tracking_uri=public_uri(client.tracking_uri),
        runs=runs,
        parent_tags=dict(parent.data.tags),
    )


# --- hyperparameter search (cl_harness/search/) -----------------------------------------------------


@dataclass
class SearchTrialRun:
    """One trial run (a trial and seed) of a search, as read back from the store."""

    name: str
    status: str
    strategy: str
    params: dict[str, str]
    valid_acc: float | None
    trial: int | None = None  # the Optuna trial number (its trial tag)


@dataclass
class StoredSearch:
    """The most recent search of an experiment: its parent run, the Optuna study file, and its trial runs."""

    experiment_name: str
    parent_run_id: str
    storage: str  # path of the SQLite study file ('' when unknown)
    trials: list[SearchTrialRun]
    n_children: int  # every child run of the search parent

    def by_strategy(self) -> dict[str, list[SearchTrialRun]]:
        out: dict[str, list[SearchTrialRun]] = {}
        for trial in self.trials:
            out.setdefault(trial.strategy, []).append(trial)
        return out


def read_search(client: MlflowClient, experiment_name: str) -> StoredSearch:
    """The experiment's most recent ``search`` parent run and its trial runs; ConfigError when there is none."""
    experiment = find_experiment(client, experiment_name)
    parents = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = '{schema.SEARCH_ROLE}'",
                                 max_results=1, order_by=["attributes.start_time DESC"])
    if not parents:
        raise ConfigError(f"experiment {experiment_name!r} has no search run", key="experiment",
                          hint="give the experiment a `search:` block and run `cl-harness run EXPERIMENT.yaml --search-only`")
    parent = parents[0]
    children = find_children(client, experiment.experiment_id, parent.info.run_id)
    trials = [
        SearchTrialRun(run.info.run_name, run.info.status, run.data.tags.get(schema.STRATEGY_TAG, "?"),
                       schema.trial_params(run.data.tags), run.data.metrics.get(schema.VALID_ACC_METRIC),
                       _whole_number(run.data.tags.get(schema.TRIAL_TAG)))
        for run in children if run.data.tags.get(ROLE_TAG) == schema.TRIAL_ROLE
    ]
    return StoredSearch(experiment.name, parent.info.run_id, parent.data.tags.get(schema.SEARCH_STORAGE_TAG, ""), trials, len(children))


def _whole_number(text: str | None) -> int | None:
    """A tag's whole number, or None when it is missing or not one."""
    return int(text) if text is not None and text.isascii() and text.isdigit() and len(text) < 19 else None
