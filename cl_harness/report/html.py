"""The comparison report: one self-contained ``report.html`` (inline CSS, base64 PNGs) plus CSV, markdown and PNGs."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cl_harness.report.compare import (
    DEFINITIONS,
    HEADERS,
    Comparison,
    display_rows,
    format_value,
    markdown,
    shown_metrics,
    write_csv,
)
from cl_harness.report.glance import count, inert_lines
from cl_harness.report.plots import PlotFile, write_plots
from cl_harness.tracking import schema
from cl_harness.tracking.writer import log_report_files
from cl_harness.tracking.links import run_url, ui_base_url

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; } dl.meta dt { font-weight: 600; }
dl.defs dt { font-weight: 600; float: left; clear: left; margin-right: 0.5em; } dl.defs dd { margin: 0 0 0.3em 0; }
.ok { color: #2a7a2a; } .bad { color: #b02a2a; } code { font-size: 0.92em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; } footer { margin-top: 2em; font-size: 0.85em; color: #777; }
.scroll { overflow-x: auto; max-width: 100%; } .scroll table { margin: 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 1em; }
.grid figure { margin: 0; }
"""


@dataclass
class ReportFiles:
    """The files one report consists of."""

    html: Path
    csv: Path
    markdown: Path
    plots: list[PlotFile]


def _e(value: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(value), quote=True)


def _table_html(headers: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells from column ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i >= numeric_from else f"<td>{_e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _linked_ids(html_text: str, comparison: Comparison) -> str:
    """``html_text`` with every child run id cell turned into a link to the run's MLflow page."""
    base = ui_base_url(comparison.tracking_uri)
    for run in comparison.runs:
        if run.run_id:
            cell = f"<td>{_e(run.run_id)}</td>"
            link = f'<td><a href="{_e(run_url(base, comparison.experiment_id, run.run_id))}">{_e(run.run_id)}</a></td>'
            html_text = html_text.replace(cell, link)
    return html_text


def _meta_html(comparison: Comparison) -> str:
    """The experiment / parent run / date block."""
    tags = comparison.parent_tags
    items = [
        ("experiment", f"{comparison.experiment_name} (id {comparison.experiment_id})"),
        ("parent run", f"{comparison.parent_run_name} ({comparison.parent_run_id}), status {comparison.parent_status}"),
        ("started", comparison.started),
        ("stream", f"{tags.get(schema.STREAM_TAG, '?')} ({tags.get(schema.SCENARIO_TAG, '?')})"),
        ("runs", f"{len(comparison.finished())} of {len(comparison.runs)} finished"),
        ("tracking store", comparison.tracking_uri),
        ("report generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    return '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"


def _problems_html(comparison: Comparison) -> str:
    """The runs that did not finish (and finished runs whose matrix could not be read)."""
    problems = comparison.problems()
    noted = [r for r in comparison.finished() if r.note]
    if not problems and not noted:
        return f'<p class="ok">None: all {len(comparison.runs)} runs finished.</p>'
    rows = [[r.name, r.status, r.run_id, r.error or ""] for r in problems]
    rows += [[r.name, r.status, r.run_id, f"left out of the plots: {r.note}"] for r in noted]
    return '<p class="bad">These runs are not in the statistics or plots:</p>' + _linked_ids(_table_html(
        ["run", "status", "run id", "error"], rows, numeric_from=99
    ), comparison)


def _runs_html(comparison: Comparison) -> str:
    """Every child run's final metrics, collapsed."""
    frame = comparison.runs_frame()
    metrics = shown_metrics(comparison.table())
    headers = ["run", "status", "run id"] + [HEADERS.get(m, m) for m in metrics]
    rows = [
        [r["run"], r["status"], r["run_id"]] + [format_value(r[m], m) for m in metrics]
        for _, r in frame.iterrows()
    ]
    table = _linked_ids(_table_html(headers, rows, numeric_from=3), comparison)
    return f"<details open><summary>{count(len(rows), 'child run')} (run ids link to MLflow)</summary>{table}</details>"


def _plots_html(plots: list[PlotFile]) -> str:
    """The plots embedded as base64 PNG data URIs."""
    if not plots:
        return "<p>No plots: no run finished with an accuracy matrix.</p>"
    figures, heatmaps = [], []
    for plot in plots:
        data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
        html_figure = (
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(plot.caption)}">'
            f"<figcaption>{_e(plot.caption)}</figcaption></figure>"
        )
        (heatmaps if plot.path.name.startswith("accuracy_matrix_") else figures).append(html_figure)
    return "".join(figures) + (f'<div class="grid">{"".join(heatmaps)}</div>' if heatmaps else "")


def _definitions_html() -> str:
    """One line per reported quantity."""
    return '<dl class="defs">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in DEFINITIONS.items()) + "</dl>"


def render_html(comparison: Comparison, plots: list[PlotFile]) -> str:
    """The whole report as one self-contained HTML document."""
    table = comparison.table()
    headers, rows = display_rows(table)
    title = f"cl-harness comparison: {comparison.experiment_name}"
    sections = [
        f"<h1>{_e(title)}</h1>",
        _meta_html(comparison),
        "<h2>Results</h2>",
        ("<p>Strategies sorted by mean final accuracy; cells are mean ± sample std over the finished runs "
         "(seeds x task orders), the mean alone for one run or a constant value; '-' where undefined. "
         "Accuracy-based metrics in %. The 95% interval and the Holm-corrected p-values against the best strategy "
         "and naive are defined below; '*' marks a significant difference (p < 0.05).</p>"),
        _table_html(headers, rows),
        "".join(f'<p class="bad">{_e(line)}</p>' for line in inert_lines(table)),
        _runs_html(comparison),
        "<h2>Missing or failed runs</h2>",
        _problems_html(comparison),
        "<h2>Plots</h2>",
        _plots_html(plots),
        "<h2>Metric definitions</h2>",
        "<p>T tasks trained one after the other; accuracies measured on every task's test set after every step.</p>",
        _definitions_html(),
        f"<footer>Generated by cl-harness from MLflow parent run {_e(comparison.parent_run_id)}.</footer>",
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def build_report(comparison: Comparison, out_dir: str | Path) -> ReportFiles:
    """Write ``comparison.csv``, ``comparison.md``, the PNGs and ``report.html`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison.table()
    csv_path = write_csv(table, out / schema.COMPARISON_CSV_ARTIFACT)
    md_path = out / schema.COMPARISON_MD_ARTIFACT
    md_path.write_text(markdown(table), encoding="utf-8")
    plots = write_plots(comparison, out)
    html_path = out / schema.REPORT_HTML_ARTIFACT
    html_path.write_text(render_html(comparison, plots), encoding="utf-8")
    return ReportFiles(html_path, csv_path, md_path, plots)


def write_report(comparison: Comparison, out_dir: str | Path) -> Path:
    """Write the report files into ``out_dir`` and return the path of ``report.html``."""
    return build_report(comparison, out_dir).html


def log_report(client: Any, parent_run_id: str, comparison: Comparison, out_dir: str | Path) -> Path:
    """Write the report into ``out_dir`` and log it to the parent run; returns the local ``report.html``."""
    files = build_report(comparison, out_dir)
    log_report_files(client, parent_run_id, comparison.table(), [files.csv, files.markdown, files.html], [p.path for p in files.plots])
    return files.html
