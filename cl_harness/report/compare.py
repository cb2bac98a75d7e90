"""Compare the strategies of one experiment invocation: tables from a grid read by ``tracking/reader.py``.

Plain data in, tables out. Only FINISHED children enter the statistics; the others are reported as
missing or failed.

Spread convention: ``<metric>_std`` is the *sample* standard deviation (``ddof=1``) over a strategy's
finished runs (seeds x orders). It is NaN for a single run (and for metrics a run does not log, e.g.
``bwt`` of ``joint``); the formatted tables show NaN as ``-``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cl_harness.report.statistics import REFERENCE, STAT_DEFINITIONS, statistics_columns, statistics_display
from cl_harness.tracking.reader import ChildRun, StoredGrid, read_grid
from cl_harness.tracking.schema import FINISHED, NEGLIGIBLE_SHARE, NFR_METRIC, PENALTY_SHARE_METRIC, PROBE_METRICS

#: Metrics aggregated per strategy (mean and std), in table order.
TABLE_METRICS = (
    "acc",
    "bwt",
    "fwt",
    "forgetting",
    NFR_METRIC,
    "learning_acc",
    *PROBE_METRICS,
    "wall_time_s",
    "train_examples_per_s",
    "trainable_params",
    "train_time_per_task_s",
    "peak_memory_mb",
    "extra_memory_mb",
)
#: Metrics that are fractions in [0, 1] (or differences of them), shown in percent.
PERCENT_METRICS = frozenset({"acc", "bwt", "fwt", "forgetting", "forgetting_last", "learning_acc", NFR_METRIC, *PROBE_METRICS})

#: Column headers of the formatted tables, by metric.
HEADERS = {
    "acc": "acc (%)",
    "bwt": "bwt (%)",
    "fwt": "fwt (%)",
    "forgetting": "forgetting (%)",
    NFR_METRIC: "neg. flip rate (%)",
    "learning_acc": "learning acc (%)",
    "probe_acc": "probe acc (%)",
    "probe_bwt": "probe bwt (%)",
    "probe_forgetting": "probe forgetting (%)",
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
    NFR_METRIC: "negative flip rate (Yan et al. 2021): after each step i >= 2, the fraction of the test examples of tasks 1..i-1 right before the step and wrong after it; mean over the steps.",
    "inert": "a strategy whose own loss terms stayed below 0.1% of the training loss on every task after the first, or whose accuracy matrix equals naive's at the same seed and order: it trained as naive does; the note names the parameter to raise.",
    "learning_acc": "learning accuracy: mean accuracy on each task right after training on it.",
    "probe_acc / probe_bwt / probe_forgetting": "acc, bwt and forgetting of the probing matrix (training.probe): after each step, a linear probe (logistic regression) fitted on the frozen features of each trained task's training split, scored on its test split (Tao et al. 2023; Zheng et al. 2024). A high probe acc with a low acc: the representation keeps what the head forgets.",
    "wall_time_s": "wall-clock seconds of the run (evaluation included).",
    "train_examples_per_s": "training throughput in examples per second.",
    "trainable_params": "number of trainable parameters of the model during the last task (PEFT: adapters + heads).",
    "train_time_per_task_s": "mean training seconds per task (evaluation excluded).",
    "peak_memory_mb": "peak memory of the run in MB (CUDA: allocated; CPU: the process's peak resident memory).",
    "extra_memory_mb": "peak memory minus the memory held once the model and data were loaded: what training adds (optimizer state, activations, buffers).",
    "mean ± std": "mean and sample standard deviation (ddof=1) over the finished runs; the mean alone where there is one run or the value is constant; '-' where the strategy does not log the metric.",
    **STAT_DEFINITIONS,
}


# --- data -----------------------------------------------------------------------------------------


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
class Comparison(StoredGrid):
    """Everything the report shows about one parent run and its children: the stored grid plus its tables."""

    @classmethod
    def from_store(cls, grid: StoredGrid) -> Comparison:
        """The comparison of a grid read by ``tracking.reader.read_grid``."""
        return cls(**{f.name: getattr(grid, f.name) for f in fields(StoredGrid)})

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
        inert = self.inert_notes()
        table["inert"] = [inert.get(name, "") for name in table["strategy"]]
        return pd.concat([table, statistics_columns(keyed, list(table["strategy"]))], axis=1)

    def equal_to_naive(self) -> list[ChildRun]:
        """Finished runs of other strategies whose accuracy matrix equals naive's at the same seed and order."""
        naive = {(r.seed, r.order): r for r in self.finished() if r.strategy == REFERENCE and r.has_matrix}
        return [r for r in self.finished() if r.strategy != REFERENCE and r.has_matrix and (r.seed, r.order) in naive
                and r.tasks == naive[(r.seed, r.order)].tasks and np.array_equal(r.matrix, naive[(r.seed, r.order)].matrix)]

    def inert_notes(self) -> dict[str, str]:
        """Per strategy that trained as naive does: why (its accuracy matrices equal naive's, or its loss terms stayed
        negligible), in how many of its finished runs, and what to raise where the strategy names it. A run whose matrix
        equals naive's although its terms acted (``terms_acted``) changed training, not the test predictions: not inert."""
        notes, same = {}, [r for r in self.equal_to_naive() if not terms_acted(r)]
        for name in dict.fromkeys(r.strategy for r in self.finished()):
            mine = [r for r in self.finished() if r.strategy == name]
            flagged, equal = [r for r in mine if r.inert], [r for r in same if r.strategy == name]
            hint = next((r.strength_hint for r in mine if r.strength_hint), None)
            parts = [f"{name}'s accuracy matrix equals naive's at the same seed and order in {len(equal)} of {len(mine)} runs"] if equal else []
            parts += [f"in {len(flagged)} of {len(mine)} runs, {flagged[0].inert}"] if flagged else []
            if parts:
                notes[name] = "; ".join(parts) + (f"; {hint}" if hint and not flagged else "")
        return notes

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


def terms_acted(run: ChildRun) -> bool:
    """Whether the run's own loss terms reached ``NEGLIGIBLE_SHARE`` of the loss on some task after the first."""
    return run.metrics.get(PENALTY_SHARE_METRIC, 0.0) >= NEGLIGIBLE_SHARE


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


def load_comparison(client: Any, experiment_name: str, parent_run_id: str | None = None) -> Comparison:
    """Read a parent run (default: the experiment's most recent one) and all its children back from the store."""
    return Comparison.from_store(read_grid(client, experiment_name, parent_run_id))


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
    """``mean ± std`` in the metric's unit; the mean alone for one value or a constant (std NaN or 0); ``-`` for no mean."""
    if mean is None or math.isnan(mean):
        return "-"
    if std is None or math.isnan(std) or std == 0.0:
        return _number(mean, metric)
    return f"{_number(mean, metric)} ± {_number(std, metric)}"


def shown_metrics(table: pd.DataFrame) -> list[str]:
    """The TABLE_METRICS with at least one defined mean in ``table``."""
    return [m for m in TABLE_METRICS if f"{m}_mean" in table and table[f"{m}_mean"].notna().any()]


def display_rows(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of a ``Comparison.table()``: strategy, runs, then ``mean ± std`` per metric (all
    shown metrics, or ``metrics``), the accuracy followed by its interval and p-values where computed."""
    metrics = shown_metrics(table) if metrics is None else list(metrics)
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
