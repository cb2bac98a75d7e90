"""Compare the strategies of one experiment invocation, read back from the MLflow tracking store.

A comparison is built from one **parent run** (tag ``cl_harness.role=parent``) and its **child runs**
(tag ``mlflow.parentRunId``), one child per (strategy, seed, task order). Only FINISHED children enter
the statistics; the others are reported as missing or failed.

Spread convention: ``<metric>_std`` is the *sample* standard deviation (``ddof=1``) over a strategy's
finished runs (seeds x orders). It is NaN for a single run (and for metrics a run does not log, e.g.
``bwt`` of ``joint``); the formatted tables show NaN as ``-``.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Experiment, Run, ViewType
from mlflow.exceptions import MlflowException

from cl_harness.config.schema import did_you_mean
from cl_harness.errors import ConfigError
from cl_harness.report.statistics import STAT_DEFINITIONS, statistics_columns, statistics_display

ROLE_TAG = "cl_harness.role"
PARENT_ROLE, CHILD_ROLE = "parent", "child"
PARENT_RUN_TAG = "mlflow.parentRunId"
MATRIX_ARTIFACT = "accuracy_matrix.json"
PLANNED_ARTIFACT = "planned_runs.json"
FINISHED = "FINISHED"
MISSING = "MISSING"
MAX_LISTED = 20

#: Metrics aggregated per strategy (mean and std), in table order.
TABLE_METRICS = (
    "acc",
    "bwt",
    "fwt",
    "forgetting",
    "nfr",
    "learning_acc",
    "wall_time_s",
    "train_examples_per_s",
    "trainable_params",
    "train_time_per_task_s",
    "peak_memory_mb",
    "extra_memory_mb",
)
#: Metrics that are fractions in [0, 1] (or differences of them), shown in percent.
PERCENT_METRICS = frozenset({"acc", "bwt", "fwt", "forgetting", "forgetting_last", "learning_acc", "nfr"})

#: Column headers of the formatted tables, by metric.
HEADERS = {
    "acc": "acc (%)",
    "bwt": "bwt (%)",
    "fwt": "fwt (%)",
    "forgetting": "forgetting (%)",
    "nfr": "neg. flip rate (%)",
    "learning_acc": "learning acc (%)",
    "wall_time_s": "wall time (s)",
    "train_examples_per_s": "train ex/s",
    "trainable_params": "trainable params",
    "train_time_per_task_s": "train time/task (s)",
    "peak_memory_mb": "peak memory (MB)",
    "extra_memory_mb": "extra memory (MB)",
}

#: One-line definitions of the reported quantities (T tasks, R[i][j] = accuracy on task j after training task i).
DEFINITIONS = {
    "runs": "finished child runs / all child runs of the strategy (seeds x task orders); only finished runs enter the statistics.",
    "acc": "final average accuracy: mean accuracy over all T tasks after training on the last task.",
    "bwt": "backward transfer: mean over tasks 1..T-1 of (final accuracy - accuracy right after training on the task); negative means forgetting.",
    "fwt": "forward transfer: mean over tasks 2..T of (accuracy on the task before training on it - the untrained model's accuracy on it).",
    "forgetting": "average forgetting: mean over tasks 1..T-1 of (best accuracy before the last step - final accuracy).",
    "nfr": "negative flip rate (Yan et al. 2021): after each step i >= 2, the fraction of the test examples of tasks 1..i-1 right before the step and wrong after it; mean over the steps.",
    "learning_acc": "learning accuracy: mean accuracy on each task right after training on it.",
    "wall_time_s": "wall-clock seconds of the run (evaluation included).",
    "train_examples_per_s": "training throughput in examples per second.",
    "trainable_params": "number of trainable parameters of the model during the last task (PEFT: adapters + heads).",
    "train_time_per_task_s": "mean training seconds per task (evaluation excluded).",
    "peak_memory_mb": "peak memory of the run in MB (CUDA: allocated; CPU: the process's peak resident memory).",
    "extra_memory_mb": "peak memory minus the memory held once the model and data were loaded: what training adds (optimizer state, activations, buffers).",
    "mean ± std": "mean and sample standard deviation (ddof=1) over the finished runs; '-' where undefined (a single run, or a metric the strategy does not log).",
    **STAT_DEFINITIONS,
}


# --- data -----------------------------------------------------------------------------------------


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

    @property
    def finished(self) -> bool:
        """Whether the run ended with status FINISHED."""
        return self.status == FINISHED

    @property
    def has_matrix(self) -> bool:
        """Whether a usable accuracy matrix was read."""
        return bool(self.tasks) and bool(self.matrix)


@dataclass
class MeanMatrix:
    """A strategy's accuracy matrix averaged over its finished runs, column j = j-th task of the training order."""

    strategy: str
    labels: list[str]
    steps: list[int]
    initial: np.ndarray
    rows: np.ndarray
    n_runs: int

    def row_label(self, index: int) -> str:
        """The label of matrix row ``index``: the task trained last, or ``all tasks`` for a single joint row."""
        step = self.steps[index]
        if len(self.steps) == 1 and len(self.labels) > 1:
            return "all tasks"
        return self.labels[step - 1]


@dataclass
class Comparison:
    """Everything the report shows about one parent run and its children."""

    experiment_name: str
    experiment_id: str
    parent_run_id: str
    parent_run_name: str
    parent_status: str
    start_time_ms: int | None
    tracking_uri: str
    runs: list[ChildRun]
    parent_tags: dict[str, str] = field(default_factory=dict)

    @property
    def started(self) -> str:
        """The parent run's start time as ``YYYY-MM-DD HH:MM UTC`` (``unknown`` if not recorded)."""
        if not self.start_time_ms:
            return "unknown"
        return datetime.fromtimestamp(self.start_time_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def finished(self) -> list[ChildRun]:
        """The FINISHED children."""
        return [r for r in self.runs if r.finished]

    def problems(self) -> list[ChildRun]:
        """Children that did not finish (FAILED, KILLED, still RUNNING, ...) and planned runs with no child (MISSING)."""
        return [r for r in self.runs if not r.finished]

    def strategies(self) -> list[str]:
        """Strategy labels in table order (best mean final accuracy first)."""
        return list(self.table()["strategy"])

    def runs_frame(self) -> pd.DataFrame:
        """One row per child run: identity, status and final metrics (NaN where not logged)."""
        records = [
            {"run": r.name, "run_id": r.run_id, "strategy": r.strategy, "seed": r.seed, "order": r.order,
             "status": r.status, **{m: r.metrics.get(m, math.nan) for m in TABLE_METRICS}}
            for r in self.runs
        ]
        return pd.DataFrame(records, columns=["run", "run_id", "strategy", "seed", "order", "status", *TABLE_METRICS])

    def table(self) -> pd.DataFrame:
        """One row per strategy: ``n_finished``, ``n_runs`` and ``<metric>_mean``/``_std``, best mean acc first."""
        frame = self.runs_frame()
        done = frame[frame["status"] == FINISHED]
        rows = [_strategy_row(name, frame, done) for name in dict.fromkeys(frame["strategy"])]
        columns = ["strategy", "n_finished", "n_runs"] + [f"{m}_{s}" for m in TABLE_METRICS for s in ("mean", "std")]
        table = pd.DataFrame(rows, columns=columns)
        table = table.sort_values(["acc_mean", "strategy"], ascending=[False, True], na_position="last")
        table = table.reset_index(drop=True)
        keyed = {name: {(r.seed, r.order): r.metrics.get("acc", math.nan) for r in self.finished() if r.strategy == name}
                 for name in table["strategy"]}
        return pd.concat([table, statistics_columns(keyed, list(table["strategy"]))], axis=1)

    def by_position(self) -> bool:
        """True when the finished runs trained the tasks in different orders (columns then mean positions)."""
        orders = {tuple(r.tasks) for r in self.finished() if r.has_matrix}
        return len(orders) > 1

    def mean_matrices(self) -> list[MeanMatrix]:
        """Per strategy (table order) with a finished matrix: the mean accuracy matrix by training position."""
        positional = self.by_position()
        out = []
        for strategy in self.strategies():
            runs = [r for r in self.finished() if r.strategy == strategy and r.has_matrix]
            if runs:
                out.append(_mean_matrix(strategy, runs, positional))
        return out


def _mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample std of the non-NaN values (NaN when there are none, std NaN for one value)."""
    clean = values.dropna().astype(float)
    if clean.empty:
        return math.nan, math.nan
    std = float(clean.std(ddof=1)) if len(clean) > 1 else math.nan
    return float(clean.mean()), std


def _strategy_row(name: str, frame: pd.DataFrame, done: pd.DataFrame) -> dict[str, Any]:
    """The aggregated table row of one strategy."""
    mine = done[done["strategy"] == name]
    row: dict[str, Any] = {"strategy": name, "n_finished": len(mine), "n_runs": int((frame["strategy"] == name).sum())}
    for metric in TABLE_METRICS:
        row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(mine[metric])
    return row


def row_steps(n_rows: int, n_tasks: int) -> list[int]:
    """The training step after which each matrix row was measured: 1..k, or T for a single joint row."""
    if n_rows == 1 and n_tasks > 1:
        return [n_tasks]
    return list(range(1, n_rows + 1))


def _mean_matrix(strategy: str, runs: Sequence[ChildRun], positional: bool) -> MeanMatrix:
    """Average the runs' matrices element-wise (runs of another shape than the first are left out)."""
    shape = (len(runs[0].matrix), len(runs[0].tasks))
    same = [r for r in runs if (len(r.matrix), len(r.tasks)) == shape]
    labels = [f"task {j + 1}" for j in range(shape[1])] if positional else list(same[0].tasks)
    return MeanMatrix(
        strategy=strategy,
        labels=labels,
        steps=row_steps(*shape),
        initial=np.mean([r.initial for r in same], axis=0),
        rows=np.mean([r.matrix for r in same], axis=0),
        n_runs=len(same),
    )


# --- reading the store ----------------------------------------------------------------------------


def _public_uri(uri: str) -> str:
    """The tracking URI without any user:password part."""
    parts = urlparse(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    return urlunparse(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


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
    raise ConfigError(f"MLflow experiment {name!r} {state} in {_public_uri(client.tracking_uri)}", key="experiment", hint=hint)


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
            f"no run with id {parent_run_id!r} in {_public_uri(client.tracking_uri)}",
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
        hint = f"its parent run is {parent}" if parent else "pass the id of a run tagged cl_harness.role=parent"
        raise ConfigError(f"run {run.info.run_id} is not a cl-harness parent run (role {role!r})", key="parent", hint=hint)


def find_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """All active child runs of the parent (every page)."""
    query = f"tags.{PARENT_RUN_TAG} = '{parent_run_id}'"
    return list(_paged(lambda t: client.search_runs([experiment_id], query, max_results=1000, page_token=t)))


def _int_tag(tags: dict[str, str], key: str) -> int | None:
    """An integer tag value, or None when absent or not an integer."""
    try:
        return int(tags[key])
    except (KeyError, ValueError):
        return None


def parse_matrix(data: Any) -> tuple[list[str], list[float], list[list[float]]]:
    """``(tasks, initial, matrix)`` of an ``accuracy_matrix.json`` payload; ValueError when malformed."""
    if not isinstance(data, dict) or not {"tasks", "initial", "matrix"} <= set(data):
        raise ValueError("expected an object with 'tasks', 'initial' and 'matrix'")
    tasks = [str(t) for t in data["tasks"]]
    initial = [float(x) for x in data["initial"]]
    matrix = [[float(x) for x in row] for row in data["matrix"]]
    if not tasks or len(initial) != len(tasks) or any(len(row) != len(tasks) for row in matrix):
        raise ValueError(f"shapes do not match {len(tasks)} tasks")
    if len(matrix) > len(tasks):
        raise ValueError(f"{len(matrix)} rows for {len(tasks)} tasks")
    return tasks, initial, matrix


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
        strategy=tags.get("strategy") or name.split("/", 1)[0],
        seed=_int_tag(tags, "seed"),
        order=_int_tag(tags, "order"),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        error=tags.get("error"),
    )
    if child.finished:
        try:
            child.tasks, child.initial, child.matrix = _read_matrix(client, child.run_id, scratch)
        except ValueError as exc:
            child.note = str(exc)
    return child


def _planned_names(client: MlflowClient, parent_run_id: str, scratch: Path) -> list[str]:
    """The run names the parent planned (its ``planned_runs.json``); empty for parents logged before it existed."""
    target = scratch / parent_run_id
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(parent_run_id, PLANNED_ARTIFACT, str(target))
        return [str(name) for name in json.loads(Path(local).read_text(encoding="utf-8"))["runs"]]
    except (MlflowException, OSError, json.JSONDecodeError, KeyError, TypeError):
        return []


def missing_run(name: str) -> ChildRun:
    """A planned ``<strategy>/seed<k>/order<m>`` run that has no child run in the store."""
    strategy, seed, order = (name.split("/") + ["", ""])[:3]
    return ChildRun(
        run_id="", name=name, status=MISSING, strategy=strategy,
        seed=_int_tag({"s": seed.removeprefix("seed")}, "s"), order=_int_tag({"o": order.removeprefix("order")}, "o"),
        error="planned, but no run was logged (its worker never started it)",
    )


def _run_sort_key(run: ChildRun) -> tuple:
    """Children ordered by strategy, seed, order, name."""
    return (run.strategy, run.seed if run.seed is not None else -1, run.order if run.order is not None else -1, run.name)


def load_comparison(client: MlflowClient, experiment_name: str, parent_run_id: str | None = None) -> Comparison:
    """Read a parent run (default: the experiment's most recent one) and all its children back from the store."""
    experiment = find_experiment(client, experiment_name)
    parent = find_parent(client, experiment, parent_run_id)
    children = find_children(client, experiment.experiment_id, parent.info.run_id)
    with tempfile.TemporaryDirectory(prefix="cl-harness-compare-") as scratch:
        runs = [read_child(client, run, Path(scratch)) for run in children]
        logged = {r.name for r in runs}
        runs += [missing_run(name) for name in _planned_names(client, parent.info.run_id, Path(scratch)) if name not in logged]
        runs.sort(key=_run_sort_key)
    return Comparison(
        experiment_name=experiment.name,
        experiment_id=experiment.experiment_id,
        parent_run_id=parent.info.run_id,
        parent_run_name=parent.info.run_name or parent.info.run_id,
        parent_status=parent.info.status,
        start_time_ms=parent.info.start_time,
        tracking_uri=_public_uri(client.tracking_uri),
        runs=runs,
        parent_tags=dict(parent.data.tags),
    )


# --- formatting -----------------------------------------------------------------------------------


def _number(value: float, metric: str) -> str:
    """One value in the metric's display unit (percent, seconds, count, ...)."""
    if metric in PERCENT_METRICS:
        return f"{100.0 * value:.1f}"
    if metric == "trainable_params":
        return f"{value:,.0f}"
    if metric in ("wall_time_s", "train_time_per_task_s"):
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2f}"


def format_value(value: float | None, metric: str) -> str:
    """One value in the metric's display unit; ``-`` when undefined."""
    if value is None or math.isnan(value):
        return "-"
    return _number(value, metric)


def format_mean_std(mean: float | None, std: float | None, metric: str) -> str:
    """``mean ± std`` in the metric's unit; ``-`` for an undefined mean or std."""
    if mean is None or math.isnan(mean):
        return "-"
    return f"{_number(mean, metric)} ± {format_value(std, metric)}"


def shown_metrics(table: pd.DataFrame) -> list[str]:
    """The TABLE_METRICS with at least one defined mean in ``table``."""
    return [m for m in TABLE_METRICS if f"{m}_mean" in table and table[f"{m}_mean"].notna().any()]


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of a ``Comparison.table()``: strategy, runs, then ``mean ± std`` per metric."""
    metrics = shown_metrics(table)
    extra_headers, extra_cells = statistics_display(table, lambda v: format_value(v, "acc"))
    headers = ["strategy", "runs"] + [HEADERS.get(m, m) for m in metrics[:1]] + extra_headers + [HEADERS.get(m, m) for m in metrics[1:]]
    rows = []
    for index, (_, row) in enumerate(table.iterrows()):
        cells = [format_mean_std(row[f"{m}_mean"], row[f"{m}_std"], m) for m in metrics]
        rows.append([str(row["strategy"]), f"{int(row['n_finished'])}/{int(row['n_runs'])}"] + cells[:1] + extra_cells[index] + cells[1:])
    return headers, rows


def _md_cell(text: str) -> str:
    """A markdown table cell with pipes escaped."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(table: pd.DataFrame) -> str:
    """The table as GitHub markdown: ``mean ± std`` per metric, accuracies in %, '-' where undefined."""
    headers, rows = display_rows(table)
    right = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "| " + " | ".join(right) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the raw (unformatted, fractions not percent) table as CSV and return its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out
