"""An experiment's results from Python: its runs, their accuracy matrices and the comparison, read from the MLflow store.

    from cl_harness import results

    res = results.load("quickstart")          # the experiment's latest comparison, from the store `cl-harness run` uses
    res.runs                                  # DataFrame: one row per run (strategy, seed, order, status, metrics, params)
    matrix = res.accuracy_matrix(res.runs["run_id"][0])   # .values[i, j]: accuracy on task j after step i + 1
    res.comparison()                          # the table `cl-harness run` and `cl-harness compare` print, unrounded

Reading never creates a store: a missing one is an error that names it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cl_harness.report.compare import TABLE_METRICS, Comparison, load_comparison
from cl_harness.tracking.store import open_store
from cl_harness.tracking.store_guard import uri_source

IDENTITY = ["run", "run_id", "strategy", "seed", "order", "status"]


@dataclass(frozen=True)
class AccuracyMatrix:
    """One run's accuracy matrix, fractions in [0, 1], columns in training order.

    :ivar values: (steps, tasks): the accuracy on task j after training step i + 1 (one row for joint and zero_shot).
    :ivar initial: (tasks,): the untrained model's accuracy on each task.
    :ivar tasks: the task names, in training order.
    """

    values: np.ndarray  # (steps, tasks): accuracy on task j after training step i + 1 (one row for joint / zero_shot)
    initial: np.ndarray  # (tasks,): the untrained model's accuracy on each task
    tasks: list[str]


def _param_value(text: str):
    """A param as logged (JSON text for anything but a string) back to its value: numbers become numbers."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


class Results:
    """One comparison (a parent run and the runs it holds) read back from the store.

    :ivar experiment: the MLflow experiment's name.
    :ivar parent_run_id: the comparison's parent run.
    :ivar runs: one row per run: its name, run id, strategy, seed, order and status, every metric it logged and its params.
    """

    def __init__(self, comparison: Comparison) -> None:
        self.data = comparison
        self.experiment = comparison.experiment_name
        self.parent_run_id = comparison.parent_run_id
        self.runs = self._runs_frame()

    def _runs_frame(self) -> pd.DataFrame:
        records = []
        for run in self.data.runs:
            params = {k: _param_value(v) for k, v in sorted(run.params.items()) if k not in IDENTITY}
            metrics = {k: v for k, v in run.metrics.items() if k not in IDENTITY}
            records.append({"run": run.name, "run_id": run.run_id, "strategy": run.strategy, "seed": run.seed, "order": run.order,
                            "status": run.status, **{m: metrics.get(m, math.nan) for m in TABLE_METRICS}, **metrics, **params})
        frame = pd.DataFrame(records)
        return frame if records else pd.DataFrame(columns=[*IDENTITY, *TABLE_METRICS])

    def accuracy_matrix(self, run_id: str) -> AccuracyMatrix:
        """The accuracy matrix of one of the runs (a finished one: others have none read); KeyError naming the runs otherwise."""
        for run in self.data.runs:
            if run.run_id == run_id and run.has_matrix:
                return AccuracyMatrix(np.asarray(run.matrix, dtype=float), np.asarray(run.initial, dtype=float), list(run.tasks))
        having = [f"{r.run_id} ({r.name})" for r in self.data.runs if r.has_matrix]
        raise KeyError(f"no accuracy matrix for run {run_id!r} in this comparison; runs with one: {', '.join(having) or 'none'}")

    def comparison(self) -> pd.DataFrame:
        """Per strategy: runs, mean and std of every metric, 95% interval and p-values (the numbers the tables show)."""
        return self.data.table()


def load(experiment: str, tracking_uri: str | None = None, parent: str | None = None) -> Results:
    """The latest comparison of MLflow experiment ``experiment`` (or the one of parent run ``parent``).

    ``tracking_uri`` defaults as for `cl-harness run`: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``
    relative to the current folder.
    """
    _, client = open_store(tracking_uri, uri_source(tracking_uri), create=False)
    return Results(load_comparison(client, experiment, parent))
