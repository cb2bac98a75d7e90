"""Results at a glance: the parent run's summary metrics and description, a child's description, the terminal table.

Number convention: the store, ``comparison.csv`` and these summary metrics hold fractions in [0, 1]
(differences of them for ``bwt``/``fwt``); percentages appear only where numbers are displayed
(terminal, report, run descriptions), always under a header that says ``(%)``, rounded there only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from cl_harness.tracking.schema import SUMMARY_PREFIX, summary_key  # noqa: F401 - summary_key re-exported for report users
from cl_harness.report.compare import (
    HEADERS,
    Comparison,
    display_rows,
    shown_metrics,
)
from cl_harness.report.statistics import significance_legend

#: Parent-run summary metrics: ``summary/<measure>/<strategy>``, the mean over the strategy's finished runs (fractions).
SUMMARY_MEASURES = ("acc", "forgetting", "bwt", "fwt", "learning_acc", "probe_acc", "probe_forgetting")
#: The compact table printed at the end of ``cl-harness run`` (the probe's columns where runs probed).
COMPACT_METRICS = ("acc", "forgetting", "bwt", "fwt", "probe_acc", "probe_forgetting", "wall_time_s")
#: Child-run metric columns of the experiment page's shared view, in order.
VIEW_COLUMNS = ("acc", "forgetting", "bwt", "fwt", "learning_acc", "wall_time_s")


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def summary_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``summary/<measure>/<strategy>``: the mean of each measure per strategy, as fractions; undefined means left out."""
    out: dict[str, float] = {}
    for _, row in table.iterrows():
        for measure in SUMMARY_MEASURES:
            value = row.get(f"{measure}_mean")
            if value is not None and not math.isnan(value):
                out[summary_key(measure, str(row["strategy"]))] = float(value)
    return out


def compact_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the compact comparison: strategy, runs, mean ± std of COMPACT_METRICS (accuracies in %),
    and after the accuracy its 95% interval and Holm-corrected p-values against the best and naive, where computed."""
    return display_rows(table, [m for m in COMPACT_METRICS if m in shown_metrics(table)])


def compact_table(table: pd.DataFrame) -> str:
    """The compact comparison as aligned text for the terminal."""
    headers, rows = compact_rows(table)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    legend = significance_legend(table)
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows), *([legend] if legend else []),
                      *inert_lines(table)])


def inert_lines(table: pd.DataFrame) -> list[str]:
    """``inert: <why>`` for each strategy of the table that trained as naive does."""
    return [f"inert: {note}" for note in table.get("inert", []) if note]


def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    escape = _md_cell
    lines = ["| " + " | ".join(escape(h) for h in headers) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows])


def parent_description(comparison: Comparison, report_link: str | None = None) -> str:
    """The parent run's markdown description: the comparison table (accuracies in %), the report link, unfinished runs."""
    table = comparison.table()  # computed once: its intervals are bootstraps
    headers, rows = compact_rows(table)
    finished = len(comparison.finished())
    tags = comparison.parent_tags
    parts = [
        (f"**{comparison.experiment_name}**: {count(len(comparison.runs), 'run')}, {finished} finished; "
         f"stream `{tags.get('stream', '?')}` ({tags.get('scenario', '?')})."),
        "",
        _md_table(headers, rows),
        "",
        ("Best mean final accuracy first. Accuracy-based columns in %; a cell is the mean ± sample std over the "
         "finished runs (seeds × task orders), the mean alone for one run or a constant value. "
         + significance_legend(table)).strip(),
        *(f"\n**{line}**" for line in inert_lines(table)),
    ]
    if report_link:
        parts += ["", f"Every metric, per-run values and plots: [report.html]({report_link})"]
    problems = comparison.problems()
    if problems:
        listed = ", ".join(f"`{r.name}` ({r.status})" for r in problems[:10]) + (" ..." if len(problems) > 10 else "")
        parts += ["", f"Not in the statistics: {listed}."]
    return "\n".join(parts) + "\n"


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100.0 * value:.1f}"


def child_description(run_name: str, tasks: Sequence[str], initial: Sequence[float], matrix: Sequence[Sequence[float]],
                      metrics: dict[str, float] | None = None, status: str = "FINISHED") -> str:
    """A child run's markdown description: its accuracy matrix in % (rows: model state, columns: task) and final metrics."""
    headers = ["accuracy (%)", *tasks]
    full = len(matrix) == len(tasks)
    rows = [["initial", *(_pct(v) for v in initial)]]
    rows += [[f"after {tasks[i]}" if full else f"after step {i + 1}", *(_pct(v) for v in row)] for i, row in enumerate(matrix)]
    parts = [f"**{run_name}** ({status}): accuracy on each task (columns) after each training step (rows), in %.", "",
             _md_table(headers, rows)]
    shown = [(k, metrics[k]) for k in ("acc", "bwt", "fwt", "forgetting", "learning_acc") if metrics and k in metrics]
    if shown:
        parts += ["", " · ".join(f"{HEADERS.get(k, k)} {_pct(v)}" for k, v in shown)]
    return "\n".join(parts) + "\n"
