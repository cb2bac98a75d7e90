"""Run artifacts built from the accuracy matrix: a JSON-ready dict and a labelled heatmap PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LABEL_CHARS = 24


def _rows(tasks: Sequence[str], initial: Sequence[float], matrix: Sequence[Sequence[float]]) -> np.ndarray:
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
    rows = _rows(tasks, initial, matrix)
    metrics = list(column_metrics) if column_metrics is not None else ["accuracy"] * len(tasks)
    if len(metrics) != len(tasks):
        raise ValueError(f"column_metrics has {len(metrics)} entries for {len(tasks)} tasks")
    return {
        "tasks": [str(t) for t in tasks],
        "column_metrics": metrics,
        "initial": [float(x) for x in rows[0]],
        "matrix": [[float(x) for x in row] for row in rows[1:]],
    }


def _short(label: str) -> str:
    """Shorten a task name for an axis label."""
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


def _cell_font_size(n_tasks: int) -> float:
    """Font size of the in-cell percentages, smaller as the grid grows."""
    return max(7.0, 11.0 - 0.3 * n_tasks)


def _draw(fig: Figure, tasks: Sequence[str], rows: np.ndarray, title: str) -> None:
    """Draw the heatmap, its cell values and colorbar onto ``fig``."""
    ax = fig.subplots()
    pct = rows * 100.0
    image = ax.imshow(pct, cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    n_rows, n_cols = pct.shape
    ax.set_xticks(range(n_cols), [_short(str(t)) for t in tasks], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n_rows), ["initial"] + [f"after {_short(str(t))}" for t in tasks[: n_rows - 1]])
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("model state")
    ax.set_title(title)
    size = _cell_font_size(n_cols)
    for i in range(n_rows):
        for j in range(n_cols):
            value = pct[i, j]
            colour = "black" if value >= 60.0 else "white"
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=colour, fontsize=size)
    ax.axhline(0.5, color="white", linewidth=2.0)  # separate the untrained row from the trained ones
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("accuracy (%)")


def plot_accuracy_matrix(
    tasks: Sequence[str],
    initial: Sequence[float],
    matrix: Sequence[Sequence[float]],
    path: str | Path,
    title: str,
) -> Path:
    """Write the accuracy matrix as a heatmap PNG (rows: initial + after each task; cells in %) and return its path."""
    rows = _rows(tasks, initial, matrix)
    n_rows, n_cols = rows.shape
    width = 3.0 + 0.8 * n_cols
    height = 2.2 + 0.5 * n_rows
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    _draw(fig, tasks, rows, title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out
