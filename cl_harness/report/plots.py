"""Comparison plots as matplotlib Figures on an Agg canvas (no pyplot state): curves, bars and mean heatmaps."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cl_harness.config.names import file_name
from cl_harness.report.compare import Comparison, MeanMatrix
from cl_harness.report.glance import count
from cl_harness.tracking import schema

MAX_LABEL_CHARS = 24

DPI = 120
MAX_COLUMNS = 3


@dataclass
class PlotFile:
    """A written plot: file path and a caption for the report."""

    path: Path
    caption: str


def _figure(width: float, height: float) -> Figure:
    """A constrained-layout Figure attached to its own Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _short(label: str) -> str:
    """Shorten a label for an axis, as the run heatmaps do."""
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


def _grid(n: int) -> tuple[int, int]:
    """(rows, columns) of a panel grid for ``n`` panels."""
    cols = min(MAX_COLUMNS, max(1, n))
    return math.ceil(n / cols), cols


# --- forgetting curves ----------------------------------------------------------------------------


def _curve_panel(ax, mean: MeanMatrix) -> None:
    """Accuracy (%) on each task after each training step, mean over the strategy's runs."""
    steps = [0, *mean.steps]
    values = np.vstack([mean.initial, mean.rows]) * 100.0
    for j, label in enumerate(mean.labels):
        ax.plot(steps, values[:, j], marker="o", markersize=4, label=_short(label))
    ticks = ["init"] + [_short(mean.row_label(i)) for i in range(len(mean.steps))]
    ax.set_xticks(steps, ticks, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylim(0.0, 100.0)
    ax.set_xlabel("after training on")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{mean.strategy} (n={mean.n_runs})")
    ax.grid(alpha=0.3)


def forgetting_curves_figure(means: list[MeanMatrix], positional: bool = False) -> Figure:
    """One panel per strategy: accuracy on each task after each step (by training position when ``positional``)."""
    if not means:
        raise ValueError("no strategy has a finished run with an accuracy matrix")
    n_rows, n_cols = _grid(len(means))
    fig = _figure(4.2 * n_cols, 3.4 * n_rows + 0.8)
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    for ax, mean in zip(axes, means):
        _curve_panel(ax, mean)
    for ax in axes[len(means):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    title = "task (position in training order)" if positional else "task"
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), title=title, fontsize="small")
    fig.suptitle("Accuracy on each task after each training step (mean over runs)")
    return fig


# --- final accuracy bars --------------------------------------------------------------------------


def final_acc_figure(comparison: Comparison) -> Figure:
    """Bar chart of mean final ``acc`` (%) per strategy with std error bars and the single runs as dots."""
    table = comparison.table()
    names = list(table["strategy"])
    means = np.nan_to_num(table["acc_mean"].to_numpy(dtype=float) * 100.0)
    stds = table["acc_std"].to_numpy(dtype=float) * 100.0
    fig = _figure(max(4.0, 1.1 * len(names) + 2.0), 4.0)
    ax = fig.subplots()
    x = np.arange(len(names))
    bars = ax.bar(x, means, color="#4c72b0", alpha=0.85, label="mean")
    spread = np.isfinite(stds)  # no error bar where the std is undefined (a single run)
    if spread.any():
        ax.errorbar(x[spread], means[spread], yerr=stds[spread], fmt="none", ecolor="black", capsize=4, label="± std")
    ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], label_type="center", color="white", fontsize="small")
    for i, name in enumerate(names):
        runs = [r.metrics["acc"] * 100.0 for r in comparison.finished() if r.strategy == name and "acc" in r.metrics]
        ax.scatter([i + 0.2] * len(runs), runs, color="black", s=12, zorder=3, label="single run" if i == 0 and runs else None)
    ax.set_xticks(x, [_short(n) for n in names], rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylim(0.0, 105.0)
    ax.set_ylabel("final average accuracy (%)")
    ax.set_title("Final accuracy per strategy")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig


# --- mean accuracy-matrix heatmap -----------------------------------------------------------------


def heatmap(columns: Sequence[str], row_labels: Sequence[str], rows: np.ndarray, title: str) -> Figure:
    """An accuracy-matrix heatmap: ``rows`` (initial + after each step, fractions) over ``columns``, cells in %."""
    pct = np.asarray(rows, dtype=np.float64) * 100.0  # (steps + 1, tasks)
    n_rows, n_cols = pct.shape
    fig = _figure(3.0 + 0.8 * n_cols, 2.2 + 0.5 * n_rows)
    ax = fig.subplots()
    image = ax.imshow(pct, cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    ax.set_xticks(range(n_cols), [_short(str(c)) for c in columns], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n_rows), ["initial"] + [f"after {_short(str(label))}" for label in row_labels[: n_rows - 1]])
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("model state")
    ax.set_title(title)
    size = max(7.0, 11.0 - 0.3 * n_cols)
    for i in range(n_rows):
        for j in range(n_cols):
            colour = "black" if pct[i, j] >= 60.0 else "white"
            ax.text(j, i, f"{pct[i, j]:.1f}", ha="center", va="center", color=colour, fontsize=size)
    ax.axhline(0.5, color="white", linewidth=2.0)  # separate the untrained row from the trained ones
    fig.colorbar(image, ax=ax).set_label("accuracy (%)")
    return fig


def heatmap_figure(mean: MeanMatrix) -> Figure:
    """The mean accuracy matrix of one strategy, in the style of the per-run ``accuracy_matrix.png``."""
    labels = [mean.row_label(i) for i in range(len(mean.steps))]
    return heatmap(mean.labels, labels, np.vstack([mean.initial, mean.rows]), f"{mean.strategy}: mean of {mean.n_runs} run(s)")


def plot_accuracy_matrix(
    tasks: Sequence[str], initial: Sequence[float], matrix: Sequence[Sequence[float]], path: str | Path, title: str
) -> Path:
    """Write one run's accuracy matrix as a heatmap PNG (rows: initial + after each task; cells in %) and return its path."""
    return save_png(heatmap(tasks, tasks, schema.matrix_rows(tasks, initial, matrix), title), path)


# --- output ---------------------------------------------------------------------------------------


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG file and return its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png_bytes(fig))
    return out


def _file_stem(name: str, taken: set[str]) -> str:
    """A file-system-safe, not yet used file stem for a strategy label."""
    base = file_name(name)
    stem, k = base, 2
    while stem in taken:
        stem, k = f"{base}_{k}", k + 1
    taken.add(stem)
    return stem


def write_plots(comparison: Comparison, out_dir: str | Path) -> list[PlotFile]:
    """Write every comparison plot as a PNG into ``out_dir``; none when no run finished with a matrix."""
    out = Path(out_dir)
    means = comparison.mean_matrices()
    if not means:
        return []
    positional = comparison.by_position()
    where = "by position in the training order (runs used different task orders)" if positional else "by task"
    plots = [
        PlotFile(save_png(final_acc_figure(comparison), out / "final_acc.png"),
                 "Final average accuracy per strategy: mean ± std over finished runs; dots are single runs."),
        PlotFile(save_png(forgetting_curves_figure(means, positional), out / "forgetting_curves.png"),
                 f"Accuracy on each task after each training step, mean over runs, {where}."),
    ]
    taken: set[str] = set()
    for mean in means:
        path = out / f"accuracy_matrix_{_file_stem(mean.strategy, taken)}.png"
        plots.append(PlotFile(save_png(heatmap_figure(mean), path),
                              f"{mean.strategy}: accuracy matrix (%) averaged over {count(mean.n_runs, 'run')}, {where}."))
    return plots
