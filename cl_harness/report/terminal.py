"""One-screen text output: the accuracy matrix as a table and the final metrics."""

from __future__ import annotations

from cl_harness.tracking.schema import NFR_METRIC

METRIC_ORDER = ("acc", "bwt", "fwt", "forgetting", "forgetting_last", "learning_acc", NFR_METRIC)


def _pct(value: float) -> str:
    return "   -  " if value != value else f"{100 * value:6.1f}"


def matrix_table(tasks: list[str], initial: list[float], matrix: list[list[float]]) -> str:
    """Rows: initial and after each trained task; columns: tasks; accuracies in percent."""
    width = max(8, *(len(t) for t in tasks))
    label_width = max(len("initial"), *(len(f"after {t}") for t in tasks))
    header = " " * label_width + " | " + " ".join(t[:width].rjust(width) for t in tasks)
    lines = [header, "-" * len(header)]
    rows = [("initial", initial)] + [(f"after {tasks[i]}" if len(matrix) == len(tasks) else f"after step {i + 1}", row) for i, row in enumerate(matrix)]
    for label, row in rows:
        lines.append(label.ljust(label_width) + " | " + " ".join(_pct(v).rjust(width) for v in row))
    return "\n".join(lines)


def metrics_line(metrics: dict[str, float]) -> str:
    parts = [f"{k}={100 * metrics[k]:.1f}%" for k in METRIC_ORDER if k in metrics]
    return "  ".join(parts)


def run_summary(result) -> str:
    """The block printed after each run."""
    head = f"== {result.run_name}: {result.status}" + (f" in {result.wall_time_s:.0f}s" if result.wall_time_s else "")
    parts = [head + (f" ({result.note})" if result.note else "")]
    if result.initial:
        parts.append(matrix_table(result.tasks, result.initial, result.matrix))
    if result.metrics:
        parts.append(metrics_line(result.metrics))
    if result.error:
        parts.append(f"error: {result.error}")
    return "\n".join(parts)
