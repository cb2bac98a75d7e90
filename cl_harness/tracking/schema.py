"""The MLflow store layout, in one place: tag, artifact, metric and run names, with a parser for each format.

Everything that writes to the store (``tracking/writer.py``) and everything that reads it back
(``tracking/reader.py``) names things through this module; tests spell store strings through it too.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# --- run statuses ----------------------------------------------------------------------------------

RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"  # MLflow's run statuses
END_STATUSES = (FINISHED, FAILED, KILLED)  # a run that has ended
MISSING = "MISSING"  # a planned run with no run in the store (never an MLflow status)

# --- tags ------------------------------------------------------------------------------------------

ROLE_TAG = "cl_harness.role"  # what a run is: parent, child, search or trial
PARENT_ROLE, CHILD_ROLE = "parent", "child"  # one parent run per invocation; one child per (strategy, seed, task order)
PARENT_RUN_TAG = "mlflow.parentRunId"  # a child's parent run (MLflow nests the runs by it)
STRATEGY_TAG = "strategy"  # child: the strategy label
SEED_TAG = "seed"  # child: the seed
ORDER_TAG = "order"  # child: the index of its task order (0: the stream's own)
TASK_ORDER_TAG = "task_order"  # child: the task names in training order, comma-separated
STREAM_TAG = "stream"  # child: the stream's name
SCENARIO_TAG = "scenario"  # child: class_incremental, task_incremental or domain_incremental
BACKBONE_TAG = "backbone"  # child: the backbone's name
ERROR_TAG = "error"  # a FAILED run: what went wrong
RUN_KEY_TAG = "cl_harness.run_key"  # on a child: its identity in its comparison, a hash of its own settings (grid/plan.py)
ERROR_TAG_CHARS = 4000  # an error tag keeps this many characters of the error
VERSIONS_TAG_PREFIX = "versions."  # versions.<package>: the installed versions of the packages a run used
# the commit of the harness's checkout, whether it had uncommitted changes, and the commit again where MLflow shows it
GIT_COMMIT_TAG, GIT_DIRTY_TAG, MLFLOW_GIT_COMMIT_TAG = "git_commit", "git_dirty", "mlflow.source.git.commit"
#: The tags every child run carries.
CHILD_TAGS = (STRATEGY_TAG, SEED_TAG, ORDER_TAG, TASK_ORDER_TAG, STREAM_TAG, SCENARIO_TAG, BACKBONE_TAG)


def version_tag(package: str) -> str:
    """``versions.<package>``: the installed version of a package a run was made with."""
    return f"{VERSIONS_TAG_PREFIX}{package}"


def task_order_tag(tasks: Sequence[str]) -> str:
    """The ``task_order`` tag value: task names in training order, comma-separated."""
    return ",".join(tasks)


def parse_task_order_tag(value: str) -> list[str]:
    """The task names of a ``task_order`` tag value."""
    return value.split(",") if value else []


def int_tag(tags: dict[str, str], key: str) -> int | None:
    """An integer tag value (``seed``, ``order``), or None when absent or not an integer."""
    try:
        return int(tags[key])
    except (KeyError, ValueError):
        return None


# --- run names -------------------------------------------------------------------------------------

_RUN_NAME = re.compile(r"^(?P<label>.+)/seed(?P<seed>-?\d+)/order(?P<order>\d+)$")


@dataclass(frozen=True)
class RunName:
    """A child run's name: ``<label>/seed<k>/order<m>``."""

    label: str
    seed: int | None
    order: int | None

    def __str__(self) -> str:
        return run_name(self.label, self.seed, self.order)


def run_name(label: str, seed: int | None, order: int | None) -> str:
    """``<label>/seed<k>/order<m>``: the name of the child run of one (strategy, seed, task order)."""
    return f"{label}/seed{seed}/order{order}"


def parse_run_name(name: str) -> RunName:
    """The parts of a child run name; a name of another shape keeps its first ``/`` part as the label, no seed or order."""
    match = _RUN_NAME.match(name)
    if match:
        return RunName(match["label"], int(match["seed"]), int(match["order"]))
    return RunName(name.split("/", 1)[0], None, None)


# --- metric names ----------------------------------------------------------------------------------

KEY_CHARS = 250  # MLflow's longest metric/param key (mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH)
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")

TASK_ACC_PREFIX = "acc"  # acc/<task>: the task's matrix column (accuracy, or masked-token accuracy)
PPPL_PREFIX = "pppl"  # pppl/<task>: an mlm task's pseudo-perplexity
EM_PREFIX = "em"  # em/<task>: an instruction task's exact match of the generated answer (where the task asks)
SEEN_AVG_METRIC = "acc/seen_avg"  # mean of the columns of the tasks trained so far
TRAIN_TIME_METRIC = "train_time_s"  # per step: seconds spent training the step's task
EVAL_TIME_METRIC = "eval_time_s"  # per step: seconds spent scoring every task (test and validation splits)
TOKENISE_TIME_METRIC = "tokenise_time_s"  # on the parent run: seconds spent tokenising the stream (or reading its cache)
TRAINABLE_PARAMS_METRIC = "trainable_params"  # per step and final: parameters the optimizer updates
#: Prefix sharing: on a run that forked task 1 from its grid's shared prefix, and on the parent (grid/prefix.py).
SHARED_PREFIX_TASKS_TAG = "shared_prefix_tasks"  # tasks taken from the prefix
TRAIN_TIME_SAVED_METRIC = "train_time_saved_s"  # child: the prefix's training seconds; parent: those saved over the grid
RUNS_FINISHED_METRIC, RUNS_TOTAL_METRIC = "runs_finished", "runs_total"  # on the parent run
#: Final (end-of-run) metrics of a child run.
FINAL_METRICS = ("acc", "bwt", "fwt", "forgetting", "forgetting_last", "learning_acc")
#: Negative flip rate (Yan et al. 2021): per step after task i >= 2, and the run's mean of those.
NFR_STEP_METRIC = "nfr/step"
NFR_METRIC = "nfr"  # final: the mean of nfr/step
#: Validation splits: valid_acc/<task> and valid_acc/seen_avg per step, valid_acc at the end (what a search optimises).
VALID_ACC_PREFIX = "valid_acc"
VALID_SEEN_AVG_METRIC = "valid_acc/seen_avg"  # per step: mean validation accuracy of the tasks trained so far
VALID_ACC_METRIC = "valid_acc"  # final: mean validation accuracy over all tasks
#: Final cost metrics of a child run.
#: A strategy's own loss terms (runner/hooks.py): penalty_share/<task> at the task's step, the share of the terms in the
#: training loss over the task; penalty_share at the end, the largest after task 1. Tags: why a run's terms did nothing
#: (``inert``) and what to raise (``strength_hint``, on a run of a strategy that declares its strength whose terms stayed
#: below NEGLIGIBLE_SHARE after task 1); set at the
#: grid's end on a run whose accuracy matrix equals naive's at the same seed and order: ``equals_naive``.
PENALTY_SHARE_PREFIX = "penalty_share"
PENALTY_SHARE_METRIC = "penalty_share"
NEGLIGIBLE_SHARE = 1e-3  # a strategy's terms below this share of the loss on every task after the first: it is inert
INERT_TAG = "inert"
STRENGTH_HINT_TAG = "strength_hint"
EQUALS_NAIVE_TAG = "equals_naive"
#: Linear probing (``training.probe``; evaluation/probe.py): probe_acc/<task> per step, the test accuracy of a linear probe
#: fitted on the task's training features; probe_acc, probe_bwt and probe_forgetting at the end.
PROBE_ACC_PREFIX = "probe_acc"
PROBE_METRICS = ("probe_acc", "probe_bwt", "probe_forgetting")
COST_METRICS = (
    "wall_time_s", "train_examples_per_s", "peak_memory_mb", "extra_memory_mb", "train_time_per_task_s",
    TRAINABLE_PARAMS_METRIC, "total_params", "fp16_skipped_steps",
)
#: The per-task metrics, ``<prefix>/<task>`` at each step (``task_metric``).
TASK_METRIC_PREFIXES = (TASK_ACC_PREFIX, VALID_ACC_PREFIX, PROBE_ACC_PREFIX, PENALTY_SHARE_PREFIX, PPPL_PREFIX, EM_PREFIX)
#: Every metric of a run (per step or final) or of the parent that is not per task: a per-task key must be none of them.
RUN_METRICS = frozenset({
    SEEN_AVG_METRIC, VALID_SEEN_AVG_METRIC, VALID_ACC_METRIC, NFR_STEP_METRIC, NFR_METRIC, PENALTY_SHARE_METRIC,
    TRAIN_TIME_METRIC, EVAL_TIME_METRIC, TOKENISE_TIME_METRIC, TRAIN_TIME_SAVED_METRIC, RUNS_FINISHED_METRIC,
    RUNS_TOTAL_METRIC, *FINAL_METRICS, *PROBE_METRICS, *COST_METRICS,
})


def _key_part(part: str) -> str:
    """One ``/``-separated part of a key: accents dropped (``café`` -> ``cafe``); where other characters had to go, a
    short stable hash of the original is appended, so names in non-Latin scripts stay distinct (``Задача`` -> ``______-b9ce27``)."""
    latin = "".join(c for c in unicodedata.normalize("NFKD", part) if not unicodedata.combining(c))
    if latin.isascii() and not _BAD_KEY_CHARS.search(latin):
        return latin
    cleaned = _BAD_KEY_CHARS.sub("_", "".join(c if c.isascii() else "_" for c in latin))
    return f"{cleaned}-{hashlib.sha256(part.encode()).hexdigest()[:6]}"


def metric_key(name: str) -> str:
    """An MLflow-valid metric/param key: other characters become ``_`` plus a short hash; ``.``/``..``/empty parts dropped."""
    cleaned = "/".join(_key_part(p) for p in str(name).split("/"))
    parts = [p if p != ".." else "__" for p in cleaned.split("/") if p not in ("", ".")]
    key = "/".join(parts)[:KEY_CHARS].rstrip("/")
    if not key:
        raise ValueError(f"metric name {name!r} has no usable characters")
    return key


def task_metric(prefix: str, task: str) -> str:
    """``<prefix>/<task>`` as an MLflow key, e.g. ``acc/sst2``."""
    return metric_key(f"{prefix}/{task}")


def task_acc_metric(task: str) -> str:
    """``acc/<task>``: the per-step score of one task (its matrix column)."""
    return task_metric(TASK_ACC_PREFIX, task)


def valid_acc_metric(task: str) -> str:
    """``valid_acc/<task>``: the task's validation accuracy after a step."""
    return task_metric(VALID_ACC_PREFIX, task)


def penalty_share_metric(task: str) -> str:
    """``penalty_share/<task>``: the share of the strategy's own terms in the training loss over the task."""
    return task_metric(PENALTY_SHARE_PREFIX, task)


def probe_acc_metric(task: str) -> str:
    """``probe_acc/<task>``: the test accuracy of a linear probe on the task's features after a step."""
    return task_metric(PROBE_ACC_PREFIX, task)


def pppl_metric(task: str) -> str:
    """``pppl/<task>``: the per-step pseudo-perplexity of an mlm task."""
    return task_metric(PPPL_PREFIX, task)


def em_metric(task: str) -> str:
    """``em/<task>``: the per-step exact match of an instruction task's generated answers."""
    return task_metric(EM_PREFIX, task)


def task_metric_keys(task: str) -> dict[str, str]:
    """Every per-task key of ``task``, by prefix: ``{"acc": "acc/<task>", "valid_acc": "valid_acc/<task>", ...}``; a
    task name is usable when these differ from other tasks' keys and from ``RUN_METRICS`` (``""`` gives ``acc`` itself)."""
    return {prefix: task_metric(prefix, task) for prefix in TASK_METRIC_PREFIXES}


def parse_task_metric(key: str) -> tuple[str, str] | None:
    """``(prefix, task)`` of a per-task key like ``acc/sst2``; None for other keys (``acc/seen_avg`` included)."""
    if key == SEEN_AVG_METRIC or "/" not in key:
        return None
    prefix, task = key.split("/", 1)
    return prefix, task


# --- artifacts -------------------------------------------------------------------------------------

ARTIFACTS_FOLDER = "artifacts"  # beside a local SQLite store's database file: its runs' artifacts, one folder per experiment
# Tables MLflow creates first in a new SQLite store: a database with tables but none of these is someone else's.
MLFLOW_CORE_TABLES = frozenset({"alembic_version", "experiments", "experiment_tags", "runs", "tags", "params", "metrics"})

CONFIG_ARTIFACT = "config.yaml"  # parent and child: the resolved configuration
MATRIX_ARTIFACT = "accuracy_matrix.json"  # child: tasks, column_metrics, initial row, one row per trained task (fractions)
MATRIX_PLOT_ARTIFACT = "accuracy_matrix.png"  # child: the accuracy matrix as a heatmap
VALID_MATRIX_ARTIFACT = "valid_accuracy_matrix.json"  # the validation accuracy matrix (runs with validation splits)
PROBE_MATRIX_ARTIFACT = "probe_accuracy_matrix.json"  # the probing matrix (training.probe)
PROBE_FEATURES_ARTIFACT = "probe_features.npz"  # the features and labels each probe was fitted and scored on
PLANNED_RUNS_ARTIFACT = "planned_runs.json"  # on the parent: {"runs": [run names]}
REPORT_HTML_ARTIFACT = "report.html"  # parent: the comparison, plots and definitions in one self-contained file
COMPARISON_CSV_ARTIFACT = "comparison.csv"  # parent: one row per strategy, unrounded fractions
COMPARISON_MD_ARTIFACT = "comparison.md"  # parent: the comparison table as markdown, in %
COMPARISON_TABLE_ARTIFACT = "comparison_table.json"  # parent: the comparison table for MLflow's table view
PLOTS_ARTIFACT_DIR = "plots"  # parent: forgetting curves, final accuracy bars and mean accuracy-matrix heatmaps
NOTE_TAG = "mlflow.note.content"  # MLflow shows this tag as the run's description (markdown) on the run page
# An experiment tag ``<prefix><key>`` holds a runs-table view that ``#/experiments/<id>?viewStateShareKey=<key>`` opens.
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
SUMMARY_PREFIX = "summary"  # on the parent: summary/<measure>/<strategy>, the strategy's mean of the measure


def summary_key(measure: str, strategy: str) -> str:
    """The parent's metric name for one strategy's mean of ``measure``."""
    return metric_key(f"{SUMMARY_PREFIX}/{measure}/{strategy}")
ACCURACY_COLUMN, MASKED_TOKEN_COLUMN = "accuracy", "masked_token_accuracy"  # what a matrix column holds


def matrix_rows(tasks: Sequence[str], initial: Sequence[float], matrix: Sequence[Sequence[float]]) -> np.ndarray:
    """Stack ``initial`` and the matrix rows into one (k+1, T) float array, checking the shapes."""
    n = len(tasks)
    if n == 0:
        raise ValueError("no tasks")
    if len(initial) != n:
        raise ValueError(f"initial has {len(initial)} values for {n} tasks")
    if len(matrix) > n:
        raise ValueError(f"matrix has {len(matrix)} rows for {n} tasks (one row per trained task)")
    for i, row in enumerate(matrix):
        if len(row) != n:
            raise ValueError(f"matrix row {i} has {len(row)} values for {n} tasks")
    return np.array([list(initial), *[list(r) for r in matrix]], dtype=np.float64).reshape(len(matrix) + 1, n)


def accuracy_matrix_dict(
    tasks: Sequence[str],
    initial: Sequence[float],
    matrix: Sequence[Sequence[float]],
    column_metrics: Sequence[str] | None = None,
) -> dict[str, list]:
    """The accuracy matrix as plain JSON data: task names, untrained scores, one row per trained task, and what
    each column holds (``accuracy``, or ``masked_token_accuracy`` for an mlm task)."""
    rows = matrix_rows(tasks, initial, matrix)
    metrics = list(column_metrics) if column_metrics is not None else [ACCURACY_COLUMN] * len(tasks)
    if len(metrics) != len(tasks):
        raise ValueError(f"column_metrics has {len(metrics)} entries for {len(tasks)} tasks")
    return {
        "tasks": [str(t) for t in tasks],
        "column_metrics": metrics,
        "initial": [float(x) for x in rows[0]],
        "matrix": [[float(x) for x in row] for row in rows[1:]],
    }


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


def valid_matrix_dict(tasks: Sequence[str], initial: Sequence[float | None], matrix: Sequence[Sequence[float | None]]) -> dict:
    """``valid_accuracy_matrix.json``: like ``accuracy_matrix.json``, with ``null`` for tasks without a validation split."""

    def cell(v):
        return None if v is None or math.isnan(v) else float(v)

    return {
        "tasks": [str(t) for t in tasks],
        "split": "valid",
        "initial": [cell(v) for v in initial],
        "matrix": [[cell(v) for v in row] for row in matrix],
    }


def probe_matrix_dict(tasks: Sequence[str], initial: Sequence[float], matrix: Sequence[Sequence[float]]) -> dict:
    """``probe_accuracy_matrix.json``: like ``valid_accuracy_matrix.json``, the test accuracy of each task's linear probe
    after each step, ``null`` where a task was not probed (not trained yet, or not a classification task)."""
    return {**valid_matrix_dict(tasks, initial, matrix), "split": "test", "measure": "linear_probe"}


def probe_features_key(step: int, task: str, split: str, part: str) -> str:
    """The ``probe_features.npz`` array of one probe's ``x`` (features) or ``y`` (labels) on a split after ``step``."""
    return f"step{step}/{task}/{split}_{part}"


def planned_runs_dict(names: Sequence[str], keys: Sequence[str] = ()) -> dict[str, Any]:
    """The parent's ``planned_runs.json`` payload: every child run name the grid's latest invocation planned, and each
    run's key (``RUN_KEY_TAG``), which picks the parent's children that belong to the comparison."""
    return {"runs": [str(name) for name in names], "keys": [str(key) for key in keys]}


def parse_planned_runs(data: Any) -> list[str]:
    """The run names of a ``planned_runs.json`` payload; KeyError/TypeError when malformed."""
    return [str(name) for name in data["runs"]]


def parse_planned_keys(data: Any) -> dict[str, str]:
    """Run key -> run name of a ``planned_runs.json`` payload; empty for a parent logged before run keys existed."""
    keys = data.get("keys") or []
    return {str(key): str(name) for name, key in zip(data["runs"], keys)} if len(keys) == len(data["runs"]) else {}


def strategy_param(label: str, name: str) -> str:
    """The MLflow param of one strategy parameter: ``strategy.<label>.<param>`` (``<plugin>.<param>`` for a strategy of
    several plugins), so that the UI filters and sorts runs by it."""
    return f"strategy.{label}.{name}"


# --- hyperparameter search (cl_harness/search/) -----------------------------------------------------

SEARCH_ROLE, TRIAL_ROLE = "search", "trial"  # ROLE_TAG values: the search parent, one child per trial and seed
SEARCH_RUN_NAME = "search"  # the search parent's run name
TRIAL_TAG = "trial"  # on a trial run: the Optuna trial number
SEARCH_STORAGE_TAG = "search_storage"  # on the search parent: the path of the Optuna SQLite study file
PARAM_TAG_PREFIX = "param."  # on a trial run: param.<name> = the trial's sampled value
BEST_TAG_PREFIX = "best."  # on the search parent: best.<strategy>.<name> = the best value
BEST_VALID_ACC_PREFIX = "best_valid_acc."  # on the search parent: best_valid_acc.<strategy>
BEST_PARAMS_ARTIFACT = "best_params.yaml"  # on the search parent (and in the search folder)
SEARCH_ARTIFACT_DIR = "search"  # on the search parent: optimisation-history plots


def trial_run_name(label: str, trial: int, seed: int) -> str:
    """``<strategy>/trial<n>/seed<s>``: a search trial's run name."""
    return f"{label}/trial{trial}/seed{seed}"


def trial_tags(label: str, trial: int, seed: int, params: dict[str, Any]) -> dict[str, str]:
    """A trial run's tags: its role, strategy, trial number, seed and sampled parameters."""
    tags = {ROLE_TAG: TRIAL_ROLE, STRATEGY_TAG: label, TRIAL_TAG: str(trial), SEED_TAG: str(seed)}
    tags.update({f"{PARAM_TAG_PREFIX}{k}": str(v) for k, v in params.items()})
    return tags


def trial_params(tags: dict[str, str]) -> dict[str, str]:
    """The sampled parameters of a trial run, from its tags."""
    return {k.removeprefix(PARAM_TAG_PREFIX): v for k, v in tags.items() if k.startswith(PARAM_TAG_PREFIX)}


def best_tags(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The search parent's ``best.<strategy>.<name>`` tags from ``{strategy: best params}``."""
    return {f"{BEST_TAG_PREFIX}{label}.{k}": str(v) for label, params in results.items() for k, v in params.items()}


def best_valid_acc_metric(label: str) -> str:
    """``best_valid_acc.<strategy>``: the strategy's best trial's validation accuracy, on the search parent."""
    return metric_key(f"{BEST_VALID_ACC_PREFIX}{label}")
